"""The coarse pass's detections: which are kept, and which fine detections each one takes in.

A coarse pass (``coarse_factor`` F) runs the model on windows F times the patch, read at 1/F resolution. It
sees whole the objects that the fine windows only ever see in pieces: a fine window lying on a large roof
shows grey texture with no edge, and models often find nothing there, so the fine pieces of such an
object do not even touch one another and no merge of them alone can make it whole. But the coarse pass's
outlines are F times coarser, and its small objects are a few pixels across. So, before the merge:

* a coarse detection is kept only if no fine window holds its whole box: every other object is seen whole by
  some fine window, at full resolution. Objects larger than a window are kept, and so are smaller ones that
  lie across the windows' seams (anything wider than the windows' overlap can): the fine model saw those
  only in pieces too, and sometimes as two objects, which no merge of its views may join;
* a fine detection (of the same class unless ``class_agnostic``) with at least ``ABSORB`` of its area
  inside a kept coarse detection is a piece of that object, or a detail on it (a roof's plant seen as a
  small building): it joins the coarse detection's group. The group becomes one object whose outline is
  the union of its members: the fine pieces give their full-resolution edges, the coarse one what no fine
  window saw. A fine detection inside two kept coarse ones joins the one covering most of it;
* but a coarse detection that took in two touching objects one fine window saw apart is a blob of them
  (no merge welds objects that a window saw apart): it is not kept, and its fine pieces stay as they are;
* every other fine detection is left as it is, for the merge.

Pure module: numpy and shapely >= 2 only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely

from ..geometry import geometry_array
from .overlaps import _safe_geoms
from .windows import held_whole

__all__ = ["ABSORB", "SEPARATE", "TOUCH", "coarse_groups"]

ABSORB = 0.5
"""A fine detection with at least this fraction of its area inside a kept coarse detection is a piece of it."""
TOUCH = 2.0
"""Pixels: two detections of one fine window this close touch (see `_blobs`)."""
SEPARATE = 0.1
"""Two touching detections of one fine window overlapping by less than this fraction of the smaller are two
objects (see `_blobs`)."""


def coarse_groups(geoms: Any, class_ids: Any, coarse: Any, windows: Any, fine_windows: Any,
                  class_agnostic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Groups of the detections that are kept, in CSR form ``(order, offsets)``: a kept coarse detection first,
    then the fine detections it takes in (by index); every other fine detection alone. Groups are in the
    order of their first member's index. Coarse detections not kept and fine ones taken in lead no group.

    ``geoms`` (n,) polygons in the frame's pixels; ``class_ids`` (n,); ``coarse`` (n,) bool, True for the
    coarse pass's detections; ``windows`` (n,) the window each comes from; ``fine_windows`` (m, 4) the fine
    windows' boxes ``[x0, y0, x1, y1]`` in the same pixels.
    """
    g = geometry_array(geoms)
    n = len(g)
    coarse = np.asarray(coarse, dtype=bool).ravel()
    cls = np.asarray(class_ids).ravel()
    win = np.asarray(windows).ravel()
    if len(coarse) != n or len(cls) != n or len(win) != n:
        raise ValueError(f"class_ids, coarse and windows must have one entry per geometry ({n})")
    large = coarse.copy()
    cidx = np.flatnonzero(coarse)
    large[cidx[held_whole(shapely.bounds(g[cidx]), fine_windows)[0]]] = False
    big, fine = np.flatnonzero(large), np.flatnonzero(~coarse)
    owner = np.full(n, -1, dtype=np.int64)  # the kept coarse detection a fine one joins
    if len(big) and len(fine):
        fi, bi = shapely.STRtree(g[big]).query(g[fine])  # their boxes intersect
        fi, bi = fine[fi], big[bi]
        if not class_agnostic:
            same = cls[fi] == cls[bi]
            fi, bi = fi[same], bi[same]
        safe = g.copy()  # repaired where needed, so GEOS cannot raise on a self-intersecting outline
        cand = np.unique(np.concatenate([fi, bi]))
        safe[cand] = _safe_geoms(g[cand])
        area = shapely.area(safe[fi])
        inside = np.divide(shapely.area(shapely.intersection(safe[fi], safe[bi])), area,
                           out=np.zeros(len(fi)), where=area > 0)
        ok = inside >= ABSORB
        fi, bi, inside = fi[ok], bi[ok], inside[ok]
        best = np.lexsort((bi, -inside, fi))  # per fine detection: the coarse one covering most of it first
        fi, bi = fi[best], bi[best]
        first = np.r_[True, fi[1:] != fi[:-1]] if len(fi) else np.zeros(0, dtype=bool)
        owner[fi[first]] = bi[first]
        blobs = _blobs(safe, owner, win)
        if len(blobs):
            large[blobs] = False
            owner[np.isin(owner, blobs)] = -1
    leader = np.where(owner >= 0, owner, np.arange(n))
    member = (~coarse) | large
    # sort members by (their group's leader, coarse before fine, index)
    idx = np.flatnonzero(member)
    if not len(idx):
        return np.empty(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    order = idx[np.lexsort((idx, ~coarse[idx], leader[idx]))]
    lead = leader[order]
    starts = np.flatnonzero(np.r_[True, lead[1:] != lead[:-1]])
    return order.astype(np.int64), np.r_[starts, len(order)].astype(np.int64)


def _blobs(safe: np.ndarray, owner: np.ndarray, win: np.ndarray) -> np.ndarray:
    """The kept coarse detections that took in two detections one fine window saw as distinct objects side by
    side: touching (within ``TOUCH`` px) but hardly overlapping (the overlap under ``SEPARATE`` of the smaller).
    The coarse view, F times blurrier, made one blob of two touching objects (a row of houses seen as one
    block): such a coarse detection is not kept, and the fine ones go to the merge as they are. Two parts of
    one roof that a window saw apart do not touch (a courtyard between them), and overlapping parts of one
    roof overlap by more."""
    taken = np.flatnonzero(owner >= 0)
    if len(taken) < 2:
        return np.empty(0, dtype=np.int64)
    p, q = shapely.STRtree(safe[taken]).query(safe[taken], predicate="dwithin", distance=TOUCH)
    p, q = taken[p], taken[q]
    pair = (p < q) & (owner[p] == owner[q]) & (win[p] == win[q])
    p, q = p[pair], q[pair]
    smaller = np.minimum(shapely.area(safe[p]), shapely.area(safe[q]))
    overlap = shapely.area(shapely.intersection(safe[p], safe[q]))
    apart = overlap < SEPARATE * smaller
    return np.unique(owner[p[apart]])
