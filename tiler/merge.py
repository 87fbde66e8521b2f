"""Merge overlapping detections from neighbouring patches in global pixel coordinates.

Tiles overlap, so an object near a tile edge is usually detected twice or more.
This module deduplicates those detections with greedy non-maximum suppression
(NMS) on the *real* geometries (axis-aligned boxes, rotated boxes, or arbitrary
segmentation polygons as shapely objects), never on their bounding boxes: two
thin diagonal boxes can have heavily overlapping bounding boxes while the boxes
themselves barely touch.

Scaling: a gigapixel raster can yield hundreds of thousands of detections, so
nothing here builds an n x n matrix. Candidate pairs come from an STRtree, the
overlap metric is computed only for those pairs (vectorised in shapely), and the
greedy pass walks a CSR neighbour list, O(n + pairs) after the tree query.

Pure module: numpy and shapely >= 2 only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely

__all__ = ["MATCH_METRICS", "SORTERS", "pair_overlaps", "sort_order", "nms"]

MATCH_METRICS: tuple[str, ...] = ("ios", "iou")
"""ios = intersection / smaller area (catches a partial box cut by a tile edge
inside the full box); iou = intersection / union (classic)."""

SORTERS: tuple[str, ...] = ("score", "intelligent")

# Tolerance used when binning scores into 0.1-wide confidence bins: scores often
# arrive as float32 (0.7 in float32 is 0.69999998...), which must land in bin 7.
_BIN_EPS = 1e-6


def _as_geom_array(geoms: Any) -> np.ndarray:
    """Return a 1-D object array of geometries (shapely needs object dtype)."""
    if isinstance(geoms, np.ndarray) and geoms.dtype == object and geoms.ndim == 1:
        return geoms
    seq = list(geoms)
    out = np.empty(len(seq), dtype=object)
    out[:] = seq
    return out


def _safe_geoms(geoms: np.ndarray) -> np.ndarray:
    """Repair invalid geometries (e.g. self-intersecting polygons from mask
    contours) so GEOS set operations cannot raise a TopologyException."""
    invalid = ~shapely.is_valid(geoms) & ~shapely.is_missing(geoms)
    if not invalid.any():
        return geoms
    fixed = geoms.copy()
    fixed[invalid] = shapely.make_valid(geoms[invalid])
    return fixed


def _areas(geoms: np.ndarray) -> np.ndarray:
    """Areas as float64, with missing (None) geometries counted as 0."""
    areas = np.asarray(shapely.area(geoms), dtype=np.float64)
    return np.nan_to_num(areas, nan=0.0)


def pair_overlaps(
    geoms: np.ndarray,
    metric: str,
    *,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlap metric for every pair of intersecting geometries.

    Returns ``(i, j, value)`` with ``i < j`` (int64, int64, float64). Pairs whose
    geometries do not intersect are absent (their metric would be 0). Values are
    clipped to [0, 1]; a pair involving a zero-area geometry has value 0.
    If ``groups`` is given (one label per geometry), only pairs with equal labels
    are returned; they are filtered before the costly intersections.
    """
    if metric not in MATCH_METRICS:
        raise ValueError(f"metric must be one of {MATCH_METRICS}, got {metric!r}")
    geoms = _safe_geoms(_as_geom_array(geoms))
    if groups is not None:
        groups = np.asarray(groups).ravel()
        if len(groups) != len(geoms):
            raise ValueError(f"groups has length {len(groups)}, expected {len(geoms)}")
    empty_i = np.empty(0, dtype=np.int64)
    if len(geoms) == 0:
        return empty_i, empty_i.copy(), np.empty(0, dtype=np.float64)

    tree = shapely.STRtree(geoms)
    # The tree query is the only place candidate pairs are generated: cost is
    # proportional to the number of real intersections, not n^2.
    src, dst = tree.query(geoms, predicate="intersects")
    keep = src < dst  # each unordered pair once, no self pairs
    if groups is not None:
        keep &= groups[src] == groups[dst]
    i = src[keep].astype(np.int64, copy=False)
    j = dst[keep].astype(np.int64, copy=False)
    if len(i) == 0:
        return i, j, np.empty(0, dtype=np.float64)

    areas = _areas(geoms)
    inter = np.nan_to_num(
        np.asarray(shapely.area(shapely.intersection(geoms[i], geoms[j])), dtype=np.float64),
        nan=0.0,
    )
    a_i, a_j = areas[i], areas[j]
    denom = np.minimum(a_i, a_j) if metric == "ios" else a_i + a_j - inter
    value = np.zeros(len(i), dtype=np.float64)
    # Zero-area (degenerate/empty) geometries get metric 0 instead of 0/0.
    ok = denom > 0
    value[ok] = inter[ok] / denom[ok]
    # Floating-point noise can push a contained box's ios just above 1.
    np.clip(value, 0.0, 1.0, out=value)
    return i, j, value


