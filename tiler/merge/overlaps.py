"""Candidate pairs and overlap metrics between detections, shared by every merge method.

Candidate pairs come from an STRtree query, or for bounding boxes from `box_pairs` (a sweep in numpy), so
nothing here is n x n. The overlap of a pair is either
computed exactly by GEOS (`pair_overlaps`, and `decide_overlaps` where it must) or bracketed in numpy
from the geometries' k-DOPs (`dop.py`: GEOS overlay costs 35-72 us per pair here, and a merge only needs to
know whether each pair's overlap is above a threshold). Only pairs the bracket cannot decide go to GEOS: in
the merge benchmark (1 M detections) 394 of 731 000 pairs for linking and 529 of 432 000 for the duplicate
check. The bracket is rigorous (the bounds hold exactly, and a margin covers rounding), so decisions are
those of the exact metric; tests/test_merge.py checks `nms` (which takes its pairs from `pairs_above`)
against a brute force. `pair_overlaps`, whose output is the values themselves, still computes every pair
in GEOS.

Pure module: numpy and shapely >= 2 only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
from shapely import lib as _shapely_lib

from ..geometry import geometry_array, polygonal_parts
from .dop import intersection_area_bounds, support_numbers

__all__ = [
    "MATCH_METRICS", "box_pairs", "candidate_pairs", "pair_overlaps", "metric_from_intersection", "clip_to_boxes",
    "exact_intersection_areas", "polygonal_parts", "decide_overlaps", "pairs_above",
]

MATCH_METRICS: tuple[str, ...] = ("ios", "iou")
"""ios = intersection / smaller area (catches a partial box cut by a tile edge
inside the full box); iou = intersection / union (classic)."""

# Bounds are compared to the threshold with this margin (in metric units): a bound within it of the
# threshold decides nothing and the pair goes to GEOS, so float rounding in either can never flip a decision.
_DECIDE_EPS = 1e-7

# Pairs per chunk when bounding their overlaps: small temporaries (see dop.support_numbers).
_CHUNK_PAIRS = 1 << 15


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


def _check_metric(metric: str) -> None:
    if metric not in MATCH_METRICS:
        raise ValueError(f"metric must be one of {MATCH_METRICS}, got {metric!r}")


def _check_threshold(threshold: Any) -> float:
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not (math.isfinite(thr) and 0.0 <= thr <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return thr


def candidate_pairs(
    geoms: np.ndarray,
    *,
    predicate: str | None = "intersects",
    tree: shapely.STRtree | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair ``(i, j)``, ``i < j`` (int64), whose geometries intersect (``predicate``)
    or, with ``predicate=None``, whose bounding boxes intersect (cheaper: no GEOS predicate at all).

    Pairs come from an STRtree query (or, for bounding boxes without a given tree, `box_pairs` on the
    geometries' bounds), so the cost is proportional to the number of real neighbours, not n^2.
    """
    if predicate is None and tree is None:
        return box_pairs(shapely.bounds(geoms))  # NaN bounds (empty or missing geometries) pair with none
    return _tree_pairs(geoms, predicate, tree)


def _tree_pairs(geoms: np.ndarray, predicate: str | None, tree: shapely.STRtree | None
                ) -> tuple[np.ndarray, np.ndarray]:
    if tree is None:
        tree = shapely.STRtree(geoms)
    src, dst = tree.query(geoms, predicate=predicate)
    keep = src < dst  # each unordered pair once, no self pairs
    return src[keep].astype(np.int64, copy=False), dst[keep].astype(np.int64, copy=False)


# A sweep that would list more candidate pairs than `_SWEEP_PAIRS_PER_BOX` per box hands the boxes to an STRtree
# instead (boxes piled on one another make any sweep quadratic; the tree's cost follows its output). Pairs are
# listed in chunks of about `_SWEEP_CHUNK`, so the temporaries stay small whatever the number of boxes.
_SWEEP_PAIRS_PER_BOX = 64
_SWEEP_CHUNK = 1 << 21


