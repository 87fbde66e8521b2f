"""Features as an Arrow table: WKB geometry, attribute columns, provenance; what pyogrio and GeoParquet write.

Detect and OBB jobs give millions of quadrilaterals: their WKB is written straight from the vertex array with
numpy (13 header bytes and 5 closed-ring points per polygon), with validity checked as convexity, never
building a shapely object. Everything else (outlines with holes or several parts, a geometry split at the
antimeridian, a quadrilateral that is not convex) goes through shapely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import FeatureSet

_WKB_POLYGON_HEADER = np.dtype([("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4")])


@dataclass
class EncodedGeometries:
    wkb: object  # pyarrow BinaryArray
    bounds: np.ndarray  # (n, 4) xmin, ymin, xmax, ymax of each geometry
    types: list[str]  # geometry types present: Polygon, MultiPolygon


def encode_geometries(fs: FeatureSet, multi: bool | None = None) -> EncodedGeometries:
    """WKB and bounds of every feature. `multi`: write every geometry as a MultiPolygon (True), as it is
    (False), or decide: MultiPolygons throughout when any feature has several parts (None: GIS layers
    want one type)."""
    fast = _quads_fast(fs) if not multi else None
    if fast is not None:
        return fast
    import pyarrow as pa
    import shapely

    geoms = fs.geometries()
    types = geometry_types(geoms)
    if multi or (multi is None and "MultiPolygon" in types):
        single = shapely.get_type_id(geoms) == 3
        if single.any():
            geoms = geoms.copy()
            geoms[single] = shapely.multipolygons(geoms[single][:, None])
        types = ["MultiPolygon"] if len(geoms) else []
    bounds = shapely.bounds(geoms) if len(geoms) else np.zeros((0, 4))
    return EncodedGeometries(pa.array(shapely.to_wkb(geoms) if len(geoms) else [], pa.binary()), bounds, types)


def _quads_fast(fs: FeatureSet) -> EncodedGeometries | None:
    """The numpy path, when every feature is one convex quadrilateral and none was replaced; else None."""
    import pyarrow as pa

    if not fs.all_convex_quads():
        return None  # not all quadrilaterals, or a degenerate or self-intersecting one: shapely repairs it
    n = len(fs)
    q = fs.coords.reshape(n, 4, 2)
    size = _WKB_POLYGON_HEADER.itemsize + 5 * 16
    buf = np.empty((n, size), dtype=np.uint8)
    header = np.zeros(n, dtype=_WKB_POLYGON_HEADER)
    header["order"], header["type"], header["rings"], header["points"] = 1, 3, 1, 5
    buf[:, :_WKB_POLYGON_HEADER.itemsize] = header.view(np.uint8).reshape(n, -1)
    closed = np.concatenate([q, q[:, :1]], axis=1).astype("<f8")
    buf[:, _WKB_POLYGON_HEADER.itemsize:] = closed.view(np.uint8).reshape(n, -1)
    offsets = np.arange(n + 1, dtype=np.int32) * size
    wkb = pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(buf)])
    bounds = np.hstack([q.min(axis=1), q.max(axis=1)])
    return EncodedGeometries(wkb, bounds, ["Polygon"])


def _repeated(value: str, n: int):
    import pyarrow as pa

    return pa.array([value], pa.string()).take(pa.array(np.zeros(n, dtype=np.int64)))


def feature_table(fs: FeatureSet, encoded: EncodedGeometries | None = None, bbox_column: bool = False):
    """A pyarrow Table, one row per feature: class_id, class_name, score, x0, y0, x1, y1 (global pixels),
    the provenance columns when asked for, [bbox (struct of the geometry's bounds)], geometry (WKB)."""
    import pyarrow as pa

    enc = encode_geometries(fs) if encoded is None else encoded
    b = fs.bbox_px()
    n = len(fs)
    ids = fs.dets.class_id
    lookup = [fs.names.get(i, str(i)) for i in range(int(ids.max()) + 1)] if n else []
    cols = {"class_id": pa.array(ids.astype(np.int32)),
            "class_name": pa.array(lookup, pa.string()).take(pa.array(ids.astype(np.int64))),
            "score": pa.array(fs.dets.score.astype(np.float64)),
            "x0": pa.array(b[:, 0]), "y0": pa.array(b[:, 1]), "x1": pa.array(b[:, 2]), "y1": pa.array(b[:, 3])}
    if fs.provenance is not None:
        p = fs.provenance
        cols.update(source=_repeated(p["source"], n), window=pa.array(fs.dets.window.astype(np.int64)),
                    model=_repeated(p["model"], n), model_sha256=_repeated(p["model_sha256"], n),
                    tiler_version=_repeated(p["tiler_version"], n))
    if bbox_column:
        cols["bbox"] = pa.StructArray.from_arrays([pa.array(enc.bounds[:, i]) for i in range(4)],
                                                  names=["xmin", "ymin", "xmax", "ymax"])
    cols["geometry"] = enc.wkb
    return pa.table(cols)


def geometry_types(geoms: np.ndarray) -> list[str]:
    import shapely

    names = {3: "Polygon", 6: "MultiPolygon"}
    return sorted({names.get(int(t), "Geometry") for t in np.unique(shapely.get_type_id(geoms))}) if len(geoms) else []
