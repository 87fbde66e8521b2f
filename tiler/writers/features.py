"""The features every writer writes: vertices in the output CRS, their geometries, and attribute columns.

Built once per write from the columnar detections (no per-feature Python dicts): vertices are mapped from
global pixels straight to the output CRS (the raster's own CRS by an affine only, never through WGS84),
rings are oriented as RFC 7946 asks, geometries that cross the antimeridian in a geographic CRS are split
there (RFC 7946 section 3.1.9), and the few that a transform left invalid are repaired.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely

from ..detections import Detections
from ..errors import OutputError
from ..geometry import polygonal_parts
from ..georef import Georeferencer, oriented

PROVENANCE = ("source", "window", "model", "model_sha256", "tiler_version")


@dataclass
class FeatureSet:
    dets: Detections
    names: dict[int, str]
    coords: np.ndarray  # (m, 2) every vertex in the output CRS, rings oriented
    crs: object  # pyproj CRS, or None: pixel coordinates
    provenance: dict | None = None  # source, model, model_sha256, tiler_version (window comes per feature)
    replaced: dict[int, object] = field(default_factory=dict)  # feature -> geometry written instead (split, repaired)

    def __len__(self) -> int:
        return len(self.dets)

    @classmethod
    def build(cls, dets: Detections, names: dict[int, str], geo: Georeferencer | None, crs,
              provenance: dict | None = None) -> "FeatureSet":
        if crs is None or geo is None:
            xy = dets.coords
        elif crs.is_geographic and _same(crs, "EPSG:4326"):
            xy = geo.pixel_to_lonlat(dets.coords)
        else:
            xy = geo.pixel_to_map(dets.coords)
            if not _same(crs, geo.crs):  # straight from the raster's CRS to the one asked for
                from pyproj import Transformer

                x, y = Transformer.from_crs(geo.crs, crs, always_xy=True).transform(xy[:, 0], xy[:, 1])
                xy = np.column_stack([x, y])
        xy = np.asarray(xy, dtype=np.float64)
        finite = np.isfinite(xy).all(axis=1)
        if not finite.all():  # (GeoJSON has no NaN; GIS formats would store a broken geometry)
            bad = np.unique(dets.owner()[~finite])
            raise OutputError(f"{len(bad)} detection(s) have non-finite coordinates (first: #{bad[0]}); "
                              "nothing was written")
        fs = cls(dets, names, oriented(dets, xy), crs, provenance)
        if crs is not None and crs.is_geographic and len(dets):
            fs._split_antimeridian()
        return fs

    def geometries(self) -> np.ndarray:
        """Shapely geometries in the output CRS, valid and non-empty (the few a transform broke are repaired)."""
        geoms = self.dets.with_coords(self.coords).geometries()
        for k, g in self.replaced.items():
            geoms[k] = g
        bad = np.flatnonzero(~shapely.is_valid(geoms))
        if len(bad):
            geoms[bad] = shapely.orient_polygons(polygonal_parts(shapely.make_valid(geoms[bad])))
        return geoms

    def all_convex_quads(self) -> bool:
        """Every feature one strictly convex quadrilateral (so valid) and none replaced: the numpy paths."""
        convex = None if self.replaced else convex_quads(self.dets, self.coords)
        return convex is not None and bool(convex.all())

    def class_names(self) -> np.ndarray:
        ids = self.dets.class_id
        if not len(ids):
            return np.empty(0, dtype=object)
        lookup = np.array([self.names.get(i, str(i)) for i in range(int(ids.max()) + 1)], dtype=object)
        return lookup[ids]

    def bbox_px(self) -> np.ndarray:
        """(n, 4) x0, y0, x1, y1 in global pixels, rounded to the pixel-space output precision."""
        from ..georef import DECIMALS_PIXEL

        return np.round(self.dets.bounds(), DECIMALS_PIXEL)

    def _split_antimeridian(self) -> None:
        """Polygons spanning more than 180 degrees of longitude cross the antimeridian: cut them there into a
        MultiPolygon of an eastern (<= 180) and a western (>= -180) part."""
        d = self.dets
        starts = d.offsets[:-1]
        lon = self.coords[:, 0]
        span = np.maximum.reduceat(lon, starts) - np.minimum.reduceat(lon, starts)
        crossing = np.flatnonzero(span > 180)
        if not len(crossing):
            return
        geoms = d.with_coords(self.coords).take(crossing).geometries()
        wrapped = shapely.transform(geoms, lambda c: np.where(c[:, :1] < 0, c + [360.0, 0.0], c))
        east = shapely.intersection(wrapped, shapely.box(0, -90, 180, 90))
        west = shapely.transform(shapely.intersection(wrapped, shapely.box(180, -90, 360, 90)),
                                 lambda c: c - [360.0, 0.0])
        split = shapely.orient_polygons(polygonal_parts(shapely.union(east, west)))
        for k, g in zip(crossing.tolist(), split):
            self.replaced[k] = g


def convex_quads(dets: Detections, coords: np.ndarray) -> np.ndarray | None:
    """For detections that are all single quadrilaterals (detect and OBB models), which of them are strictly
    convex, hence valid, checked with numpy; None for any other layout."""
    n = len(dets)
    if n == 0 or dets.rings is not None or len(coords) != 4 * n or not (dets.counts == 4).all():
        return None
    q = coords.reshape(n, 4, 2)
    edge = np.roll(q, -1, axis=1) - q
    cross = edge[:, :, 0] * np.roll(edge[:, :, 1], -1, axis=1) - edge[:, :, 1] * np.roll(edge[:, :, 0], -1, axis=1)
    return (cross > 0).all(axis=1) | (cross < 0).all(axis=1)


def _same(a, b) -> bool:
    from pyproj import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)
