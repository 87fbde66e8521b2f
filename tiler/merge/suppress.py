"""Greedy non-maximum suppression: of detections that overlap above a threshold, keep the best one.

Overlaps are measured on the *real* geometries (axis-aligned boxes, rotated boxes, or arbitrary
segmentation polygons as shapely objects), never on their bounding boxes: two thin diagonal boxes can
have heavily overlapping bounding boxes while the boxes themselves barely touch.

Scaling: the pairs that suppress each other come from `overlaps.pairs_above` (candidates whose bounding boxes
meet, `box_pairs`; the numpy overlap bounds; GEOS only for pairs the bounds cannot decide; no n x n matrix), and
the greedy pass keeps detections in vectorised rounds over the pairs (`greedy_keep`), O(pairs) per round.

Pure module: numpy and shapely >= 2 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..geometry import geometry_array
from .overlaps import _areas, _check_metric, _check_threshold, _safe_geoms, pairs_above

__all__ = ["SORTERS", "sort_order", "nms", "greedy_keep"]

SORTERS: tuple[str, ...] = ("score", "intelligent")

# Tolerance used when binning scores into confidence bins: scores often arrive as float32 (0.7 in float32
# is 0.69999998...), which must land in bin 7 of 10.
_BIN_EPS = 1e-6


def sort_order(
    scores: Sequence[float] | np.ndarray,
    areas: Sequence[float] | np.ndarray,
    sorter: str = "score",
    demote: np.ndarray | None = None,
    bins: int = 10,
) -> np.ndarray:
    """Processing order for greedy NMS (int64 indices, best first).

    ``demote`` (optional bool per detection) puts flagged detections after all
    others, whatever their score: used for detections cut by an inner tile edge,
    so the neighbouring tile's whole view of the object wins the merge. It may also
    be an integer rank tier (lower tiers first, then the order below within a tier).

    ``"score"``: descending score, ties by ascending index.
    ``"intelligent"`` (after patched_yolo_infer's intelligent_sorter): descending
    confidence bin ``floor(score * bins)``, then descending area, then descending
    score, then ascending index. Preferring the largest polygon among similarly
    confident ones keeps the whole object rather than a fragment cut at a tile
    edge. Unlike patched_yolo_infer (whose bins are closed at the top, so a score of
    exactly 0.6 falls into the bin below), bins are closed at the bottom.
    """
    if sorter not in SORTERS:
        raise ValueError(f"sorter must be one of {SORTERS}, got {sorter!r}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    idx = np.arange(len(s), dtype=np.int64)
    primary: tuple[np.ndarray, ...] = ()
    if demote is not None:
        d = np.asarray(demote).ravel().astype(np.int64)
        if len(d) != len(s):
            raise ValueError(f"demote has length {len(d)}, expected {len(s)} (same as scores)")
        primary = (d,)
    if sorter == "score":
        # lexsort: last key is primary; idx as first key makes ties explicit.
        return np.lexsort((idx, -s) + primary).astype(np.int64, copy=False)
    a = np.nan_to_num(np.asarray(areas, dtype=np.float64).ravel(), nan=0.0)
    if len(a) != len(s):
        raise ValueError(f"areas has length {len(a)}, expected {len(s)} (same as scores)")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    binned = np.floor(s * float(bins) + _BIN_EPS)
    return np.lexsort((idx, -s, -a, -binned) + primary).astype(np.int64, copy=False)


def nms(
    geoms: Sequence[Any] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    class_ids: Sequence[Any] | np.ndarray | None = None,
    threshold: float = 0.5,
    metric: str = "ios",
    class_agnostic: bool = True,
    sorter: str = "score",
    demote: np.ndarray | None = None,
    bins: int = 10,
) -> np.ndarray:
    """Greedy non-maximum suppression on real geometries.

    Detections are visited in ``sort_order(scores, areas, sorter, demote, bins)``; each one not
    yet suppressed is kept and suppresses every other detection whose overlap
    ``metric`` with it is ``> threshold``. With ``class_agnostic=False`` only
    detections of the same ``class_ids`` value suppress each other.

    Returns the int64 indices of kept detections in the order they were kept.
    """
    _check_metric(metric)
    if sorter not in SORTERS:
        raise ValueError(f"sorter must be one of {SORTERS}, got {sorter!r}")
    thr = _check_threshold(threshold)

    g = geometry_array(geoms)
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

    areas = _areas(_safe_geoms(g)) if sorter == "intelligent" else np.zeros(n)
    order = sort_order(s, areas, sorter, demote, bins)

    # Per-class mode: cross-class pairs are dropped before any intersection.
    i, j = pairs_above(g, metric, thr, groups=None if class_agnostic else cls)

    return greedy_keep(order, i, j)


# Rounds of the vectorised pass before the rest is walked one by one (see greedy_keep): real merges settle in a
# handful; a long chain of overlaps with monotone scores settles one link per round, and is walked instead.
_ROUNDS = 16


def greedy_keep(order: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The detections greedy NMS keeps, in the order it keeps them: visited in `order` (best first), each one
    not yet suppressed is kept and suppresses its neighbours in the pair list (i, j).

    Vectorised in rounds over the pairs, with the same result: a detection better ranked than every undecided
    neighbour is kept by the sequential pass too (each better neighbour was decided, and a kept one would
    have suppressed it), so every such detection is kept at once, and their neighbours suppressed. What is
    still undecided after `_ROUNDS` rounds (long chains) is walked in order, as the sequential pass would."""
    n = len(order)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    # each pair once per direction, from the worse-ranked end to the better one
    i_worse = rank[i] > rank[j]
    worse, better = np.where(i_worse, i, j), np.where(i_worse, j, i)
    undecided = np.ones(n, dtype=bool)
    kept = np.zeros(n, dtype=bool)
    for _ in range(_ROUNDS):
        if not len(worse):
            break
        # keep every undecided detection with no undecided better-ranked neighbour
        blocked = np.zeros(n, dtype=bool)
        blocked[worse] = True
        keep = undecided & ~blocked
        kept |= keep
        undecided &= ~keep
        undecided[worse[keep[better]]] = False  # suppressed by a detection just kept
        live = undecided[worse] & undecided[better]
        worse, better = worse[live], better[live]
    if len(worse):  # long chains: walk what is left in order over its own pairs
        _walk(order[undecided[order]], worse, better, kept)
    else:
        kept |= undecided  # no pair left: every undecided detection is kept
    return order[kept[order]]


def _walk(order: np.ndarray, worse: np.ndarray, better: np.ndarray, kept: np.ndarray) -> None:
    """The sequential greedy pass over the undecided detections in `order`, with the pairs among them, marking
    the ones it keeps in `kept`."""
    n = len(kept)
    src = np.concatenate([worse, better])
    dst = np.concatenate([better, worse])
    nbrs = dst[np.argsort(src, kind="stable")]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    suppressed = np.zeros(n, dtype=bool)
    for k in order.tolist():
        if suppressed[k]:
            continue
        kept[k] = True
        lo, hi = indptr[k], indptr[k + 1]
        if hi > lo:
            suppressed[nbrs[lo:hi]] = True
