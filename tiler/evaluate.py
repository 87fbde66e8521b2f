"""Score detections against ground truth: polygon IoU matching, precision and recall.

Used by the tests, the model-quality check and the benchmarks. Matching is greedy by score: each
prediction takes the unmatched ground-truth polygon it overlaps most, if that IoU reaches the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely


@dataclass(frozen=True)
class Score:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def __str__(self) -> str:
        return f"P={self.precision:.3f} R={self.recall:.3f} (tp={self.tp} fp={self.fp} fn={self.fn})"


def match(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5,
          ignore: np.ndarray | None = None) -> Score:
    """Match predicted to true polygons (shapely arrays). `ignore` marks truths that neither count as
    misses nor make a prediction matching them a false positive (e.g. objects cut by a patch edge)."""
    pred, truth = np.asarray(pred, dtype=object), np.asarray(truth, dtype=object)
    ignore = np.zeros(len(truth), bool) if ignore is None else np.asarray(ignore, bool)
    if len(pred) == 0 or len(truth) == 0:
        return Score(0, len(pred), int((~ignore).sum()))
    tree = shapely.STRtree(truth)
    pi, ti = tree.query(pred, predicate="intersects")
    inter = shapely.area(shapely.intersection(pred[pi], truth[ti]))
    union = shapely.area(pred[pi]) + shapely.area(truth[ti]) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    taken = np.zeros(len(truth), bool)
    tp = fp = 0
    by_pred = {}
    for k in np.argsort(-iou, kind="stable"):
        by_pred.setdefault(int(pi[k]), []).append(k)
    for p in np.argsort(-np.asarray(scores), kind="stable"):
        best = None
        for k in by_pred.get(int(p), []):  # candidates sorted by IoU, best first
            if iou[k] < iou_threshold:
                break
            if not taken[ti[k]]:
                best = ti[k]
                break
        if best is None:
            fp += 1
            continue
        taken[best] = True
        if not ignore[best]:
            tp += 1
    fn = int((~taken & ~ignore).sum())
    return Score(tp, fp, fn)


def read_dota_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class names, polygons, difficult flags) from a DOTA v1 label file."""
    names, polys, difficult = [], [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) < 9:
            continue  # header lines (imagesource, gsd)
        try:
            xy = np.array([float(v) for v in parts[:8]]).reshape(4, 2)
        except ValueError:
            continue
        names.append(parts[8])
        polys.append(shapely.Polygon(xy))
        difficult.append(len(parts) > 9 and parts[9] == "1")
    return np.array(names), np.array(polys, dtype=object), np.array(difficult, bool)


def truth_geometries(polygons: np.ndarray, task: str) -> np.ndarray:
    """What a perfect model of `task` would output for these object polygons."""
    if task == "detect":
        return shapely.envelope(polygons)
    if task == "obb":
        return shapely.oriented_envelope(polygons)
    return polygons


def load_prediction_pixels(pred_path: str | Path, transform, crs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class ids, scores, polygons in source pixels) from a tiler GeoJSON.

    Lon/lat output is projected back through the raster's CRS and inverse transform, so scoring in pixels
    also checks that the georeferencing put every polygon on its object."""
    import json

    from pyproj import Transformer

    fc = json.loads(Path(pred_path).read_text())
    feats = fc["features"]
    classes = np.array([f["properties"]["class_id"] for f in feats], dtype=np.int64)
    scores = np.array([f["properties"]["score"] for f in feats], dtype=np.float64)
    rings = [np.asarray(f["geometry"]["coordinates"][0], dtype=np.float64) for f in feats]
    if not rings:
        return classes, scores, np.empty(0, dtype=object)
    counts = np.array([len(r) for r in rings])
    xy = np.concatenate(rings)
    if fc.get("coordinate_space") != "pixel":
        x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(xy[:, 0], xy[:, 1])
        inv = ~transform
        xy = np.column_stack([inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f])
    polys = shapely.polygons(shapely.linearrings(xy, indices=np.repeat(np.arange(len(rings)), counts)))
    return classes, scores, polys


def score_scene(pred_path: str | Path, truth_path: str | Path, raster_path: str | Path, task: str,
                iou_threshold: float = 0.5) -> dict[str, Score]:
    """Per-class and overall scores of a tiler GeoJSON against a synthetic scene's ground truth."""
    import json

    import rasterio

    from .synth import CLASS_NAMES

    with rasterio.open(raster_path) as ds:
        transform, crs = ds.transform, ds.crs
    truth = json.loads(Path(truth_path).read_text())["features"]
    t_cls = np.array([f["properties"]["class_id"] for f in truth], dtype=np.int64)
    t_geo = truth_geometries(np.array([shapely.Polygon(f["properties"]["pixel_polygon"]) for f in truth],
                                      dtype=object), task)
    p_cls, p_score, p_geo = load_prediction_pixels(pred_path, transform, crs)
    out = {}
    for c, name in enumerate(CLASS_NAMES):
        out[name] = match(p_geo[p_cls == c], p_score[p_cls == c], t_geo[t_cls == c], iou_threshold)
    out["all"] = Score(*(sum(getattr(s, k) for s in out.values()) for k in ("tp", "fp", "fn")))
    return out
