"""GeoParquet 1.1 through pyarrow: WKB geometry, a bbox covering column, CRS as PROJJSON, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .arrow import feature_table, geometry_types
from .base import PIXEL_SPACE_NOTE, atomic_path
from .features import FeatureSet

GEOPARQUET_VERSION = "1.1.0"


def geo_metadata(fs: FeatureSet, geoms: np.ndarray) -> dict:
    """The file's `geo` metadata. A pixel-space output has `crs: null` (the spec's "undefined CRS")."""
    import shapely

    column = {"encoding": "WKB", "geometry_types": geometry_types(geoms),
              "crs": fs.crs.to_json_dict() if fs.crs is not None else None,
              "orientation": "counterclockwise",
              "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}}
    if len(geoms):
        column["bbox"] = [float(v) for v in shapely.total_bounds(geoms)]
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}


def write_geoparquet(path: Path, fs: FeatureSet, meta: dict | None = None) -> Path:
    import pyarrow.parquet as pq

    geoms = fs.geometries()
    table = feature_table(fs, geoms, bbox_column=True)
    info = dict(meta or {})
    if fs.crs is None:
        info.update(coordinate_space="pixel", coordinate_space_note=PIXEL_SPACE_NOTE)
    table = table.replace_schema_metadata({b"geo": json.dumps(geo_metadata(fs, geoms)).encode(),
                                           b"tiler": json.dumps(info).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=64 * 1024)
    return path
