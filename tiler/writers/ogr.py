"""GeoPackage and FlatGeobuf through pyogrio's Arrow path (GDAL), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import shapely

from .arrow import feature_table, geometry_types
from .base import PIXEL_SPACE_NOTE, atomic_path
from .features import FeatureSet

DRIVERS = {"gpkg": "GPKG", "flatgeobuf": "FlatGeobuf"}
LAYER = "detections"


def write_ogr(path: Path, fs: FeatureSet, fmt: str, meta: dict | None = None) -> Path:
    """One layer, `detections`. A layer of Polygons, or of MultiPolygons when any feature has several parts
    (then all are written as MultiPolygons: GIS layers want one type). Pixel-space outputs have no CRS, and
    say so in the layer's metadata where the format keeps it (GeoPackage)."""
    from pyogrio import write_arrow

    geoms = fs.geometries()
    types = geometry_types(geoms)
    layer_type = "MultiPolygon" if "MultiPolygon" in types else "Polygon"
    if layer_type == "MultiPolygon":
        single = shapely.get_type_id(geoms) == 3
        geoms = geoms.copy()
        if single.any():
            geoms[single] = shapely.multipolygons(geoms[single][:, None])
    table = feature_table(fs, geoms)
    kwargs = {}
    if fmt == "gpkg":
        info = dict(meta or {})
        if fs.crs is None:
            info.update(coordinate_space="pixel", coordinate_space_note=PIXEL_SPACE_NOTE)
        kwargs["layer_metadata"] = {"tiler": json.dumps(info)}
        kwargs["layer_options"] = {"DESCRIPTION": "tiler detections" + (" in pixel coordinates" if fs.crs is None else "")}
    with atomic_path(path) as tmp:
        write_arrow(table, str(tmp), layer=LAYER, driver=DRIVERS[fmt], geometry_name="geometry",
                    geometry_type=layer_type, crs=fs.crs.to_wkt() if fs.crs is not None else None, **kwargs)
    return path