def sort_order(
    scores: Sequence[float] | np.ndarray,
    areas: Sequence[float] | np.ndarray,
    sorter: str = "score",
    demote: np.ndarray | None = None,
) -> np.ndarray:
    """Processing order for greedy NMS (int64 indices, best first).

    ``demote`` (optional bool per detection) puts flagged detections after all
    others, whatever their score: used for detections cut by an inner tile edge,
    so the neighbouring tile's whole view of the object wins the merge.

    ``"score"``: descending score, ties by ascending index.
    ``"intelligent"`` (after patched_yolo_infer's intelligent_sorter): descending
    confidence bin ``floor(score * 10)``, then descending area, then descending
    score, then ascending index. Preferring the largest polygon among similarly
    confident ones keeps the whole object rather than a fragment cut at a tile
    edge. Unlike patched_yolo_infer (which uses ``round``), bins round down.
    """
    if sorter not in SORTERS:
        raise ValueError(f"sorter must be one of {SORTERS}, got {sorter!r}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    idx = np.arange(len(s), dtype=np.int64)
    primary: tuple[np.ndarray, ...] = ()
    if demote is not None:
        d = np.asarray(demote, dtype=bool).ravel()
        if len(d) != len(s):
            raise ValueError(f"demote has length {len(d)}, expected {len(s)} (same as scores)")
        primary = (d,)
    if sorter == "score":
        # lexsort: last key is primary; idx as first key makes ties explicit.
        return np.lexsort((idx, -s) + primary).astype(np.int64, copy=False)
    a = np.nan_to_num(np.asarray(areas, dtype=np.float64).ravel(), nan=0.0)
    if len(a) != len(s):
        raise ValueError(f"areas has length {len(a)}, expected {len(s)} (same as scores)")
    bins = np.floor(s * 10.0 + _BIN_EPS)
    return np.lexsort((idx, -s, -a, -bins) + primary).astype(np.int64, copy=False)


def nms(
    geoms: Sequence[Any] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    class_ids: Sequence[Any] | np.ndarray | None = None,
    threshold: float = 0.5,
    metric: str = "ios",
    class_agnostic: bool = True,
    sorter: str = "score",
    demote: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression on real geometries.

    Detections are visited in ``sort_order(scores, areas, sorter, demote)``; each one not
    yet suppressed is kept and suppresses every other detection whose overlap
    ``metric`` with it is ``> threshold``. With ``class_agnostic=False`` only
    detections of the same ``class_ids`` value suppress each other.

    Returns the int64 indices of kept detections in the order they were kept.
    """
    if metric not in MATCH_METRICS:
        raise ValueError(f"metric must be one of {MATCH_METRICS}, got {metric!r}")
    if sorter not in SORTERS:
        raise ValueError(f"sorter must be one of {SORTERS}, got {sorter!r}")
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not (math.isfinite(thr) and 0.0 <= thr <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")

    g = _as_geom_array(geoms)
    n = len(g)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(s) != n:
        raise ValueError(f"scores has length {len(s)}, expected {n} (one per geometry)")
    cls: np.ndarray | None = None
    if class_ids is not None:
        cls = np.asarray(class_ids).ravel()
        if len(cls) != n:
            raise ValueError(f"class_ids has length {len(cls)}, expected {n} (one per geometry)")
    if not class_agnostic and cls is None:
        raise ValueError("class_ids is required when class_agnostic=False")
    if n == 0:
        return np.empty(0, dtype=np.int64)

    g = _safe_geoms(g)
    order = sort_order(s, _areas(g) if sorter == "intelligent" else np.zeros(n), sorter, demote)

    # Per-class mode: cross-class pairs are dropped before any intersection.
    i, j, value = pair_overlaps(g, metric, groups=None if class_agnostic else cls)
    hit = value > thr
    i, j = i[hit], j[hit]

    # Symmetric CSR adjacency of "would suppress each other" pairs.
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    by_src = np.argsort(src, kind="stable")
    nbrs = dst[by_src]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])

    # Greedy pass: a neighbour that was kept earlier would already have
    # suppressed the current index, so marking neighbours is always safe.
    suppressed = np.zeros(n, dtype=bool)
    kept: list[int] = []
    for k in order.tolist():
        if suppressed[k]:
            continue
        kept.append(k)
        lo, hi = indptr[k], indptr[k + 1]
        if hi > lo:
            suppressed[nbrs[lo:hi]] = True
    return np.asarray(kept, dtype=np.int64)
