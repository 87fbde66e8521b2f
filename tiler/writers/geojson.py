"""GeoJSON (RFC 7946) and GeoJSON text sequences (RFC 8142), streamed feature by feature.

A hand-written streaming writer: measured faster than GDAL's GeoJSON driver here (bench/README.md), and it
never holds the features as dicts. Georeferenced rasters give lon/lat (EPSG:4326, counter-clockwise exteriors,
no `crs` member). Rasters without georeferencing give pixel coordinates (x right, y down), said in a top-level
member.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import shapely

from ..detections import Rings
from ..geometry import polygonal_parts
from ..georef import DECIMALS_LONLAT, DECIMALS_PIXEL
from .base import PIXEL_SPACE_NOTE, atomic_path
from .features import FeatureSet, convex_quads


def _features(fs: FeatureSet) -> Iterator[dict]:
    """GeoJSON features; rings oriented as RFC 7946 asks (exteriors counter-clockwise, holes clockwise), in
    pixel space too (read as x right, y up, as a GIS plots them)."""
    dets = fs.dets
    exact = fs.coords
    decimals = DECIMALS_LONLAT if fs.crs is not None else DECIMALS_PIXEL
    coords = np.round(exact, decimals)
    replaced = {k: shapely.geometry.mapping(shapely.set_precision(g, 10.0 ** -decimals))
                for k, g in fs.replaced.items()}
    replaced.update(_repaired_after_rounding(dets, exact, coords, decimals, skip=fs.replaced))
    bbox = fs.bbox_px().tolist()
    scores = np.round(dets.score.astype(np.float64), 5).tolist()
    classes = dets.class_id.tolist()
    class_names = fs.class_names().tolist()
    prov = fs.provenance
    windows = dets.window.tolist() if prov is not None else None
    if dets.rings is None:
        # one ring each: closed rings in one array, written as numpy slices (orjson encodes them natively)
        starts = dets.offsets[:-1]
        closed = np.insert(coords, dets.offsets[1:], coords[starts], axis=0)
        off = (dets.offsets + np.arange(len(dets.offsets))).tolist()
        geometries = ({"type": "Polygon", "coordinates": [closed[off[k]:off[k + 1]]]} for k in range(len(dets)))
    else:
        geometries = _ring_geometries(coords.tolist(), dets.rings)
    for k, geometry in enumerate(geometries):
        props = {"class_id": classes[k], "class_name": class_names[k], "score": scores[k], "bbox_px": bbox[k]}
        if prov is not None:
            props.update(source=prov["source"], window=windows[k], model=prov["model"],
                         model_sha256=prov["model_sha256"], tiler_version=prov["tiler_version"])
        yield {"type": "Feature", "geometry": replaced.get(k, geometry), "properties": props}


def _repaired_after_rounding(dets, exact: np.ndarray, rounded: np.ndarray, decimals: int, skip=()
                             ) -> dict[int, dict]:
    """Rounding to the output precision can break a valid geometry (two parts of an outline a hundredth of a
    pixel apart come to touch along an edge). Those few are written from the exact geometry snapped to the
    output grid by GEOS, which keeps them valid and polygonal, with RFC 7946 ring orientation."""
    if not len(dets):
        return {}
    # quadrilaterals still strictly convex after rounding are valid (numpy); only the others go to GEOS
    convex = convex_quads(dets, rounded)
    check = np.flatnonzero(~convex) if convex is not None else np.arange(len(dets))
    bad = check[~shapely.is_valid(dets.with_coords(rounded).take(check).geometries())] if len(check) else check
    bad = np.asarray([k for k in bad.tolist() if k not in skip], dtype=np.int64)
    if not len(bad):
        return {}
    snapped = shapely.set_precision(dets.with_coords(exact).take(bad).geometries(), 10.0 ** -decimals)
    fixed = shapely.orient_polygons(polygonal_parts(snapped))
    return {int(k): shapely.geometry.mapping(g) for k, g in zip(bad, fixed) if g.is_valid and not g.is_empty}


def _closed(ring: list) -> list:
    ring.append(ring[0])
    return ring


def _ring_geometries(flat: list, rings: Rings) -> Iterator[dict]:
    """Polygon (exterior and holes) or MultiPolygon per detection, from the ring layout."""
    voff = rings.vertex_offsets.tolist()
    roff = rings.offsets.tolist()
    shell = rings.shell.tolist()
    for k in range(len(roff) - 1):
        polygons: list[list] = []
        for r in range(roff[k], roff[k + 1]):
            ring = _closed(flat[voff[r]:voff[r + 1]])
            if shell[r]:
                polygons.append([ring])
            else:
                polygons[-1].append(ring)
        if len(polygons) == 1:
            yield {"type": "Polygon", "coordinates": polygons[0]}
        else:
            yield {"type": "MultiPolygon", "coordinates": polygons}


def collection_head(crs, meta: dict | None) -> bytes:
    """The start of a FeatureCollection, up to its first feature; pixel-space output says so here."""
    import orjson

    head = {"type": "FeatureCollection"}
    if crs is None:
        head["coordinate_space"] = "pixel"
        head["coordinate_space_note"] = PIXEL_SPACE_NOTE
    if meta:
        head["tiler"] = meta
    return orjson.dumps(head)[:-1] + b',"features":['


def encoded_features(fs: FeatureSet) -> Iterator[bytes]:
    """Each feature as JSON bytes. orjson encodes them (~20x faster than the json module); coordinates were
    checked finite."""
    import orjson

    dumps, numpy = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    for feat in _features(fs):
        yield dumps(feat, option=numpy)


def write_geojson(path: Path, fs: FeatureSet, seq: bool = False, meta: dict | None = None) -> Path:
    """Write `fs` as a GeoJSON FeatureCollection, or a GeoJSON text sequence with `seq`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if seq:
            for feat in encoded_features(fs):
                f.write(b"\x1e" + feat + b"\n")  # RFC 8142 record separator
            return path
        f.write(collection_head(fs.crs, meta))
        for k, feat in enumerate(encoded_features(fs)):
            f.write((b"\n" if k == 0 else b",\n") + feat)
        f.write(b"\n]}\n")
    return path
