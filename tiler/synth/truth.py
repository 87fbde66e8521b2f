"""Ground truth of a scene: one GeoJSON feature per object, exact polygons with their holes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from .objects import LARGE_SIZE


def write_truth(spec, truth_path: str | os.PathLike) -> Path:
    """Write the ground truth of every object of `spec` as a GeoJSON FeatureCollection in the scene's CRS.

    Each feature: a Polygon geometry (rings [exterior, *holes], map coordinates) and the properties
    `class_id`, `class_name`, `pixel_polygon` (the exterior ring in global pixel coordinates, x right, y down,
    pixel edges at integers, not closed), `pixel_holes` (the interior rings likewise, [] for most objects) and
    `large` (true for objects at least 300 px across)."""
    truth_path = Path(truth_path)
    tmp = truth_path.with_name(truth_path.name + ".part")
    t = spec.transform

    def to_map(p: np.ndarray) -> list:
        ring = np.column_stack([t.c + p[:, 0] * t.a, t.f + p[:, 1] * t.e])
        return np.round(np.vstack([ring, ring[:1]]), 4).tolist()

    try:
        with open(tmp, "w") as f:
            f.write('{"type":"FeatureCollection","crs":{"type":"name","properties":{"name":"%s"}},"features":[\n'
                    % spec.crs)
            first = True
            for obj in spec.all_objects():
                feat = {"type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [to_map(r) for r in obj.rings]},
                        "properties": {"class_id": obj.class_id, "class_name": obj.class_name,
                                       "pixel_polygon": np.round(obj.polygon, 4).tolist(),
                                       "pixel_holes": [np.round(h, 4).tolist() for h in obj.holes],
                                       "large": obj.large}}
                f.write(("" if first else ",\n") + json.dumps(feat, separators=(",", ":")))
                first = False
            f.write("\n]}\n")
        os.replace(tmp, truth_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return truth_path


def _is_large(props: dict, exterior: list) -> bool:
    if "large" in props:
        return bool(props["large"])
    return bool(np.ptp(np.asarray(exterior, dtype=np.float64), axis=0).max() >= LARGE_SIZE)  # older files


def read_truth(truth_path: str | os.PathLike, with_large: bool = False):
    """(class_ids, pixel polygons as a shapely array, holes included) from a ground-truth file;
    with `with_large`, also a bool array marking the large objects: (class_ids, polygons, large)."""
    with open(truth_path) as f:
        feats = json.load(f)["features"]
    classes = np.array([ft["properties"]["class_id"] for ft in feats], dtype=np.int64)
    polys = np.empty(len(feats), dtype=object)
    polys[:] = [Polygon(ft["properties"]["pixel_polygon"], ft["properties"].get("pixel_holes") or None)
                for ft in feats]
    if not with_large:
        return classes, polys
    large = np.array([_is_large(ft["properties"], ft["properties"]["pixel_polygon"]) for ft in feats], dtype=bool)
    return classes, polys, large
