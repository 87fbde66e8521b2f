"""Bounds on the intersection area of two polygons from their k-DOPs, in numpy (no GEOS).

GEOS overlay is slow on this project's CPU: 35 us per pair of ~10-vertex polygons, 72 us for two noisy
16-gons that are near copies of each other, which is exactly what duplicate detections are. A merge of a
million detections meets ~600 000 such pairs, but only needs to know whether each pair's overlap is above a
threshold. Each geometry gets its support numbers in K = 8 directions (the largest projection of its
vertices on each of 16 unit normals, i.e. its circumscribed 16-gon, a "k-DOP"); for a pair, in O(K) numpy work:

* upper bound: the intersection lies inside the overlap of the two circumscribed rectangles in each of
  K/2 rotated frames;
* lower bound: area(A & B) = area(A) + area(B) - area(A | B), and A | B lies inside the circumscribed
  16-gon of both vertex sets, whose area follows from the elementwise maximum of the two support vectors.

For near-duplicates of convex-ish shapes the lower bound already clears any sensible threshold; for
neighbours that only touch, the upper bound is far below it. `overlaps.decide_overlaps` sends only the pairs
the bracket cannot decide to GEOS. The bounds hold exactly (tests/test_merge_union.py checks them against
GEOS on random shapes). Pure module: numpy and shapely >= 2 only.
"""

from __future__ import annotations

import numpy as np
import shapely

from ..geometry import geometry_array

__all__ = ["support_numbers", "intersection_area_bounds"]

# Support directions: K normals over [0, pi), i.e. 2K facet normals around the circle. K must be even
# (the upper bound pairs direction k with its perpendicular k + K/2). K = 8 gives a circumscribed 16-gon
# whose area exceeds the convex hull's by 2.6 % for a disc, more for shapes with sharp corners.
_K = 8
_FACET_ANGLES = np.arange(2 * _K) * np.pi / _K
_NORMALS = np.stack([np.cos(_FACET_ANGLES), np.sin(_FACET_ANGLES)], axis=1)  # (2K, 2)
_COS_A, _SIN_A = np.cos(np.pi / _K), np.sin(np.pi / _K)

# Vertices per chunk when reading geometries: small temporaries (see support_numbers).
_CHUNK_COORDS = 1 << 15


def support_numbers(geoms: np.ndarray, *, simple: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """(n, 2K) float64 support numbers: column m is the largest ``u_m . p`` over the geometry's vertices
    ``p``, with ``u_m`` the unit normal at angle ``m * pi / K``. Together they describe the smallest
    circumscribed polygon with those facet normals (a k-DOP). NaN rows for missing or empty geometries.

    With ``simple=True`` also returns, per geometry, whether it is a Polygon whose ring is radially
    monotone around its vertex centroid (see `_star_rings`), hence simple and valid: those skip GEOS's
    validity check (`overlaps._repair`), which costs ~1.7 us per 15-gon here.

    Geometries are taken in runs of equal vertex count, so that each run is a dense (m, k, 2) array
    (no segmented reductions), a few thousand at a time so that every temporary array stays small: on
    this project's VM first-touch page faults cost 0.6-2.7 ms per MB, more than the arithmetic on a
    large fresh array (projecting 11 M vertices at once took 4 s).
    """
    geoms = geometry_array(geoms)
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
