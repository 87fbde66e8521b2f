"""Writers: the job's features in GIS formats, chosen by suffix, always written atomically (a temporary file
beside the output, renamed when complete; nothing left on failure).

`geojson.py` (RFC 7946 / RFC 8142, tiler's own streaming writer), `ogr.py` (GeoPackage, FlatGeobuf, through
pyogrio), `flatgeobuf.py` (FlatGeobuf of boxes, tiler's own numpy writer), `geoparquet.py` (GeoParquet 1.1,
through pyarrow); `features.py` builds what they all write, once; `arrow.py` the WKB table.

Every feature carries `class_id`, `class_name`, `score`, its global-pixel box (`bbox_px` in GeoJSON,
`x0, y0, x1, y1` columns elsewhere) and, unless turned off, provenance: `source`, `window`, `model`,
`model_sha256`, `tiler_version`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..detections import Detections
from ..georef import Georeferencer
from .base import (CRS_CHOICES, FORMATS, PIXEL_SPACE_NOTE, atomic_path, atomic_text, check_output_path,
                   check_writable, output_crs, output_format)
from .features import PROVENANCE, FeatureSet
from .sink import open_sink

__all__ = ["CRS_CHOICES", "FORMATS", "PIXEL_SPACE_NOTE", "PROVENANCE", "FeatureSet", "atomic_path", "atomic_text",
           "check_output_path", "check_writable", "open_sink", "output_crs", "output_format", "write_detections"]


def write_detections(path: str | os.PathLike, dets: Detections, names: dict[int, str], geo: Georeferencer | None,
                     meta: dict | None = None, crs: str = "auto", provenance: dict | None = None) -> Path:
    """Write `dets` (global pixels) to `path`, the format from its suffix, in the CRS `crs` asks for
    (auto: WGS84 for GeoJSON, the raster's own CRS for the others; native; wgs84; EPSG:xxxx)."""
    path = check_output_path(path, crs)
    fmt = output_format(path)
    fs = FeatureSet.build(dets, names, geo, output_crs(fmt, crs, geo.crs if geo is not None else None), provenance)
    if fmt in ("geojson", "geojsonseq"):
        from .geojson import write_geojson

        return write_geojson(path, fs, seq=fmt == "geojsonseq", meta=meta)
    if fmt == "geoparquet":
        from .geoparquet import write_geoparquet

        return write_geoparquet(path, fs, meta)
    from .ogr import write_ogr

    return write_ogr(path, fs, fmt, meta)
