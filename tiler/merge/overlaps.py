"""Candidate pairs and overlap metrics between detections, shared by every merge method.

Candidate pairs come from an STRtree query, so nothing here is n x n. The overlap of a pair is either
computed exactly by GEOS (`pair_overlaps`, and `decide_overlaps` where it must) or bracketed in numpy
from support numbers (`support_numbers`, `intersection_area_bounds`).

Why the bracket: GEOS overlay is slow on this project's CPU: 35 us per pair of ~10-vertex polygons, 72 us
for two noisy 16-gons that are near copies of each other, which is exactly what duplicate detections are.
A merge of a million detections meets ~600 000 such pairs. But a merge only needs to know whether each
pair's overlap is above a threshold. Each geometry gets its support numbers in K = 8 directions (the
largest projection of its vertices on each of 16 unit normals, i.e. its circumscribed 16-gon, a "k-DOP");
for a pair, in O(K) numpy work:

* upper bound: the intersection lies inside the overlap of the two circumscribed rectangles in each of
  K/2 rotated frames;
* lower bound: area(A & B) = area(A) + area(B) - area(A | B), and A | B lies inside the circumscribed
  16-gon of both vertex sets, whose area follows from the elementwise maximum of the two support vectors.

For near-duplicates of convex-ish shapes the lower bound already clears any sensible threshold; for
neighbours that only touch, the upper bound is far below it. Only pairs the bracket cannot decide go to
GEOS: in the merge benchmark (1 M detections) 394 of 731 000 pairs for linking and 529 of 432 000 for
the duplicate check. The bracket is rigorous (the bounds hold exactly, and a margin covers rounding),
so decisions are those of the exact metric; tests/test_merge_union.py checks the bounds against GEOS
on random shapes, tests/test_merge.py checks `nms` (which takes its pairs from `pairs_above`) against a
brute force. `pair_overlaps`, whose output is the values themselves, still computes every pair in GEOS.

Pure module: numpy and shapely >= 2 only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
from shapely import lib as _shapely_lib

from ..geometry import polygonal_parts

__all__ = [
    "MATCH_METRICS", "candidate_pairs", "pair_overlaps", "metric_from_intersection", "clip_to_boxes",
    "exact_intersection_areas", "polygonal_parts", "support_numbers", "intersection_area_bounds",
    "decide_overlaps", "pairs_above",
]

MATCH_METRICS: tuple[str, ...] = ("ios", "iou")
"""ios = intersection / smaller area (catches a partial box cut by a tile edge
inside the full box); iou = intersection / union (classic)."""

# Support directions: K normals over [0, pi), i.e. 2K facet normals around the circle. K must be even
# (the upper bound pairs direction k with its perpendicular k + K/2). K = 8 gives a circumscribed 16-gon
# whose area exceeds the convex hull's by 2.6 % for a disc, more for shapes with sharp corners.
_K = 8
_FACET_ANGLES = np.arange(2 * _K) * np.pi / _K
_NORMALS = np.stack([np.cos(_FACET_ANGLES), np.sin(_FACET_ANGLES)], axis=1)  # (2K, 2)
_COS_A, _SIN_A = np.cos(np.pi / _K), np.sin(np.pi / _K)

# Bounds are compared to the threshold with this margin (in metric units): a bound within it of the
# threshold decides nothing and the pair goes to GEOS, so float rounding in either can never flip a decision.
_DECIDE_EPS = 1e-7

# Vertices per chunk when reading geometries, pairs per chunk when bounding their overlaps: small
# temporaries (see support_numbers).
_CHUNK_COORDS = 1 << 15
_CHUNK_PAIRS = 1 << 15


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

    The tree query is the only place candidate pairs are generated: cost is proportional to the number
    of real neighbours, not n^2.
    """
    if tree is None:
        tree = shapely.STRtree(geoms)
    src, dst = tree.query(geoms, predicate=predicate)
    keep = src < dst  # each unordered pair once, no self pairs
    return src[keep].astype(np.int64, copy=False), dst[keep].astype(np.int64, copy=False)


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
    geoms = _safe_geoms(_as_geom_array(geoms))
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


