"""Writers: GeoJSON (RFC 7946, streamed) and GeoJSON text sequences, always written atomically.

Every feature carries `class_id`, `class_name`, `score` and `bbox_px` ([x0, y0, x1, y1] global pixels).
Georeferenced rasters give lon/lat (EPSG:4326, counter-clockwise exteriors, no `crs` member).
Rasters without georeferencing give pixel coordinates (x right, y down), said in a top-level member.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np
import shapely

from .detections import Detections, Rings
from .errors import OutputError
from .geometry import polygonal_parts
from .georef import DECIMALS_LONLAT, DECIMALS_PIXEL, Georeferencer, global_lonlat, oriented

FORMATS = {".geojson": "geojson", ".json": "geojson", ".geojsonl": "geojsonseq", ".geojsons": "geojsonseq",
           ".geojsonseq": "geojsonseq"}
PIXEL_SPACE_NOTE = "pixel coordinates of the source image: x to the right, y down, origin at its top-left corner"


def output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"unsupported output format {suffix or '(none)'} for {path}; "
                          f"use one of {', '.join(sorted(FORMATS))}")
    return FORMATS[suffix]


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail before any work if the output could not be written."""
    output_format(Path(path))
    return check_writable(path)


def check_writable(path: str | os.PathLike) -> Path:
    """`path` as a Path if a file could be written there (not a folder, in an existing writable folder)."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise OutputError(f"output path exists and is not a file: {p}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder is not writable: {parent}")
    return p


@contextmanager
def atomic_text(path: str | os.PathLike) -> Iterator[TextIO]:
    """Write to a hidden temporary file beside `path` and rename on success; nothing is left on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _features(dets: Detections, names: dict[int, str], geo: Georeferencer | None) -> Iterator[dict]:
    """GeoJSON features; rings oriented as RFC 7946 asks (exteriors counter-clockwise, holes clockwise), in
    pixel space too (read as x right, y up, as a GIS plots them)."""
    exact = global_lonlat(dets, geo) if geo is not None else oriented(dets, dets.coords)
    decimals = DECIMALS_LONLAT if geo is not None else DECIMALS_PIXEL
    coords = np.round(exact, decimals)
    repaired = _repaired_after_rounding(dets, exact, coords, decimals)
    bbox = np.round(dets.bounds(), DECIMALS_PIXEL).tolist()
    scores = np.round(dets.score.astype(np.float64), 5).tolist()
    classes = dets.class_id.tolist()
    flat = coords.tolist()
    if dets.rings is None:
        off = dets.offsets.tolist()
        geometries = ({"type": "Polygon", "coordinates": [_closed(flat[off[k]:off[k + 1]])]}
                      for k in range(len(dets)))
    else:
        geometries = _ring_geometries(flat, dets.rings)
    for k, geometry in enumerate(geometries):
        yield {"type": "Feature", "geometry": repaired.get(k, geometry),
               "properties": {"class_id": classes[k], "class_name": names.get(classes[k], str(classes[k])),
                              "score": scores[k], "bbox_px": bbox[k]}}


def _repaired_after_rounding(dets: Detections, exact: np.ndarray, rounded: np.ndarray, decimals: int
                             ) -> dict[int, dict]:
    """Rounding to the output precision can break a valid geometry (two parts of an outline a hundredth of a
    pixel apart come to touch along an edge). Those few are written from the exact geometry snapped to the
    output grid by GEOS, which keeps them valid and polygonal, with RFC 7946 ring orientation."""
    if not len(dets):
        return {}
    finite = np.logical_and.reduceat(np.isfinite(rounded).all(axis=1), dets.offsets[:-1])
    # (non-finite coordinates are not repaired: json refuses them, so the write fails and leaves no file)
    bad = np.flatnonzero(~shapely.is_valid(dets.with_coords(rounded).geometries()) & finite)
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


def write_detections(path: str | os.PathLike, dets: Detections, names: dict[int, str],
                     geo: Georeferencer | None, meta: dict | None = None) -> Path:
    """Write `dets` to `path` (format from the suffix), streaming feature by feature."""
    path = check_output_path(path)
    fmt = output_format(path)
    dumps = lambda obj: json.dumps(obj, separators=(",", ":"), allow_nan=False)  # noqa: E731
    with atomic_text(path) as f:
        if fmt == "geojsonseq":
            for feat in _features(dets, names, geo):
                f.write("\x1e" + dumps(feat) + "\n")  # RFC 8142 record separator
            return path
        head = {"type": "FeatureCollection"}
        if geo is None:
            head["coordinate_space"] = "pixel"
            head["coordinate_space_note"] = PIXEL_SPACE_NOTE
        if meta:
            head["tiler"] = meta
        f.write(dumps(head)[:-1] + ',"features":[')
        for k, feat in enumerate(_features(dets, names, geo)):
            f.write(("\n" if k == 0 else ",\n") + dumps(feat))
        f.write("\n]}\n")
    return path
