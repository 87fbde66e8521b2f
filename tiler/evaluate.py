"""Score detections against ground truth: polygon IoU matching, precision and recall.

Used by the tests, the model-quality check and the benchmarks. Matching is greedy by score: each
prediction takes the unmatched ground-truth polygon it overlaps most, if that IoU reaches the threshold.
Beyond precision and recall: `polygon_ious` (how well each matched outline fits) and `pieces_per_object`
(how many fragments an object was output as, e.g. a large roof cut by patch edges); `scene_report` gives
both per class and for the large objects of a synthetic scene.
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


def _greedy_match(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray,
                  iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching by score: each prediction, best score first, takes the unmatched truth it overlaps
    most if that IoU reaches the threshold. Returns (truth index per prediction, -1 if none; its IoU, NaN)."""
    assigned = np.full(len(pred), -1, dtype=np.int64)
    pred_iou = np.full(len(pred), np.nan)
    if len(pred) == 0 or len(truth) == 0:
        return assigned, pred_iou
    tree = shapely.STRtree(truth)
    pi, ti = tree.query(pred, predicate="intersects")
    inter = shapely.area(shapely.intersection(pred[pi], truth[ti]))
    union = shapely.area(pred[pi]) + shapely.area(truth[ti]) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    taken = np.zeros(len(truth), bool)
    by_pred = {}
    for k in np.argsort(-iou, kind="stable"):
        by_pred.setdefault(int(pi[k]), []).append(k)
    for p in np.argsort(-np.asarray(scores), kind="stable"):
        for k in by_pred.get(int(p), []):  # candidates sorted by IoU, best first
            if iou[k] < iou_threshold:
                break
            if not taken[ti[k]]:
                taken[ti[k]] = True
                assigned[p], pred_iou[p] = ti[k], iou[k]
                break
    return assigned, pred_iou


def match(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5,
          ignore: np.ndarray | None = None) -> Score:
    """Match predicted to true polygons (shapely arrays). `ignore` marks truths that neither count as
    misses nor make a prediction matching them a false positive (e.g. objects cut by a patch edge)."""
    pred, truth = _geoms(pred), _geoms(truth)
    ignore = np.zeros(len(truth), bool) if ignore is None else np.asarray(ignore, bool)
    if len(pred) == 0 or len(truth) == 0:
        return Score(0, len(pred), int((~ignore).sum()))
    assigned, _ = _greedy_match(pred, scores, truth, iou_threshold)
    hit = assigned >= 0
    taken = np.zeros(len(truth), bool)
    taken[assigned[hit]] = True
    tp = int((~ignore[assigned[hit]]).sum())
    fp = int((~hit).sum())
    fn = int((~taken & ~ignore).sum())
    return Score(tp, fp, fn)


def polygon_ious(pred_geoms: np.ndarray, pred_scores: np.ndarray, truth_geoms: np.ndarray,
                 iou_threshold: float = 0.5) -> np.ndarray:
    """For each truth, the IoU of the prediction matched to it (the greedy matching of `match`), NaN if none
    was. Its median over the matched objects says how well the outlines fit, beyond the 0.5 bar."""
    pred, truth = _geoms(pred_geoms), _geoms(truth_geoms)
    out = np.full(len(truth), np.nan)
    assigned, pred_iou = _greedy_match(pred, pred_scores, truth, iou_threshold)
    hit = assigned >= 0
    out[assigned[hit]] = pred_iou[hit]
    return out


def pieces_per_object(pred_geoms: np.ndarray, truth_geoms: np.ndarray, min_overlap: float = 0.5) -> np.ndarray:
    """For each truth, how many predictions have more than `min_overlap` of their own area inside it: 1 for
    an object found whole, 3 for one output as 3 fragments (e.g. one per patch, unmerged), 0 if missed."""
    pred, truth = _geoms(pred_geoms), _geoms(truth_geoms)
    if len(pred) == 0 or len(truth) == 0:
        return np.zeros(len(truth), dtype=np.int64)
    ti, pi = shapely.STRtree(pred).query(truth, predicate="intersects")
    own = shapely.area(pred[pi])
    inside = shapely.area(shapely.intersection(pred[pi], truth[ti]))
    keep = inside > min_overlap * own
    return np.bincount(ti[keep], minlength=len(truth)).astype(np.int64)


