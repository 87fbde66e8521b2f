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
