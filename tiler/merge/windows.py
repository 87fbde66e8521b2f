"""What the windows could see: the largest object one of them holds whole, and which of them hold a given box.

The merge judges a view by its window. An object no window holds whole was only ever seen in pieces, so none of
its views is the whole object: its pieces are joined, and a detail on it never suppresses it. And a detection
cut by its window's edge, lying inside another window that saw all of it with context around it, is a view
that other window did better: if that window saw the object, its own detection covers it (and the merge has
joined or suppressed the cut one); if the cut one is still alone after the merge, that window saw the same
pixels whole and found nothing there. The model, shown only the edge of something at the edge of its input,
outlines a thin "cut object" that is not there (or a sliver of one the other window outlined a pixel short).

Pure module: numpy and shapely >= 2 only.
"""

from __future__ import annotations

import numpy as np
import shapely

__all__ = ["window_side", "larger_than_window", "held_whole", "cut_views_seen_whole_elsewhere"]


def window_side(window_boxes: np.ndarray) -> float:
    """The longest side an object held whole by some window can have: the windows' shorter side (edge windows,
    cut by the raster's edge, are smaller than the others). ``window_boxes`` (m, 4) ``[x0, y0, x1, y1]``."""
    b = np.asarray(window_boxes, dtype=np.float64).reshape(-1, 4)
    return min(float((b[:, 2] - b[:, 0]).max()), float((b[:, 3] - b[:, 1]).max()))


def larger_than_window(bounds: np.ndarray, window_boxes: np.ndarray) -> np.ndarray:
    """Whether each box ``bounds`` (n, 4) has a side longer than `window_side`: no window can hold it."""
    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    return np.fmax(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) > window_side(window_boxes)


def held_whole(bounds: np.ndarray, window_boxes: np.ndarray, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, w)``: window ``w`` holds the whole box ``bounds[i]`` grown by ``margin`` on every side.
    Boxes with NaN bounds (empty geometries) are held by none."""
    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    w = np.asarray(window_boxes, dtype=np.float64).reshape(-1, 4)
    ok = np.flatnonzero(~np.isnan(b).any(axis=1))
    if not len(ok) or not len(w):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    grown = b[ok] + np.array([-margin, -margin, margin, margin])
    # candidates from the tree's boxes alone (no GEOS predicate per pair), containment decided in numpy
    i, j = shapely.STRtree(shapely.box(*w.T)).query(shapely.box(*grown.T))
    g, wj = grown[i], w[j]
    inside = (wj[:, 0] <= g[:, 0]) & (wj[:, 1] <= g[:, 1]) & (g[:, 2] <= wj[:, 2]) & (g[:, 3] <= wj[:, 3])
    return ok[i[inside]].astype(np.int64), j[inside].astype(np.int64)


def cut_views_seen_whole_elsewhere(bounds: np.ndarray, cut: np.ndarray, windows: np.ndarray,
                                   window_boxes: np.ndarray, margin: float) -> np.ndarray:
    """For each detection, whether it is cut by its window's edge (``cut``) and some *other* window holds its
    box at least ``margin`` pixels inside its own edges (see the module docstring). ``windows`` (n,) is each
    detection's window, an index into ``window_boxes``; detections of windows past its end (a coarse pass's)
    count as from no listed window."""
    cut = np.asarray(cut, dtype=bool).ravel()
    out = np.zeros(len(cut), dtype=bool)
    idx = np.flatnonzero(cut)
    if len(idx):
        i, w = held_whole(np.asarray(bounds)[idx], window_boxes, margin)
        out[idx[i[w != np.asarray(windows)[idx][i]]]] = True
    return out
