"""Quicklook of a result of any size: a PNG of the raster read decimated (GDAL serves the read from overviews
when the raster has them, and never holds the full-resolution raster), with the outline of every feature drawn
in its class colour (`visualize.class_color`, the colours of `visualize_results`). `tiler quicklook` and
`JobResult.quicklook` call `write_quicklook`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .detections import Detections, ragged_take
from .errors import ConfigError, OutputError, first_line
from .georef import WGS84
from .visualize import _bgr, class_color
from .writers import check_writable

DEFAULT_MAX_SIZE = 4096  # longest side of a quicklook, in pixels
_SHIFT = 4  # fractional bits of the vertices given to cv2 (1/16 px), so outlines are not snapped to pixels
_COORD_LIMIT = 2.0 ** 26  # |quicklook coordinate| kept below this, so vertices << _SHIFT fit in int32
_CHUNK_BLOCKS = 16  # source blocks across one chunk of a decimated read


# ---------------------------------------------------------------------------------------------------------
# outlines of a result, in raster pixels


@dataclass
class Outlines:
    """Rings to draw, in global raster pixels (x right, y down, pixel edges at integers): ring r is
    coords[offsets[r]:offsets[r + 1]] (closed or not) and has the class class_id[r]. Exteriors and holes
    alike: a quicklook draws every ring."""

    coords: np.ndarray  # (m, 2) float64
    offsets: np.ndarray  # (R + 1,) int64
    class_id: np.ndarray  # (R,) int64

    def __len__(self) -> int:
        return len(self.class_id)

    @classmethod
    def from_detections(cls, dets: Detections) -> "Outlines":
        """Every ring of every detection (exteriors, holes, all parts), vectorised."""
        rings = dets.ring_layout()
        det_of_ring = np.repeat(np.arange(len(dets)), np.diff(rings.offsets))
        return cls(np.asarray(dets.coords, np.float64).reshape(-1, 2), rings.vertex_offsets,
                   np.asarray(dets.class_id, np.int64)[det_of_ring])

    @classmethod
    def from_file(cls, path: str | os.PathLike, transform=None, crs=None) -> "Outlines":
        """The rings of any tiler output, by suffix: GeoJSON (see `from_geojson`), or GeoPackage, FlatGeobuf
        and GeoParquet in whatever CRS the file declares (no CRS: pixels)."""
        if Path(path).suffix.lower() in (".gpkg", ".fgb", ".parquet", ".geoparquet"):
            return cls.from_table(path, transform, crs)
        return cls.from_geojson(path, transform, crs)

    @classmethod
    def from_table(cls, path: str | os.PathLike, transform=None, crs=None) -> "Outlines":
        """The rings of a GeoPackage, FlatGeobuf or GeoParquet file, in the raster's pixels, vectorised."""
        import shapely

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"features file not found: {path}")
        try:
            if path.suffix.lower() in (".parquet", ".geoparquet"):
                import pyarrow.parquet as pq

                table = pq.read_table(path)
                geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}"))
                column = (geo.get("columns") or {}).get(geo.get("primary_column", "geometry"), {})
                source_crs = column.get("crs", WGS84) if geo else None  # the spec: no crs member = lon/lat
                geom_name = geo.get("primary_column", "geometry")
            else:
                from pyogrio import read_arrow

                meta, table = read_arrow(path)
                source_crs, geom_name = meta.get("crs"), meta.get("geometry_name") or "wkb_geometry"
        except Exception as exc:  # pyarrow / GDAL errors: the file is not what its suffix says
            raise ConfigError(f"cannot read {path}: {first_line(exc)}") from None
        geoms = shapely.from_wkb(table[geom_name].to_numpy(zero_copy_only=False))
        classes = (table["class_id"].to_numpy(zero_copy_only=False) if "class_id" in table.column_names
                   else np.zeros(len(geoms), np.int64))
        parts, part_owner = shapely.get_parts(geoms, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        xy, ring_of_vertex = shapely.get_coordinates(rings, return_index=True)
        counts = np.bincount(ring_of_vertex, minlength=len(rings))
        if source_crs is not None:
            if transform is None:
                raise ConfigError(f"{path} has a CRS but the raster has no georeferencing")
            xy = _to_pixels(xy, source_crs, transform, crs)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(np.asarray(xy, np.float64), offsets, np.asarray(classes, np.int64)[part_owner[ring_part]])

    @classmethod
    def from_geojson(cls, path: str | os.PathLike, transform=None, crs=None) -> "Outlines":
        """The rings of a tiler GeoJSON (FeatureCollection or GeoJSON text sequence), in the raster's pixels.

        Coordinates are taken as pixels when the file says so (`"coordinate_space": "pixel"`, as tiler writes
        for rasters without georeferencing), in the CRS of a `crs` member when it has one (a scene's ground
        truth), else as lon/lat (EPSG:4326) when the raster is georeferenced (`transform`, `crs`) and as
        pixels when it is not (tiler's GeoJSON text sequences carry no header). Features without a class_id
        get class 0; features without a geometry are skipped."""
        head, feats = _read_features(path)
        flat: list = []
        counts: list[int] = []
        classes: list[int] = []
        for k, feat in enumerate(feats):
            geom = feat.get("geometry") if isinstance(feat, dict) else None
            if not geom:
                continue
            kind = geom.get("type")
            if kind == "Polygon":
                polys = [geom.get("coordinates") or []]
            elif kind == "MultiPolygon":
                polys = geom.get("coordinates") or []
            else:
                raise ConfigError(f"{path}: feature {k} is a {kind}, not a Polygon or MultiPolygon")
            try:
                cid = int((feat.get("properties") or {}).get("class_id", 0))
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: feature {k} has a class_id that is not an integer") from None
            for poly in polys:
                for ring in poly:
                    if len(ring):
                        flat.extend(ring)
                        counts.append(len(ring))
                        classes.append(cid)
        try:
            xy = np.array(flat, dtype=np.float64) if flat else np.zeros((0, 2))
        except ValueError:  # positions of mixed dimensions (some with a height)
            xy = np.array([p[:2] for p in flat], dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] < 2:
            raise ConfigError(f"{path}: positions must be [x, y] pairs")
        xy = xy[:, :2]
        if head.get("coordinate_space") == "pixel":
            source_crs = None
        elif head:  # a FeatureCollection that does not say "pixel": its crs member, or RFC 7946's lon/lat
            source_crs = _crs_member(head) or WGS84
        else:  # a text sequence (no header): lon/lat if tiler had georeferencing to write it, else pixels
            source_crs = WGS84 if transform is not None else None
        if source_crs is not None:
            if transform is None:
                raise ConfigError(f"{path} is in {source_crs} coordinates (it does not say "
                                  f'"coordinate_space": "pixel") but the raster has no georeferencing')
            xy = _to_pixels(xy, source_crs, transform, crs)
        offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        return cls(xy, offsets, np.asarray(classes, np.int64))


def _read_features(path: str | os.PathLike) -> tuple[dict, list]:
    """(header members, features) of a FeatureCollection or a GeoJSON text sequence (RFC 8142 or one
    feature per line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"features file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        if text.lstrip().startswith("\x1e") or path.suffix.lower() in (".geojsonl", ".geojsons", ".geojsonseq"):
            records = [r for r in text.replace("\x1e", "\n").splitlines() if r.strip()]
            return {}, [json.loads(r) for r in records]
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid GeoJSON: {exc}") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        return doc, list(doc.get("features") or [])
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return {}, [doc]
    raise ConfigError(f"{path} is not a GeoJSON FeatureCollection")


def _crs_member(head: dict) -> str | None:
    """The CRS named by an old-style (2008) GeoJSON `crs` member, as the scene generator's truth has."""
    crs = head.get("crs")
    if isinstance(crs, dict):
        name = (crs.get("properties") or {}).get("name")
        return str(name) if name else None
    return None


def _to_pixels(xy: np.ndarray, source_crs, transform, crs) -> np.ndarray:
    """Points in `source_crs` -> the raster's CRS -> its pixels (the inverse of `georef.Georeferencer`),
    vectorised over all vertices."""
    from pyproj import CRS, Transformer

    if len(xy) == 0:
        return xy
    src, dst = CRS.from_user_input(source_crs), CRS.from_user_input(crs)
    if src != dst:
        x, y = Transformer.from_crs(src, dst, always_xy=True).transform(xy[:, 0], xy[:, 1])
    else:
        x, y = xy[:, 0], xy[:, 1]
    inv = ~transform
    return np.column_stack([inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f])


def draw_outlines(img: np.ndarray, outlines: Outlines, origin: tuple[float, float] = (0.0, 0.0),
                  scale: tuple[float, float] = (1.0, 1.0), thickness: int = 1) -> int:
    """Draw every ring of `outlines` on the BGR `img` in place, in its class colour (`class_color`): a raster
    pixel (x, y) lands at ((x - origin_x) * scale_x, (y - origin_y) * scale_y). Rings entirely outside the
    image are skipped before anything is drawn; vertices keep 1/16 px of precision (no snapping). One
    `cv2.polylines` call per class, no loop per ring. Returns the number of rings drawn."""
    if not len(outlines):
        return 0
    h, w = img.shape[:2]
    sx, sy = scale
    counts = np.diff(outlines.offsets)
    keep = counts > 0
    pts = (outlines.coords - np.asarray(origin, np.float64)) * np.array([sx, sy]) - 0.5  # cv2: centres at ints
    finite = np.isfinite(pts).all(axis=1)
    if keep.any():
        starts = outlines.offsets[:-1][keep]
        lo = np.minimum.reduceat(np.where(finite[:, None], pts, np.inf), starts, axis=0)
        hi = np.maximum.reduceat(np.where(finite[:, None], pts, -np.inf), starts, axis=0)
        all_finite = np.logical_and.reduceat(finite, starts)
        visible = (hi[:, 0] >= -thickness) & (lo[:, 0] <= w + thickness) & (hi[:, 1] >= -thickness) & \
                  (lo[:, 1] <= h + thickness) & all_finite
        keep[np.flatnonzero(keep)] = visible
    drawn = 0
    fixed = np.rint(np.clip(pts, -_COORD_LIMIT, _COORD_LIMIT) * (1 << _SHIFT))
    for cid in np.unique(outlines.class_id[keep]):
        rings = np.flatnonzero(keep & (outlines.class_id == cid))
        vertices, offsets = ragged_take(outlines.offsets, rings)
        polylines = np.split(fixed[vertices].astype(np.int32), offsets[1:-1])
        cv2.polylines(img, polylines, True, _bgr(class_color(cid)), thickness, cv2.LINE_8, _SHIFT)
        drawn += len(rings)
    return drawn


# ---------------------------------------------------------------------------------------------------------
# quicklook: decimated raster + outlines -> PNG


def parse_window(value, width: int, height: int) -> tuple[int, int, int, int]:
    """'x0,y0,x1,y1' (or a 4-sequence) of full-resolution raster pixels, x1 and y1 exclusive, inside the
    raster."""
    text = value if isinstance(value, str) else ",".join(map(str, value))
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"window must be x0,y0,x1,y1 in raster pixels, got {text!r}") from None
    if x1 <= x0 or y1 <= y0:
        raise ConfigError(f"window {text} is empty: x1 must exceed x0 and y1 exceed y0")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ConfigError(f"window {text} is not inside the {width}x{height} raster")
    return x0, y0, x1, y1