# --------------------------------------------------------------------------- bounds


def support_numbers(geoms: np.ndarray, *, simple: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """(n, 2K) float64 support numbers: column m is the largest ``u_m . p`` over the geometry's vertices
    ``p``, with ``u_m`` the unit normal at angle ``m * pi / K``. Together they describe the smallest
    circumscribed polygon with those facet normals (a k-DOP). NaN rows for missing or empty geometries.

    With ``simple=True`` also returns, per geometry, whether it is a Polygon whose ring is radially
    monotone around its vertex centroid (see `_star_rings`), hence simple and valid: those skip GEOS's
    validity check (`_repair`), which costs ~1.7 us per 15-gon here.

    Geometries are taken in runs of equal vertex count, so that each run is a dense (m, k, 2) array
    (no segmented reductions), a few thousand at a time so that every temporary array stays small: on
    this project's VM first-touch page faults cost 0.6-2.7 ms per MB, more than the arithmetic on a
    large fresh array (projecting 11 M vertices at once took 4 s).
    """
    geoms = _as_geom_array(geoms)
    n = len(geoms)
    out = np.full((n, 2 * _K), np.nan)
    ok = np.zeros(n, dtype=bool)
    if n == 0:
        return (out, ok) if simple else out
    half = _NORMALS[:_K].T  # (2, K): the other K facets are their opposites
    counts = shapely.get_num_coordinates(geoms)
    polygon = shapely.get_type_id(geoms) == 3 if simple else None
    by_count = np.argsort(counts, kind="stable")
    c_sorted = counts[by_count]
    cuts = np.r_[0, np.flatnonzero(np.diff(c_sorted)) + 1, n]
    for a, b in zip(cuts[:-1], cuts[1:]):
        k = int(c_sorted[a])
        if k == 0:
            continue  # missing or empty: NaN
        step = max(1, _CHUNK_COORDS // k)
        for lo in range(a, b, step):
            sel = by_count[lo:min(b, lo + step)]
            xy = shapely.get_coordinates(geoms[sel]).reshape(len(sel), k, 2)
            # vertex-major (k, m) planes: every reduction below is elementwise over m-long rows
            x, y = np.ascontiguousarray(xy[..., 0].T), np.ascontiguousarray(xy[..., 1].T)
            block = np.empty((len(sel), 2 * _K))
            for d in range(_K):
                proj = x * half[0, d] + y * half[1, d]
                proj.max(axis=0, out=block[:, d])
                proj.min(axis=0, out=block[:, _K + d])
            block[:, _K:] *= -1.0
            out[sel] = block
            if simple:
                ok[sel] = polygon[sel] & _star_rings(x, y)
    return (out, ok) if simple else out


def _star_rings(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """For m closed rings of k points each, as (k, m) coordinate planes (the last point = the first):
    True where, seen from the ring's vertex centroid c, every step from one vertex to the next turns
    the same way by less than pi (cross products of consecutive rays all of one sign), through exactly
    one turn in total (the ray passes angle 0 once). Every edge then lies in its own angular sector
    around c, so no two edges cross: the ring is simple (a star-shaped polygon). Convex rings, boxes and
    rotated boxes pass; anything else is left to GEOS, and a relative margin keeps float rounding on the
    safe side, so nothing invalid ever passes.

    Geometries with several rings (holes, multipolygons) arrive here as their rings back to back and
    never pass: each closed ring winds around c a whole number of times, and a ring that does not wind
    around it turns both ways.
    """
    k, m = x.shape
    if k < 4:
        return np.zeros(m, dtype=bool)
    rx, ry = x - x.mean(axis=0), y - y.mean(axis=0)
    r2 = rx * rx + ry * ry
    cross = rx[:-1] * ry[1:] - ry[:-1] * rx[1:]
    margin = 1e-12 * (r2[:-1] + r2[1:])
    upper = (ry > 0) | ((ry == 0) & (rx > 0))  # angle in [0, pi)
    up = np.count_nonzero(~upper[:-1] & upper[1:], axis=0)  # passes angle 0 counterclockwise
    down = np.count_nonzero(upper[:-1] & ~upper[1:], axis=0)  # ... clockwise
    ccw = np.all(cross > margin, axis=0) & (up == 1)
    cw = np.all(cross < -margin, axis=0) & (down == 1)
    return (ccw | cw) & (r2.min(axis=0) > 0)


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


def _dop_area(h: np.ndarray) -> np.ndarray:
    """Area of the polygon with facet normals ``_NORMALS`` and support numbers ``h`` (..., 2K), when every
    facet touches the shape (true for the support numbers of a point set): edge m has length
    ``(h[m-1] + h[m+1] - 2 h[m] cos a) / sin a`` with ``a = pi / K``, and area = sum(h * length) / 2."""
    length = (np.roll(h, 1, axis=-1) + np.roll(h, -1, axis=-1) - 2.0 * _COS_A * h) / _SIN_A
    return 0.5 * np.einsum("...m,...m->...", h, length)


def intersection_area_bounds(area_a: np.ndarray, area_b: np.ndarray, sup_a: np.ndarray, sup_b: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of ``area(A & B)`` from the areas and ``support_numbers`` of A and B.

    Upper: ``min(area_a, area_b)`` and, in each of K/2 frames rotated by ``k * pi / K``, the overlap of the
    two circumscribed rectangles. Lower: ``area_a + area_b - area(circumscribed 16-gon of A | B)``, whose
    support numbers are the elementwise maximum. Tight for near copies of convex shapes; loose for
    concave ones (the lower bound loses their pockets), which then go to GEOS.
    """
    area_a = np.asarray(area_a, dtype=np.float64)
    area_b = np.asarray(area_b, dtype=np.float64)
    # Interval overlap on every direction: [-h[m + K], h[m]] is the shape's extent along u_m.
    ext = np.minimum(sup_a[:, :_K], sup_b[:, :_K]) + np.minimum(sup_a[:, _K:], sup_b[:, _K:])
    np.maximum(ext, 0.0, out=ext)
    upper = np.min(ext[:, : _K // 2] * ext[:, _K // 2:], axis=1)
    upper = np.minimum(upper, np.minimum(area_a, area_b))
    hull = np.maximum(sup_a, sup_b)
    # Move the origin to the union's lower-left corner: support numbers then stay at the scale of the
    # object, not of the raster, and the area formula keeps full precision.
    x0, y0 = -hull[:, _K], -hull[:, _K + _K // 2]
    hull = hull - (x0[:, None] * _NORMALS[:, 0] + y0[:, None] * _NORMALS[:, 1])
    lower = area_a + area_b - _dop_area(hull)
    np.maximum(lower, 0.0, out=lower)
    np.minimum(lower, upper, out=lower)
    bad = ~np.isfinite(upper) | ~np.isfinite(lower)  # a missing or empty side: no overlap
    upper[bad] = 0.0
    lower[bad] = 0.0
    return lower, upper


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
    geoms = _as_geom_array(geoms)
    groups = _check_groups(groups, len(geoms))
    empty = np.empty(0, dtype=np.int64)
    if len(geoms) == 0:
        return empty, empty.copy()
    sup, simple = support_numbers(geoms, simple=True)  # unrepaired vertices still circumscribe
    geoms = _repair(geoms, simple)
    i, j = candidate_pairs(geoms, predicate=None)
    keep = np.ones(len(i), dtype=bool) if groups is None else groups[i] == groups[j]
    bounds = shapely.bounds(geoms)
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