def _geoms(values) -> np.ndarray:
    """A 1-D object array of shapely geometries from a list or array."""
    if isinstance(values, np.ndarray) and values.dtype == object and values.ndim == 1:
        return values
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


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
    """(class ids, scores, geometries in source pixels) from a tiler GeoJSON.

    Polygon features (holes included) and MultiPolygon features (all parts and holes) become shapely
    Polygons and MultiPolygons; ring orientation does not matter, and an invalid outline is repaired
    (`make_valid`, keeping its area). Lon/lat output is projected back through the raster's CRS and inverse
    transform, so scoring in pixels also checks that the georeferencing put every polygon on its object."""
    import json

    from pyproj import Transformer

    fc = json.loads(Path(pred_path).read_text())
    feats = fc["features"]
    classes = np.array([f["properties"]["class_id"] for f in feats], dtype=np.int64)
    scores = np.array([f["properties"]["score"] for f in feats], dtype=np.float64)
    rings, ring_part, part_feat = [], [], []
    for k, f in enumerate(feats):
        geom = f["geometry"]
        if geom["type"] == "Polygon":
            polygons = [geom["coordinates"]]
        elif geom["type"] == "MultiPolygon":
            polygons = geom["coordinates"]
        else:
            raise ValueError(f"{pred_path}: feature {k} is a {geom['type']}, not a Polygon or MultiPolygon")
        for poly in polygons:
            for ring in poly:  # the exterior first, then the holes
                rings.append(np.asarray(ring, dtype=np.float64)[:, :2])
                ring_part.append(len(part_feat))
            part_feat.append(k)
    if not rings:
        return classes, scores, np.empty(0, dtype=object)
    counts = np.array([len(r) for r in rings])
    xy = np.concatenate(rings)
    if fc.get("coordinate_space") != "pixel":
        x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(xy[:, 0], xy[:, 1])
        inv = ~transform
        xy = np.column_stack([inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f])
    lines = shapely.linearrings(xy, indices=np.repeat(np.arange(len(rings)), counts))
    parts = shapely.polygons(lines, indices=np.asarray(ring_part))  # first ring of each part: its shell
    part_feat = np.asarray(part_feat)
    n_parts = np.bincount(part_feat, minlength=len(feats))
    geoms = np.empty(len(feats), dtype=object)
    single = n_parts[part_feat] == 1
    geoms[part_feat[single]] = parts[single]
    if (~single).any():
        feat_ids, dense = np.unique(part_feat[~single], return_inverse=True)
        geoms[feat_ids] = shapely.multipolygons(parts[~single], indices=dense)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms[bad] = shapely.make_valid(geoms[bad], method="structure", keep_collapsed=False)
    return classes, scores, geoms


def load_truth_pixels(truth_path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class ids, pixel polygons with their holes, large flags) from a synthetic scene's ground truth."""
    from .synth import read_truth

    return read_truth(truth_path, with_large=True)


def _median(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if len(values) else float("nan")


def scene_report(pred_path: str | Path, truth_path: str | Path, raster_path: str | Path, task: str,
                 iou_threshold: float = 0.5, min_overlap: float = 0.5) -> dict:
    """Scores of a tiler GeoJSON against a synthetic scene's ground truth, and how well outlines fit.

    Returns {"scores": {class name or "all": Score}, "median_iou": {class name or "all": median IoU of the
    matched objects (NaN if none)}, "large": {"n": number of truths marked large, "recall": fraction of them
    matched, "median_iou": median IoU of the matched ones, "mean_pieces": mean number of predictions (of the
    object's class) with more than `min_overlap` of their area inside each, "pieces": those numbers, "ious":
    each one's IoU (NaN if unmatched)}}.
    Truths are compared as the task's perfect output would be (`truth_geometries`): polygons with holes for
    segment, boxes for detect, rotated boxes for obb."""
    import rasterio

    from .synth import CLASS_NAMES

    with rasterio.open(raster_path) as ds:
        transform, crs = ds.transform, ds.crs
    t_cls, t_poly, t_large = load_truth_pixels(truth_path)
    t_geo = truth_geometries(t_poly, task)
    p_cls, p_score, p_geo = load_prediction_pixels(pred_path, transform, crs)
    scores, medians = {}, {}
    ious = np.full(len(t_geo), np.nan)
    pieces = np.zeros(len(t_geo), dtype=np.int64)
    for c, name in enumerate(CLASS_NAMES):
        p, t = p_cls == c, t_cls == c
        scores[name] = match(p_geo[p], p_score[p], t_geo[t], iou_threshold)
        ious[t] = polygon_ious(p_geo[p], p_score[p], t_geo[t], iou_threshold)
        medians[name] = _median(ious[t])
        if (t & t_large).any():
            pieces[t] = pieces_per_object(p_geo[p], t_geo[t], min_overlap)
    scores["all"] = Score(*(sum(getattr(s, k) for s in scores.values()) for k in ("tp", "fp", "fn")))
    medians["all"] = _median(ious)
    n_large = int(t_large.sum())
    large = {"n": n_large,
             "recall": float((~np.isnan(ious[t_large])).mean()) if n_large else float("nan"),
             "median_iou": _median(ious[t_large]),
             "mean_pieces": float(pieces[t_large].mean()) if n_large else float("nan"),
             "pieces": pieces[t_large].tolist(), "ious": ious[t_large].tolist()}
    return {"scores": scores, "median_iou": medians, "large": large}


def score_scene(pred_path: str | Path, truth_path: str | Path, raster_path: str | Path, task: str,
                iou_threshold: float = 0.5) -> dict[str, Score]:
    """Per-class and overall scores of a tiler GeoJSON against a synthetic scene's ground truth."""
    return scene_report(pred_path, truth_path, raster_path, task, iou_threshold)["scores"]
