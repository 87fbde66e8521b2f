"""Per-group outputs of a merge: one geometry, score and leader per group of detections.

Groups come in CSR form ``(order, offsets)``: group g is ``order[offsets[g]:offsets[g + 1]]``, members best
first (as `union.union_groups` and `coarse.coarse_groups` return them). ``merge_group_geometries`` gives one
geometry per group (a member that covers the others is kept as it is, otherwise the union of all members);
``merge_group_scores`` the best score per group. A group's class (and any other per-detection field) is that
of its best member, ``group_leaders(order, offsets)``.

Pure module: numpy and shapely >= 2 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely

from ..geometry import geometry_array, polygonal_parts
from .dop import support_numbers
from .overlaps import _CHUNK_PAIRS, _areas, _check_metric, _check_threshold, _repair, _safe_geoms, decide_overlaps

__all__ = ["GEOMETRY_KINDS", "merge_group_geometries", "merge_group_scores", "group_leaders", "member_positions"]

GEOMETRY_KINDS: tuple[str, ...] = ("polygon", "box", "rotated")
"""What a merged group's geometry is: the union itself, its axis-aligned envelope, or its minimum
rotated rectangle (for detect and OBB models, whose outputs must stay boxes)."""


def per_detection(values: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    """`values` as a flat array of one entry per detection (shared by the merge modules' argument checks)."""
    arr = np.asarray(values, dtype=dtype).ravel()
    if len(arr) != n:
        raise ValueError(f"{name} has length {len(arr)}, expected {n} (one per geometry)")
    return arr


def _check_groups(order: Any, offsets: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.asarray(order, dtype=np.int64).ravel()
    offsets = np.asarray(offsets, dtype=np.int64).ravel()
    if (len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(order)
            or np.any(np.diff(offsets) <= 0)):
        raise ValueError("offsets must start at 0, end at len(order) and strictly increase (no empty group)")
    if len(order) and (order.min() < 0 or order.max() >= n):
        raise ValueError(f"order holds indices outside [0, {n})")
    return order, offsets


def member_positions(offsets: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Positions in ``order`` of the members of ``groups`` (group indices, ascending), group after group:
    ``order[member_positions(offsets, groups)]`` with ``np.r_[0, np.cumsum(sizes[groups])]`` is the CSR of
    those groups alone."""
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = np.diff(offsets)[groups]
    return np.arange(sizes.sum()) + np.repeat(offsets[groups] - np.cumsum(sizes) + sizes, sizes)


def group_leaders(order: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Index of each group's best member: the detection whose class (and window, flags, ...) the merged
    object takes."""
    order = np.asarray(order, dtype=np.int64)
    return order[np.asarray(offsets, dtype=np.int64)[:-1]]


def merge_group_scores(scores: Sequence[float] | np.ndarray, order: np.ndarray, offsets: np.ndarray
                       ) -> np.ndarray:
    """Highest member score per group (float32)."""
    s = np.asarray(scores, dtype=np.float32).ravel()
    order, offsets = _check_groups(order, offsets, len(s))
    if len(order) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.maximum.reduceat(s[order], offsets[:-1]).astype(np.float32, copy=False)


def merge_group_geometries(
    geoms: Sequence[Any] | np.ndarray,
    order: np.ndarray,
    offsets: np.ndarray,
    *,
    kind: str,
    threshold: float = 0.5,
    metric: str = "ios",
    demote: np.ndarray | None = None,
    keep_covering: bool = True,
    never_duplicate: np.ndarray | None = None,
) -> np.ndarray:
    """One shapely geometry per group (object array).

    * A single-member group keeps its geometry object unchanged.
    * If the group's best non-demoted member (the first member in ``order`` whose ``demote`` flag is
      False; every member counts as non-demoted without ``demote``) overlaps every other member by
      ``metric > threshold`` on the full geometries, the group is a plain duplicate and keeps that
      member as it is (repaired if it was invalid): a union would only inflate it. A group whose
      members are all demoted (all cut by inner window edges) is never a duplicate: two views cut at
      different edges may overlap by more than the threshold and still miss parts of each other.
    * Otherwise the result is the union of all members (repaired first), valid and polygonal (Polygon
      or MultiPolygon: lines, points and empty parts dropped; the best member if nothing polygonal
      remains), then for ``kind="box"`` its axis-aligned envelope and for ``kind="rotated"`` its
      minimum rotated rectangle.

    ``threshold``, ``metric`` and ``demote`` should be those given to ``union_groups``. With
    ``keep_covering=False`` every multi-member group is the union of its members (the coarse pass's groups,
    `coarse.py`: the member that covers the others is the coarse one, with the coarser outline). A group with
    any member flagged in ``never_duplicate`` (optional bool per detection) is never a duplicate either: the
    caller knows its members are partial views of one object, so one of them "covering" the others (ios is
    ~1 for a part inside the whole) says nothing, and keeping it could drop the rest (`pipeline._join`).
    """
    if kind not in GEOMETRY_KINDS:
        raise ValueError(f"kind must be one of {GEOMETRY_KINDS}, got {kind!r}")
    _check_metric(metric)
    thr = _check_threshold(threshold)
    g = geometry_array(geoms)
    order, offsets = _check_groups(order, offsets, len(g))
    sizes = np.diff(offsets)
    out = np.empty(len(sizes), dtype=object)
    first = order[offsets[:-1]]
    out[:] = g[first]
    multi = np.flatnonzero(sizes > 1)
    if len(multi) == 0:
        return out

    # Member positions (into order) of the multi-member groups, and each one's group.
    m_sizes = sizes[multi]
    grp = np.repeat(np.arange(len(multi)), m_sizes)
    pos = member_positions(offsets, multi)
    members = order[pos]
    lead_pos = offsets[multi]
    eligible = np.ones(len(multi), dtype=bool)  # has a non-demoted member to keep
    if demote is not None:
        d = per_detection(demote, len(g), "demote", bool)[members]
        none = np.iinfo(np.int64).max
        best_ok = np.minimum.reduceat(np.where(d, none, pos), np.r_[0, np.cumsum(m_sizes)[:-1]])
        eligible = best_ok != none
        lead_pos = np.where(eligible, best_ok, lead_pos)
    if never_duplicate is not None:
        flagged = per_detection(never_duplicate, len(g), "never_duplicate", bool)[members]
        eligible &= ~np.logical_or.reduceat(flagged, np.r_[0, np.cumsum(m_sizes)[:-1]])
    lead = order[lead_pos]

    # Members of the multi-member groups are distinct detections: index them by position in `members`.
    raw = g[members]
    sup, simple = support_numbers(raw, simple=True)
    safe = _repair(raw, simple)
    areas = _areas(safe)
    where = np.empty(len(g), dtype=np.int64)
    where[members] = np.arange(len(members))

    # Does the lead cover every other member?
    covered = np.zeros(len(multi), dtype=bool)
    if keep_covering:
        rest = (pos != lead_pos[grp]) & eligible[grp]
        li, ri = where[lead[grp[rest]]], np.flatnonzero(rest)
        above = np.zeros(len(li), dtype=bool)
        for lo in range(0, len(li), _CHUNK_PAIRS):
            a, b = li[lo:lo + _CHUNK_PAIRS], ri[lo:lo + _CHUNK_PAIRS]
            above[lo:lo + _CHUNK_PAIRS] = decide_overlaps(safe[a], safe[b], areas[a], areas[b], sup[a], sup[b],
                                                         metric, thr)[0]
        covered = eligible & (np.bincount(grp[rest][~above], minlength=len(multi)) == 0)
    out[multi[covered]] = safe[where[lead[covered]]]

    todo = np.flatnonzero(~covered)
    if len(todo):
        in_todo = np.zeros(len(multi), dtype=bool)
        in_todo[todo] = True
        sel = in_todo[grp]
        member_geoms = safe[sel]
        merged = _union_per_group(member_geoms, grp[sel], todo)
        best = safe[where[lead[todo]]]
        flat = ~(shapely.area(best) > 0)  # nothing but zero-area members: the best one as given
        best[flat] = g[lead[todo][flat]]
        merged = _polygonal(merged, best)
        if kind == "box":
            merged = shapely.envelope(merged)
        elif kind == "rotated":
            merged = _rotated_rectangles(merged)
        out[multi[todo]] = merged
    return out


def _union_per_group(member_geoms: np.ndarray, member_grp: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Union of each group's members. Groups are bucketed by size into padded 2-D arrays (missing
    entries are None, which union_all skips) so that one GEOS call serves a whole bucket."""
    local = np.searchsorted(groups, member_grp)  # 0..len(groups)-1, nondecreasing
    sizes = np.bincount(local, minlength=len(groups))
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    col = np.arange(len(local)) - starts[local]
    out = np.empty(len(groups), dtype=object)
    bucket = np.ceil(np.log2(np.maximum(sizes, 2))).astype(np.int64)
    for b in np.unique(bucket):
        rows = np.flatnonzero(bucket == b)
        width = int(sizes[rows].max())
        grid = np.full((len(rows), width), None, dtype=object)
        row_of = np.full(len(groups), -1, dtype=np.int64)
        row_of[rows] = np.arange(len(rows))
        m = row_of[local] >= 0
        grid[row_of[local[m]], col[m]] = member_geoms[m]
        out[rows] = shapely.union_all(grid, axis=1)
    return out


def _polygonal(geoms: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Valid Polygon or MultiPolygon for each geometry: repaired if needed, non-polygonal parts
    dropped; ``fallback`` where no area is left."""
    geoms = polygonal_parts(_safe_geoms(polygonal_parts(geoms)))
    bad = shapely.is_missing(geoms) | ~(shapely.area(geoms) > 0)
    if bad.any():
        geoms = geoms.copy()
        geoms[bad] = fallback[bad]
    return geoms


def _rotated_rectangles(geoms: np.ndarray) -> np.ndarray:
    """Minimum rotated rectangle of each (polygonal, non-empty) geometry; the envelope if that collapses
    to a line (a zero-area union cannot reach here, see ``_polygonal``)."""
    rect = shapely.oriented_envelope(geoms)
    flat = np.flatnonzero(shapely.get_type_id(rect) != 3)
    if len(flat):
        rect[flat] = shapely.envelope(geoms[flat])
    return rect
