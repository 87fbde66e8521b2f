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
    if fmt == "flatgeobuf":
        from . import flatgeobuf

        if fs.all_convex_quads():  # quadrilaterals: tiler's own writer, several times faster than GDAL's
            return flatgeobuf.write_flatgeobuf(path, fs, meta)
    enc = encode_geometries(fs)
    layer_type = "MultiPolygon" if "MultiPolygon" in enc.types else "Polygon"
    table = feature_table(fs, enc)
    with atomic_path(path) as tmp:
        write_layer(table, tmp, fmt, layer_type, fs.crs, meta)
    return path


def write_layer(arrow_obj, path: Path, fmt: str, layer_type: str, crs, meta: dict | None) -> None:
    """The `detections` layer from an Arrow table or stream, with its CRS (none: pixel space, said in the
    layer metadata (GeoPackage) and the description (both))."""
    from pyogrio import write_arrow

    info = dict(meta or {})
    if crs is None:
        info.update(coordinate_space="pixel", coordinate_space_note=PIXEL_SPACE_NOTE)
    description = "tiler detections" + (" in pixel coordinates" if crs is None else "")
    if fmt == "gpkg":
        kwargs = {"layer_metadata": {"tiler": json.dumps(info)}, "layer_options": {"DESCRIPTION": description}}
    else:  # FlatGeobuf keeps a description in its header (GDAL writes no metadata string there)
        kwargs = {"layer_options": {"DESCRIPTION": description}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)  # pixel space has none, by design
        write_arrow(arrow_obj, str(path), layer=LAYER, driver=DRIVERS[fmt], geometry_name="geometry",
                    geometry_type=layer_type, crs=crs.to_wkt() if crs is not None else None, **kwargs)
