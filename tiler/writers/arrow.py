"""Features as an Arrow table: WKB geometry, attribute columns, provenance; what pyogrio and GeoParquet write."""

from __future__ import annotations

import numpy as np

from .features import FeatureSet


def _repeated(value: str, n: int):
    import pyarrow as pa

    return pa.array([value], pa.string()).take(pa.array(np.zeros(n, dtype=np.int64)))


def feature_table(fs: FeatureSet, geometries: np.ndarray | None = None, bbox_column: bool = False):
    """A pyarrow Table, one row per feature: class_id, class_name, score, x0, y0, x1, y1 (global pixels),
    the provenance columns when asked for, [bbox (struct of the geometry's bounds)], geometry (WKB)."""
    import pyarrow as pa
    import shapely

    geoms = fs.geometries() if geometries is None else geometries
    b = fs.bbox_px()
    n = len(fs)
    cols = {"class_id": pa.array(fs.dets.class_id.astype(np.int32)),
            "class_name": pa.array(fs.class_names(), pa.string()),
            "score": pa.array(fs.dets.score.astype(np.float64)),
            "x0": pa.array(b[:, 0]), "y0": pa.array(b[:, 1]), "x1": pa.array(b[:, 2]), "y1": pa.array(b[:, 3])}
    if fs.provenance is not None:
        p = fs.provenance
        cols.update(source=_repeated(p["source"], n), window=pa.array(fs.dets.window.astype(np.int64)),
                    model=_repeated(p["model"], n), model_sha256=_repeated(p["model_sha256"], n),
                    tiler_version=_repeated(p["tiler_version"], n))
    if bbox_column:
        gb = shapely.bounds(geoms) if n else np.zeros((0, 4))
        cols["bbox"] = pa.StructArray.from_arrays([pa.array(gb[:, i]) for i in range(4)],
                                                  names=["xmin", "ymin", "xmax", "ymax"])
    cols["geometry"] = pa.array(shapely.to_wkb(geoms) if n else [], pa.binary())
    return pa.table(cols)


def geometry_types(geoms: np.ndarray) -> list[str]:
    import shapely

    names = {3: "Polygon", 6: "MultiPolygon"}
    return sorted({names.get(int(t), "Geometry") for t in np.unique(shapely.get_type_id(geoms))}) if len(geoms) else []
