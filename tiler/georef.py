"""Pixel -> map CRS -> WGS84 (lon, lat), vectorised over all vertices, with RFC 7946 ring orientation."""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from .detections import Detections

WGS84 = "EPSG:4326"
DECIMALS_LONLAT = 7  # ~1 cm: finer than any pixel we handle, and what RFC 7946 suggests is plenty
DECIMALS_PIXEL = 3


class Georeferencer:
    """Maps global pixel coordinates (x right, y down, pixel edges at integers) to the raster's CRS and to
    lon/lat, through its geotransform (an affine). `GCPGeoreferencer` and `RPCGeoreferencer` do the same
    for rasters georeferenced by ground control points or rational polynomial coefficients."""

    kind = "affine"

    def __init__(self, transform: Affine, crs):
        self.transform = transform
        self.crs = CRS.from_user_input(crs)
        self._to_wgs84 = Transformer.from_crs(self.crs, WGS84, always_xy=True)

    def pixel_to_map(self, xy: np.ndarray) -> np.ndarray:
        t = self.transform
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f])

    def pixel_to_lonlat(self, xy: np.ndarray) -> np.ndarray:
        m = self.pixel_to_map(xy)
        lon, lat = self._to_wgs84.transform(m[:, 0], m[:, 1])
        return np.column_stack([lon, lat])


class GCPGeoreferencer(Georeferencer):
    """Maps pixels through a raster's ground control points (GDAL's GCP transformer: a polynomial fitted to
    them), vectorised over all vertices, to the GCPs' CRS."""

    kind = "gcp"

    def __init__(self, gcps, crs):
        from rasterio.transform import GCPTransformer

        self.transform = None
        self.crs = CRS.from_user_input(crs)
        self._to_wgs84 = Transformer.from_crs(self.crs, WGS84, always_xy=True)
        self._pixels = GCPTransformer(list(gcps))

    def pixel_to_map(self, xy: np.ndarray) -> np.ndarray:
        return _through(self._pixels, xy)


class RPCGeoreferencer(Georeferencer):
    """Maps pixels to lon/lat through a raster's rational polynomial coefficients (GDAL's RPC transformer,
    vectorised), at a constant `height` above the ellipsoid (metres) or the heights of a `dem` raster."""

    kind = "rpc"

    def __init__(self, rpcs, height: float | None = None, dem: str | None = None):
        from rasterio.transform import RPCTransformer

        self.transform = None
        self.crs = CRS.from_user_input(WGS84)
        self._to_wgs84 = Transformer.from_crs(self.crs, WGS84, always_xy=True)
        options = {}
        if dem:
            options["RPC_DEM"] = dem
        if height is not None:
            options["RPC_HEIGHT"] = float(height)
        self._pixels = RPCTransformer(rpcs, **options)

    def pixel_to_map(self, xy: np.ndarray) -> np.ndarray:
        return _through(self._pixels, xy)

    def pixel_to_lonlat(self, xy: np.ndarray) -> np.ndarray:
        return self.pixel_to_map(xy)


def _through(transformer, xy: np.ndarray) -> np.ndarray:
    """Pixels (x right, y down, edges at integers) through a GDAL transformer, all at once."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not len(xy):
        return np.zeros((0, 2))
    xs, ys = transformer.xy(xy[:, 1], xy[:, 0], offset="ul")
    return np.column_stack([np.asarray(xs, np.float64), np.asarray(ys, np.float64)])


def signed_areas(coords: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Shoelace signed area of each ragged ring (positive = counter-clockwise in x-right, y-up axes)."""
    if len(offsets) <= 1:
        return np.zeros(0)
    counts = np.diff(offsets)
    owner = np.repeat(np.arange(len(counts)), counts)
    nxt = np.arange(len(coords)) + 1
    ends = offsets[1:]
    nxt[ends - 1] = offsets[:-1]  # each ring wraps to its own first vertex
    cross = coords[:, 0] * coords[nxt, 1] - coords[nxt, 0] * coords[:, 1]
    return np.bincount(owner, weights=cross, minlength=len(counts)) / 2.0


def orient_rings(coords: np.ndarray, ring_offsets: np.ndarray, shell: np.ndarray | None = None) -> np.ndarray:
    """RFC 7946 orientation: exterior rings counter-clockwise, holes clockwise (in x-right, y-up axes).

    `ring_offsets` (R + 1,) delimit the rings in `coords`; `shell` (R,) marks exteriors (default: all)."""
    area = signed_areas(coords, ring_offsets)
    want_ccw = np.ones(len(area), dtype=bool) if shell is None else np.asarray(shell, bool)
    counts = np.diff(ring_offsets)
    flip = np.repeat((area < 0) == want_ccw, counts) & np.repeat(area != 0, counts)
    if not flip.any():
        return coords
    owner_start = np.repeat(ring_offsets[:-1], counts)
    owner_end = np.repeat(ring_offsets[1:], counts)
    i = np.arange(len(coords))
    rev = owner_start + (owner_end - 1 - i)  # mirror index inside the ring
    return coords[np.where(flip, rev, i)]


def orient_ccw(coords: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Reverse the rings that are clockwise (in lon/lat axes), as RFC 7946 wants exteriors CCW."""
    return orient_rings(coords, offsets)


def oriented(dets: Detections, coords: np.ndarray) -> np.ndarray:
    """`coords` (the vertices of `dets`, in output axes) with every ring oriented as RFC 7946 asks."""
    rings = dets.ring_layout()
    return orient_rings(coords, rings.vertex_offsets, rings.shell)


def global_lonlat(dets: Detections, geo: Georeferencer) -> np.ndarray:
    """All vertices of `dets` in lon/lat, exteriors counter-clockwise and holes clockwise."""
    return oriented(dets, geo.pixel_to_lonlat(dets.coords))