def box_pairs(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair ``(i, j)``, ``i < j`` (int64), of axis-aligned boxes ``[x0, y0, x1, y1]`` (n, 4)
    whose closed extents intersect (touching counts; a box's sides may come in either order): the pairs an
    STRtree of ``shapely.box(*bounds.T)`` gives, in another order; a box with a non-finite side pairs with none.

    Strips and a sweep, in numpy, with exact comparisons only: the x axis is cut into strips about two median
    box widths wide, each box listed in every strip it spans; within a strip, boxes sorted by y0 are paired with
    those whose y0 is at most their y1, and a pair is kept where the x extents meet, by the one strip that holds
    the left edge of their common part. On dense patches' NMS candidates (150 000 pairs among 6 500 boxes) it
    lists 1.7 pairs per pair found, and takes about 0.6x the time of the shapely boxes and tree query."""
    bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    lo, hi = np.minimum(bounds[:, :2], bounds[:, 2:]), np.maximum(bounds[:, :2], bounds[:, 2:])
    ok = np.flatnonzero(np.isfinite(lo).all(axis=1) & np.isfinite(hi).all(axis=1))
    empty = np.empty(0, dtype=np.int64)
    if len(ok) < 2:
        return empty, empty.copy()
    (x0, y0), (x1, y1) = lo[ok].T, hi[ok].T
    n, left = len(ok), x0.min()
    width = max(2.0 * float(np.median(x1 - x0)), float(x1.max() - left) / 4096, 1e-9)
    while True:  # a few wide boxes: wider strips, so that no box is listed too often
        first_strip = np.floor((x0 - left) / width).astype(np.int64)
        strips = np.floor((x1 - left) / width).astype(np.int64) - first_strip + 1
        if strips.sum() <= 4 * n:
            break
        width *= 2
    # entries (strip, box), sorted by strip, then by the rank of the box's y0 among all y0s: integer keys, exact
    box = np.repeat(np.arange(n), strips)
    strip = first_strip[box] + np.arange(len(box)) - np.repeat(np.cumsum(strips) - strips, strips)
    sorted_y0 = np.sort(y0)
    key = strip * (n + 1) + np.searchsorted(sorted_y0, y0[box], side="left")
    order = np.argsort(key, kind="stable")
    key, box, strip = key[order], box[order], strip[order]
    # each entry pairs with the later entries of its strip whose y0 is at most its y1
    m = len(key)
    after = np.arange(1, m + 1)
    stop = np.searchsorted(key, strip * (n + 1) + np.searchsorted(sorted_y0, y1[box], side="right"), side="left")
    counts = np.maximum(stop - after, 0)
    ends = np.cumsum(counts)
    if ends[-1] == 0:
        return empty, empty.copy()
    if ends[-1] > _SWEEP_PAIRS_PER_BOX * n:
        i, j = _tree_pairs(shapely.box(x0, y0, x1, y1), None, None)
        return ok[i], ok[j]
    ex0, ex1 = x0[box], x1[box]
    # the strip that holds the left edge of a pair's common part is the first strip of one of the two boxes
    leads = strip == first_strip[box]
    cuts = np.unique(np.searchsorted(ends, np.arange(0, ends[-1], _SWEEP_CHUNK), side="right"))
    found_i, found_j = [], []
    for lo_e, hi_e in zip(cuts.tolist(), [*cuts[1:].tolist(), m]):
        c = counts[lo_e:hi_e]
        total = int(c.sum())
        # pairs of entries (e, f), e before f; 32-bit indices halve the memory traffic of the largest arrays
        e = np.repeat(np.arange(lo_e, hi_e, dtype=np.int32), c)
        f = np.arange(total, dtype=np.int32) - np.repeat((np.cumsum(c) - c - after[lo_e:hi_e]).astype(np.int32), c)
        meet = (ex0[f] <= ex1[e]) & (ex0[e] <= ex1[f]) & (leads[e] | leads[f])
        found_i.append(box[e[meet]])
        found_j.append(box[f[meet]])
    i, j = ok[np.concatenate(found_i)], ok[np.concatenate(found_j)]
    lo_ij = np.minimum(i, j)
    return lo_ij, i + j - lo_ij


def metric_from_intersection(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray, metric: str
                             ) -> np.ndarray:
    """ios or iou from intersection and the two areas, in [0, 1]; 0 where the denominator is 0."""
    inter = np.asarray(inter, dtype=np.float64)
    denom = np.minimum(area_a, area_b) if metric == "ios" else area_a + area_b - inter
    value = np.zeros(len(inter), dtype=np.float64)
    # Zero-area (degenerate/empty) geometries get metric 0 instead of 0/0.
    ok = denom > 0
    value[ok] = inter[ok] / denom[ok]
    # Floating-point noise can push a contained box's ios just above 1.
    np.clip(value, 0.0, 1.0, out=value)
    return value


def _check_groups(groups, n: int) -> np.ndarray | None:
    """One group label per geometry, or None."""
    if groups is None:
        return None
    groups = np.asarray(groups).ravel()
    if len(groups) != n:
        raise ValueError(f"groups has length {len(groups)}, expected {n}")
    return groups


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
    _check_metric(metric)
    geoms = _safe_geoms(geometry_array(geoms))
    groups = _check_groups(groups, len(geoms))
    empty_i = np.empty(0, dtype=np.int64)
    if len(geoms) == 0:
        return empty_i, empty_i.copy(), np.empty(0, dtype=np.float64)

    i, j = candidate_pairs(geoms)
    if groups is not None:
        keep = groups[i] == groups[j]
        i, j = i[keep], j[keep]
    if len(i) == 0:
        return i, j, np.empty(0, dtype=np.float64)

    areas = _areas(geoms)
    inter = exact_intersection_areas(geoms[i], geoms[j])
    return i, j, metric_from_intersection(inter, areas[i], areas[j], metric)


# --------------------------------------------------------------------------- geometry helpers


def clip_to_boxes(geoms: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Each geometry clipped to its own axis-aligned box ``[x0, y0, x1, y1]`` (GEOS rectangle clipping,
    ~3 us for a 16-gon, against ~70 us for a general intersection). The result may be "dirty" (rings
    touching along the box edge), which is harmless for areas and vertex extents, the only uses here."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    try:
        # shapely.clip_by_rect accepts scalar rectangles only; its ufunc broadcasts arrays as well.
        return _shapely_lib.clip_by_rect(geoms, boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])
    except (AttributeError, TypeError):  # pragma: no cover - other shapely builds
        return shapely.intersection(geoms, shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]))


def exact_intersection_areas(ga: np.ndarray, gb: np.ndarray, zones: np.ndarray | None = None) -> np.ndarray:
    """``area(ga & gb)``, or ``area(ga & gb & zone)`` with ``zones`` (m, 4) boxes, by GEOS; float64, 0 for
    missing or empty geometries. Inputs should be valid (see ``_safe_geoms``). Should GEOS still fail on
    a pair, that pair is retried repaired and then snapped to ever coarser grids (1e-6, 1e-3 px)."""
    if len(ga) == 0:
        return np.zeros(0, dtype=np.float64)
    try:
        inter = shapely.intersection(ga, gb)
    except shapely.errors.GEOSException:
        inter = np.empty(len(ga), dtype=object)
        for k, (a, b) in enumerate(zip(ga, gb)):
            inter[k] = _robust_intersection(a, b)
    if zones is not None:
        inter = clip_to_boxes(inter, zones)
    return np.nan_to_num(np.asarray(shapely.area(inter), dtype=np.float64), nan=0.0)


def _robust_intersection(a: Any, b: Any) -> Any:
    try:
        return shapely.intersection(a, b)
    except shapely.errors.GEOSException:
        pass
    a, b = polygonal_parts(shapely.make_valid(np.array([a, b], dtype=object)))
    for grid in (None, 1e-6, 1e-3):
        try:
            return shapely.intersection(a, b, grid_size=grid)
        except shapely.errors.GEOSException:
            continue
    return shapely.Polygon()  # pragma: no cover - GEOS gave up on a pathological pair


def _repair(geoms: np.ndarray, known_valid: np.ndarray | None = None) -> np.ndarray:
    """``_safe_geoms``, keeping only the polygonal part of what it repairs (`polygonal_parts`), and
    skipping GEOS's validity check where ``known_valid`` already says so. Returns ``geoms`` itself
    when nothing needed a repair."""
    if known_valid is None:
        known_valid = np.zeros(len(geoms), dtype=bool)
    check = np.flatnonzero(~known_valid)
    if len(check) == 0:
        return geoms
    sub = geoms[check]
    fixed = _safe_geoms(sub)
    if fixed is sub:  # nothing was invalid
        return geoms
    fixed = polygonal_parts(fixed)
    out = geoms.copy()
    out[check] = fixed
    return out


def decide_overlaps(
    ga: np.ndarray,
    gb: np.ndarray,
    area_a: np.ndarray,
    area_b: np.ndarray,
    sup_a: np.ndarray,
    sup_b: np.ndarray,
    metric: str,
    threshold: float,
    zones: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Which pairs have ``metric > threshold``, computing GEOS intersections only where the numpy bounds
    cannot tell.

    ``ga``/``gb`` are the pair's geometries (valid), ``area_*``/``sup_*`` the areas and support numbers of
    the parts that count (with ``zones``: of ``ga & zone`` and ``gb & zone``; the exact intersection is
    then clipped to the zone too). Returns ``(above, value)``: bool, and float64 with the exact metric
    where GEOS was asked and NaN where the bounds decided alone.
    """
    lower, upper = intersection_area_bounds(area_a, area_b, sup_a, sup_b)
    v_lo = metric_from_intersection(lower, area_a, area_b, metric)
    v_hi = metric_from_intersection(upper, area_a, area_b, metric)
    sure = v_lo > threshold + _DECIDE_EPS
    never = v_hi < threshold - _DECIDE_EPS
    value = np.full(len(lower), np.nan)
    ask = np.flatnonzero(~sure & ~never)
    if len(ask):
        inter = exact_intersection_areas(ga[ask], gb[ask], None if zones is None else zones[ask])
        value[ask] = metric_from_intersection(inter, area_a[ask], area_b[ask], metric)
    above = sure.copy()
    above[ask] = value[ask] > threshold
    return above, value


def pairs_above(
    geoms: np.ndarray,
    metric: str,
    threshold: float,
    *,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(i, j)``, ``i < j`` (int64), whose overlap ``metric`` is ``> threshold``: the pairs of
    `pair_overlaps` whose value is above the threshold, found without intersecting most of them
    (`decide_overlaps`). With ``groups``, only pairs with equal labels.

    ``geoms`` need not be valid: they are repaired first (`_repair`), as `pair_overlaps` does.
    """
    _check_metric(metric)
    threshold = _check_threshold(threshold)
    geoms = geometry_array(geoms)
    groups = _check_groups(groups, len(geoms))
    empty = np.empty(0, dtype=np.int64)
    if len(geoms) == 0:
        return empty, empty.copy()
    sup, simple = support_numbers(geoms, simple=True)  # unrepaired vertices still circumscribe
    geoms = _repair(geoms, simple)
    bounds = shapely.bounds(geoms)  # NaN for empty or missing geometries: no pairs
    i, j = box_pairs(bounds)
    keep = np.ones(len(i), dtype=bool) if groups is None else groups[i] == groups[j]
    # boxes that only touch (or a missing side, NaN) have no common area: metric 0, never above
    keep &= np.all(np.minimum(bounds[i, 2:], bounds[j, 2:]) > np.maximum(bounds[i, :2], bounds[j, :2]), axis=1)
    i, j = i[keep], j[keep]
    areas = _areas(geoms)
    above = np.zeros(len(i), dtype=bool)
    for lo in range(0, len(i), _CHUNK_PAIRS):
        a, b = i[lo:lo + _CHUNK_PAIRS], j[lo:lo + _CHUNK_PAIRS]
        above[lo:lo + _CHUNK_PAIRS] = decide_overlaps(geoms[a], geoms[b], areas[a], areas[b], sup[a], sup[b],
                                                      metric, threshold)[0]
    return i[above], j[above]