def quicklook_shape(window_width: int, window_height: int, max_size: int) -> tuple[int, int]:
    """(width, height) of the quicklook of a window: its longer side at most `max_size`, never upscaled."""
    f = min(1.0, max_size / max(window_width, window_height))
    return max(1, round(window_width * f)), max(1, round(window_height * f))


def read_decimated(source, window: tuple[int, int, int, int], out_size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 BGR of `window` of a `RasterSource`, averaged down to `out_size` (w, h) by GDAL.

    GDAL answers a decimated read from the closest overview when the raster has overviews. Without them it
    must decode every full-resolution block of the window, and a single read of the whole window decodes each
    block once per band (and again for the kernel's margin) unless its block cache holds the whole window:
    3 GB for a 32768 x 32768 RGB scene. So the window is read in chunks of output pixels, each covering
    about one row of 16 blocks of the source (float windows, so the result is the same, pixel for pixel),
    one column of chunks after the other, with a cache of three such rows: every block is decoded about
    once, in memory bounded whatever the raster's size (measured in bench/README.md). Non-uint8 data goes
    through the source's own global 2-98 % stretch (the model's view of it), chunk by chunk."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from .raster import Stretch

    x0, y0, x1, y1 = window
    w, h = x1 - x0, y1 - y0
    ow, oh = out_size
    ds = source.dataset
    block_h, block_w = ds.block_shapes[source.bands[0] - 1]
    across = min(-(-w // block_w) + 1, _CHUNK_BLOCKS + 2)  # blocks one chunk touches across
    block_bytes = block_w * block_h * ds.count * np.dtype(source.dtype).itemsize  # all bands: interleaved
    cache = int(min(max(3 * across * block_bytes, 16 * 2**20), 512 * 2**20))
    rows = max(1, int(block_h * oh / h))  # output rows whose source is about one block row
    cols = max(1, int(_CHUNK_BLOCKS * block_w * ow / w))
    unique = sorted(set(source.bands))
    pos = {b: k for k, b in enumerate(unique)}
    stretches = None if source.stretch is None else [
        Stretch(source.stretch.low[k:k + 1], source.stretch.high[k:k + 1]) for k in range(3)]
    bgr = np.empty((oh, ow, 3), np.uint8)
    planes = bgr.transpose(2, 0, 1)  # (3, oh, ow) view
    with rasterio.Env(GDAL_CACHEMAX=cache):
        for c0 in range(0, ow, cols):  # down one column of chunks, then the next: the rows of blocks a
            c1 = min(ow, c0 + cols)  # chunk shares with the one below it are still in the cache
            for r0 in range(0, oh, rows):
                r1 = min(oh, r0 + rows)
                xs, xe, ys, ye = x0 + c0 * w / ow, x0 + c1 * w / ow, y0 + r0 * h / oh, y0 + r1 * h / oh
                win = Window(xs, ys, xe - xs, ye - ys)
                if stretches is None:  # uint8: straight into the BGR image (a strided view), no copy
                    ds.read(list(source.bands[::-1]), window=win, out=planes[:, r0:r1, c0:c1],
                            resampling=Resampling.average)
                    continue
                data = ds.read(unique, window=win, out_shape=(len(unique), r1 - r0, c1 - c0),
                               resampling=Resampling.average)
                for k, band in enumerate(source.bands):
                    planes[2 - k, r0:r1, c0:c1] = stretches[k].apply(data[pos[band]][None])[0]
    return bgr


def _check_png_path(out: str | os.PathLike) -> Path:
    if Path(out).suffix.lower() != ".png":
        raise OutputError(f"quicklook must be a .png file, got {out}")
    return check_writable(out)


def write_quicklook(out: str | os.PathLike, raster: str | os.PathLike,
                    features: Detections | Outlines | str | os.PathLike, max_size: int = DEFAULT_MAX_SIZE,
                    window=None, bands: tuple[int, ...] | None = None, thickness: int = 1) -> Path:
    """Write a PNG of `raster` (or of `window`, x0,y0,x1,y1 in its full-resolution pixels) decimated to at most
    `max_size` pixels on its longer side (never upscaled), with the outline of every feature in its class
    colour, `thickness` px wide.

    `features`: detections in global raster pixels (a `JobResult`'s), `Outlines`, or the path of a tiler
    output in any of its formats (GeoJSON in lon/lat or pixels, GeoPackage, FlatGeobuf, GeoParquet in their own
    CRS; see `Outlines.from_file`).
    `bands`: 1-based bands shown as RGB (default 1,2,3, or band 1 as grey). Memory is bounded by the PNG and
    GDAL's block cache, not by the raster (bench/README.md). Written to a temporary file and renamed, so a
    failure leaves no PNG; bad input raises a `TilerError` with a one-line message."""
    from .raster import RasterSource, StripedRasterWarning

    out = _check_png_path(out)
    if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
        raise ConfigError(f"max_size must be a positive integer, got {max_size!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StripedRasterWarning)  # a quicklook reads every block once anyway
        source = RasterSource(raster, bands=bands)
    with source:
        win = (0, 0, source.width, source.height) if window is None else parse_window(window, source.width,
                                                                                      source.height)
        if isinstance(features, Detections):
            outlines = Outlines.from_detections(features)
        elif isinstance(features, Outlines):
            outlines = features
        else:
            geo = source.georeferenced
            outlines = Outlines.from_file(features, source.transform if geo else None,
                                             source.crs if geo else None)
        size = quicklook_shape(win[2] - win[0], win[3] - win[1], int(max_size))
        image = read_decimated(source, win, size)
    draw_outlines(image, outlines, origin=win[:2],
                  scale=(size[0] / (win[2] - win[0]), size[1] / (win[3] - win[1])), thickness=thickness)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part.png")
    try:
        if not cv2.imwrite(str(tmp), image):
            raise OutputError(f"cannot write {out}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
