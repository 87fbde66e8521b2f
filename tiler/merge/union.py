"""Union merge: join the fragments of one object that different windows saw.

Suppression keeps one detection per object, which is right while objects fit in a window. An object
larger than a window is only ever seen in pieces: every window returns the part inside it, and no piece
suppresses another (they overlap only where windows overlap). This module groups those pieces;
`groups.py` returns one geometry per group.

Linking. Two detections are linked when they come from different windows (of the same class unless
``class_agnostic``) and overlap above ``threshold`` *inside the zone both windows saw*, Z = the
intersection of the two window boxes: ios = area(a & b & Z) / min(area(a & Z), area(b & Z)), iou =
area(a & b & Z) / area((a | b) & Z), and the smaller of area(a & Z), area(b & Z) is at least
``MIN_ZONE_RATIO`` of the larger. Two views of one object see the same part of it inside Z, so ios is
~1 however large the object is and both parts are about the same size; two objects that merely touch
overlap ~0, and a sliver that one of them pokes into Z is far smaller than the other's part. With
``within_window`` it is the other way round: only detections of the *same* window are linked (Z is
that window), for the pieces of one object a model outlines as several overlapping instances.

Grouping without welding. Links are taken in decreasing overlap (ties by ascending (i, j)), and two
groups join only if that puts no two detections of one window together that are not linked to each
other: the model kept them apart, as distinct objects. Across windows (where no two detections of one
window are linked) a group holds at most one detection per window. So if window A saw two touching
buildings as two detections and window B saw them as one blob, the blob joins one of them (the better
overlap) and the other building stays separate, instead of all three welding into one. A 2000 px object
seen by 8 windows in a row still becomes one group through its chain of real links. Within one window,
a group is a set of detections each linked to every other: a blob that one window outlined around two
boats it also outlined apart (each inside the blob, ios 1, but apart from each other) joins one of them
at most, and then only as its duplicate, instead of welding the two.
The order is by iou inside the zone, whichever metric decides the links: under ios a blob that contains
a whole house scores 1.0, above the house's true duplicate from a third window (~0.95), and would take
the house away from it, welding the blob's two houses across windows. By iou the duplicate (~0.9)
comes before the blob (~0.5). In the merge benchmark (995 000 detections, 1854 of them blobs of two
houses) ordering by ios left 156 groups holding two houses and 156 houses split over two groups;
ordering by iou, none.

Speed. Candidate pairs come from an STRtree over bounding boxes; the overlap inside Z is decided by the
numpy bounds of `overlaps.decide_overlaps` and GEOS only where they cannot tell. Connected components of
the links are labelled in numpy; a component that holds each window at most once is exactly one group
(no join in it can be refused), and so is one whose detections are all of one window and all linked to
each other; the ordered union-find runs only on the rare other components, with small-into-large merging
of window sets (and, within a window, a check that every pair across the two groups is linked).

Output. ``union_groups`` returns groups in CSR form, members best first; `groups.py` turns them into one
geometry, score and class per object.

Pure module: numpy and shapely >= 2 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely

from ..geometry import geometry_array
from .dop import support_numbers
from .groups import per_detection
from .overlaps import (
    _CHUNK_PAIRS,
    _areas,
    _check_metric,
    _check_threshold,
    _repair,
    box_pairs,
    clip_to_boxes,
    decide_overlaps,
    exact_intersection_areas,
    metric_from_intersection,
)
from .suppress import sort_order

__all__ = ["MIN_ZONE_RATIO", "union_groups"]

MIN_ZONE_RATIO = 0.2
"""A link also needs the smaller of the two parts inside the zone to be at least this fraction of the
larger. Both windows see all of the zone, so two views of one object have about equal parts in it (in
the merge benchmark, ratio >= 0.83 for 99.9 % of them). Without this, a detection that pokes a sliver
into the zone (a noisy wall shared with the next building) has ios ~1 with that neighbour: 742 false links
in 86 000 benchmark detections, 0.3 % of groups welding two objects. Pairs below it are never links, and
are also never intersected. A model's blob of two or three touching objects (ratio 1/2, 1/3) still links
to each of the objects, for the no-welding rule to sort out."""


def union_groups(
    geoms: Sequence[Any] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    class_ids: Sequence[Any] | np.ndarray | None,
    windows: Sequence[int] | np.ndarray,
    window_boxes: np.ndarray,
    *,
    threshold: float = 0.5,
    metric: str = "ios",
    class_agnostic: bool = False,
    demote: np.ndarray | None = None,
    within_window: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Group the detections that are views of one object, as described in the module docstring.

    ``geoms`` (n,) shapely Polygons/MultiPolygons in global pixels; ``windows`` (n,) the id of the
    window that produced each; ``window_boxes`` (n, 4) float ``[x0, y0, x1, y1]`` of that window,
    clipped to the raster. ``demote`` (optional bool per detection) ranks flagged detections last, as in
    ``sort_order``. ``within_window`` links detections of the same window instead of different ones.

    Returns CSR groups ``(order, offsets)``, both int64: group g is ``order[offsets[g]:offsets[g + 1]]``,
    members best first by ``sort_order(scores, ..., "score", demote)``; every detection is in exactly
    one group, and groups are sorted by the rank of their best member.
    """
    _check_metric(metric)
    thr = _check_threshold(threshold)
    g = geometry_array(geoms)
    n = len(g)
    s = per_detection(scores, n, "scores", np.float64)
    win = per_detection(windows, n, "windows", np.int64)
    boxes = np.asarray(window_boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.shape != (n, 4):
        raise ValueError(f"window_boxes has shape {boxes.shape}, expected ({n}, 4)")
    cls = None if class_ids is None else per_detection(class_ids, n, "class_ids", None)
    if not class_agnostic and cls is None:
        raise ValueError("class_ids is required when class_agnostic=False")
    rank_order = sort_order(s, np.zeros(n), "score", demote)
    if n == 0:
        return np.empty(0, dtype=np.int64), np.zeros(1, dtype=np.int64)

    links = _links(g, win, boxes, None if class_agnostic else cls, metric, thr, within_window)
    label = _group_labels(n, win, links, within_window)
    return _csr(label, rank_order)


class _Links:
    """Pairs (a < b) whose overlap inside their zone is above the threshold, with what it takes to
    compute their exact overlap later: the zone, the area of each side inside it, the geometries."""

    def __init__(self, a, b, zone, area_a, area_b, geoms):
        self.a, self.b, self.zone, self.area_a, self.area_b = a, b, zone, area_a, area_b
        self.geoms = geoms  # all detections, repaired where they take part in a pair


def _zone_parts(geoms: np.ndarray, idx: np.ndarray, zone: np.ndarray, bounds: np.ndarray, areas: np.ndarray,
                sup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area and support numbers of ``geoms[idx] & zone``: the detection's own where it lies inside the
    zone (the common case: a small object in an overlap strip), else from its rectangle clip."""
    b = bounds[idx]
    inside = (b[:, 0] >= zone[:, 0]) & (b[:, 1] >= zone[:, 1]) & (b[:, 2] <= zone[:, 2]) & (b[:, 3] <= zone[:, 3])
    area, s = areas[idx], sup[idx]
    out = np.flatnonzero(~inside)
    if len(out):
        clipped = clip_to_boxes(geoms[idx[out]], zone[out])
        area[out] = _areas(clipped)
        s[out] = support_numbers(clipped)
    return area, s


def _links(g: np.ndarray, win: np.ndarray, boxes: np.ndarray, cls: np.ndarray | None, metric: str,
           thr: float, within_window: bool) -> _Links:
    """The links: candidate pairs whose bounding boxes meet (`box_pairs`, on the unrepaired shapes, whose
    boxes contain the repaired ones), then window, class and zone filters, then the overlap decision."""
    bounds = shapely.bounds(g)  # NaN for empty or missing geometries: no pairs, and compares False below
    i, j = box_pairs(bounds)
    keep = (win[i] == win[j]) if within_window else (win[i] != win[j])
    if cls is not None:
        keep &= cls[i] == cls[j]
    i, j = i[keep], j[keep]
    zone = np.concatenate([np.maximum(boxes[i, :2], boxes[j, :2]), np.minimum(boxes[i, 2:], boxes[j, 2:])],
                          axis=1)
    lo = np.maximum(np.maximum(bounds[i, :2], bounds[j, :2]), zone[:, :2])
    hi = np.minimum(np.minimum(bounds[i, 2:], bounds[j, 2:]), zone[:, 2:])
    keep = np.all(hi > lo, axis=1)  # the two boxes overlap with positive area inside the zone
    i, j, zone = i[keep], j[keep], zone[keep]

    # Only detections in some pair need repair, areas and support numbers. Support numbers come from
    # the unrepaired vertices: a repair only drops parts or adds points on existing edges, so they
    # still circumscribe the repaired shape, and the bounds stay bounds.
    in_pair = np.zeros(len(g), dtype=bool)
    in_pair[i] = in_pair[j] = True
    part = np.flatnonzero(in_pair)
    where = np.cumsum(in_pair) - 1  # detection -> position in part
    raw = g[part]
    sup, simple = support_numbers(raw, simple=True)
    rep = _repair(raw, simple)
    if rep is not raw:
        g = g.copy()
        g[part] = rep
    areas, bounds = _areas(rep), bounds[part]
    pi, pj = where[i], where[j]

    above = np.zeros(len(i), dtype=bool)
    area_i, area_j = np.zeros(len(i)), np.zeros(len(i))
    for start in range(0, len(i), _CHUNK_PAIRS):  # small chunks: see support_numbers on page faults
        sl = slice(start, start + _CHUNK_PAIRS)
        z = zone[sl]
        ai, si = _zone_parts(rep, pi[sl], z, bounds, areas, sup)
        aj, sj = _zone_parts(rep, pj[sl], z, bounds, areas, sup)
        area_i[sl], area_j[sl] = ai, aj
        ok = np.flatnonzero((ai > 0) & (aj > 0) & (np.minimum(ai, aj) >= MIN_ZONE_RATIO * np.maximum(ai, aj)))
        above[start + ok] = decide_overlaps(rep[pi[sl][ok]], rep[pj[sl][ok]], ai[ok], aj[ok], si[ok], sj[ok], metric,
                                         thr, zones=z[ok])[0]
    sel = np.flatnonzero(above)
    return _Links(i[sel], j[sel], zone[sel], area_i[sel], area_j[sel], g)


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the graph with edges (a, b): each node's label is the smallest node of
    its component. Numpy hooking plus pointer jumping, a few passes over the edges."""
    label = np.arange(n, dtype=np.int64)
    while len(a):
        la, lb = label[a], label[b]
        differ = la != lb
        if not differ.any():
            break
        la, lb = la[differ], lb[differ]
        low = np.minimum(la, lb)
        np.minimum.at(label, la, low)  # hook each root under the smaller label it is linked to
        np.minimum.at(label, lb, low)
        while True:  # labels only ever point to smaller nodes, so jumping converges to the roots
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
        a, b = a[differ], b[differ]
    return label


def _group_labels(n: int, win: np.ndarray, links: _Links, within_window: bool) -> np.ndarray:
    """One label per detection, shared by the members of a group and by no one else (a member's index)."""
    comp = _components(n, links.a, links.b)
    # A component needs the ordered union-find only if some join in it could be refused: across windows, when
    # it holds some window twice; within one window, when some two of its detections are not linked.
    if within_window:
        size = np.bincount(comp, minlength=n)
        n_links = np.bincount(comp[links.a], minlength=n)
        conflicted = n_links < size * (size - 1) // 2
    else:
        by = np.lexsort((win, comp))
        c_sorted, w_sorted = comp[by], win[by]
        twice = (c_sorted[1:] == c_sorted[:-1]) & (w_sorted[1:] == w_sorted[:-1])
        conflicted = np.zeros(n, dtype=bool)
        conflicted[c_sorted[1:][twice]] = True
    if not conflicted.any():
        return comp
    in_conflict = conflicted[comp]
    sel = np.flatnonzero(in_conflict[links.a])
    a, b = links.a[sel], links.b[sel]
    # Here the order of the links matters, so their exact overlap is needed: iou inside the zone,
    # whatever the linking metric (see "Grouping without welding" above).
    inter = exact_intersection_areas(links.geoms[a], links.geoms[b], links.zone[sel])
    value = metric_from_intersection(inter, links.area_a[sel], links.area_b[sel], "iou")
    seq = np.lexsort((b, a, -value))
    nodes = np.flatnonzero(in_conflict)
    local = np.full(n, -1, dtype=np.int64)
    local[nodes] = np.arange(len(nodes))
    la, lb = local[a[seq]].tolist(), local[b[seq]].tolist()
    root = (_clique_union_find(la, lb, len(nodes)) if within_window
            else _ordered_union_find(la, lb, win[nodes].tolist()))
    label = comp.copy()
    label[nodes] = nodes[root]
    return label


def _ordered_union_find(a: list[int], b: list[int], win: list[int]) -> np.ndarray:
    """Union-find over links in the given order, joining two groups only if their window sets are
    disjoint. Window sets merge small into large (each window moves O(log n) times), which also keeps
    the trees shallow: a group's window set has one entry per member."""
    parent = list(range(len(win)))
    windows: list[set[int] | None] = [{w} for w in win]

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for x, y in zip(a, b):
        rx, ry = find(x), find(y)
        if rx == ry:
            continue
        sx, sy = windows[rx], windows[ry]
        if len(sx) < len(sy):
            rx, ry, sx, sy = ry, rx, sy, sx
        if sx.isdisjoint(sy):
            parent[ry] = rx
            sx |= sy
            windows[ry] = None
    return np.fromiter((find(x) for x in range(len(win))), dtype=np.int64, count=len(win))


def _clique_union_find(a: list[int], b: list[int], n: int) -> np.ndarray:
    """Links in the given order, joining two groups only if every pair across them is a link: each group
    stays a set of detections all linked to one another. (Components of one window's detections are small,
    so the pairwise check is cheap.)"""
    linked = set(zip(a, b)) | set(zip(b, a))
    members: list[list[int]] = [[x] for x in range(n)]
    owner = list(range(n))
    for x, y in zip(a, b):
        gx, gy = owner[x], owner[y]
        if gx == gy or not all((p, q) in linked for p in members[gx] for q in members[gy]):
            continue
        if len(members[gx]) < len(members[gy]):
            gx, gy = gy, gx
        for k in members[gy]:
            owner[k] = gx
        members[gx] += members[gy]
        members[gy] = []
    return np.asarray(owner, dtype=np.int64)


def _csr(label: np.ndarray, rank_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups from labels: members in rank order, groups by their best member's rank."""
    n = len(label)
    rank = np.empty(n, dtype=np.int64)
    rank[rank_order] = np.arange(n)
    best = np.full(n, n, dtype=np.int64)
    np.minimum.at(best, label, rank)
    key = best[label]
    order = rank_order[np.argsort(key[rank_order], kind="stable")]
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return order.astype(np.int64, copy=False), np.r_[starts, n].astype(np.int64)
