"""GeoPackage and FlatGeobuf through pyogrio's Arrow path (GDAL), written atomically."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .arrow import encode_geometries, feature_table
from .base import PIXEL_SPACE_NOTE, atomic_path
from .features import FeatureSet

DRIVERS = {"gpkg": "GPKG", "flatgeobuf": "FlatGeobuf"}
LAYER = "detections"


def write_ogr(path: Path, fs: FeatureSet, fmt: str, meta: dict | None = None) -> Path:
    """One layer, `detections`. A layer of Polygons, or of MultiPolygons when any feature has several parts
    (then all are written as MultiPolygons: GIS layers want one type). Pixel-space outputs have no CRS, and
    say so in the layer metadata (GeoPackage) or header (FlatGeobuf)."""
    from pyogrio import write_arrow

    if fmt == "flatgeobuf":
        from . import flatgeobuf

        if fs.all_convex_quads():  # quadrilaterals: tiler's own writer, several times faster than GDAL's
            return flatgeobuf.write_flatgeobuf(path, fs, meta)
    enc = encode_geometries(fs)
    layer_type = "MultiPolygon" if "MultiPolygon" in enc.types else "Polygon"
    table = feature_table(fs, enc)
    info = dict(meta or {})
    if fs.crs is None:
        info.update(coordinate_space="pixel", coordinate_space_note=PIXEL_SPACE_NOTE)
    description = "tiler detections" + (" in pixel coordinates" if fs.crs is None else "")
    if fmt == "gpkg":
        kwargs = {"layer_metadata": {"tiler": json.dumps(info)}, "layer_options": {"DESCRIPTION": description}}
    else:  # FlatGeobuf keeps a description in its header (GDAL writes no metadata string there)
        kwargs = {"layer_options": {"DESCRIPTION": description}}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)  # pixel space has none, by design
        write_arrow(table, str(tmp), layer=LAYER, driver=DRIVERS[fmt], geometry_name="geometry",
                    geometry_type=layer_type, crs=fs.crs.to_wkt() if fs.crs is not None else None, **kwargs)
    return path
