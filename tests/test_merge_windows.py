"""What the windows could see (tiler.merge.windows), and how the job's merge uses it: objects no window held
whole are joined from their parts and never suppressed by a detail on them; a cut view that another window saw
whole, left alone by the merge, is dropped."""

from __future__ import annotations

import numpy as np
import shapely

from tiler.config import JobConfig
from tiler.detections import SEAM_MARGIN, Detections
from tiler.grid import plan_windows
from tiler.merge import sort_order
from tiler.merge.windows import cut_views_seen_whole_elsewhere, held_whole, larger_than_window, window_side
from tiler.pipeline import merge

# three 320 px windows in a row, overlap 80 px: x 0..320, 240..560, 480..800
ROW = np.array([[0, 0, 320, 320], [240, 0, 560, 320], [480, 0, 800, 320]], dtype=float)


def test_window_side_and_larger_than_window():
    clipped = np.vstack([ROW, [[720, 0, 800, 320]]])  # a window cut by the raster's edge is smaller
    assert window_side(clipped) == 320
    bounds = np.array([[0, 0, 320, 10], [0, 0, 321, 10], [5, 5, 6, 400]], dtype=float)
    assert larger_than_window(bounds, ROW).tolist() == [False, True, True]


def test_held_whole_pairs_and_margin():
    bounds = np.array([[250, 50, 310, 90],      # inside windows 0 and 1
                       [200, 50, 400, 90],      # across the seams: in none
                       [238, 50, 300, 90],      # in window 0; 2 px from window 1's edge
                       [np.nan] * 4], dtype=float)  # an empty geometry's bounds
    i, w = held_whole(bounds, ROW)
    assert sorted(zip(i.tolist(), w.tolist())) == [(0, 0), (0, 1), (2, 0)]
    i, w = held_whole(bounds, ROW, margin=SEAM_MARGIN)
    assert sorted(zip(i.tolist(), w.tolist())) == [(0, 0), (0, 1), (2, 0)]
    i, w = held_whole(bounds, ROW, margin=12.5)  # 0 is 10 px from window 0's right edge, 10 from window 1's left
    assert sorted(zip(i.tolist(), w.tolist())) == [(2, 0)]
    assert [len(a) for a in held_whole(bounds[:0], ROW)] == [0, 0]


def test_cut_views_seen_whole_elsewhere():
    bounds = np.array([[300, 100, 320, 110],    # cut by window 0's edge at 320; window 1 saw it whole
                       [300, 100, 320, 110],    # the same, not cut: kept
                       [200, 100, 320, 130],    # cut at 320, but no other window holds it
                       [242, 100, 260, 110],    # cut by window 1's edge at 240; window 0 saw it whole
                       [242, 100, 319, 110]],   # the same, but 1 px from window 0's edge: not seen whole there
                      dtype=float)
    cut = np.array([True, False, True, True, True])
    windows = np.array([0, 0, 0, 1, 1])
    out = cut_views_seen_whole_elsewhere(bounds, cut, windows, ROW, SEAM_MARGIN)
    assert out.tolist() == [True, False, False, True, False]
    # a detection of a window not in the list (a coarse pass's) counts as from no listed window
    assert cut_views_seen_whole_elsewhere(bounds[:1], [True], [7], ROW, SEAM_MARGIN).tolist() == [True]


def test_sort_order_takes_integer_tiers():
    scores = np.array([0.9, 0.5, 0.99, 0.7])
    tiers = np.array([1, 0, 2, 1])
    assert sort_order(scores, np.zeros(4), "score", tiers).tolist() == [1, 0, 3, 2]
    assert sort_order(scores, np.zeros(4), "score", tiers.astype(bool)).tolist() == [1, 2, 0, 3]


def _dets(geoms, classes, scores, windows, cut):
    return Detections.from_geometries(np.array(geoms, dtype=object), classes, scores, windows, on_seam=cut)


def test_a_detail_on_an_object_no_window_held_never_suppresses_it():
    """A 500 px roof seen in two pieces by windows 1 and 2, and a 30 px plant on it that window 0 took for a small
    building and scored higher. By score alone the plant would suppress the roof (ios 1 > 0.5); the roof, larger
    than any window, ranks first."""
    roof = shapely.box(250, 50, 750, 250)
    pieces = [roof.intersection(shapely.box(*ROW[k])) for k in (1, 2)]
    plant = shapely.box(250, 100, 280, 130)
    dets = _dets(pieces + [plant], [1, 1, 1], [0.8, 0.7, 0.99], [1, 2, 0], [True, True, False])
    out = merge(JobConfig(source="x.tif", model="m.pt", merge="union"), dets, "segment", ROW)
    assert len(out) == 1 and out.geometries()[0].equals(roof)
    # suppress does not join the pieces, so nothing is larger than a window: the plant stays the best view
    out = merge(JobConfig(source="x.tif", model="m.pt", merge="suppress"), dets, "segment", ROW)
    assert shapely.equals(out.geometries(), plant).any()


def test_one_windows_instances_of_a_roof_cut_by_its_edge_are_united():
    """Window 0 outlines its part of a 400 px roof twice: an uncut instance stopping short of its edge (x 230)
    and a better scored one cut at the edge (x 320), which covers it by ios. Keeping the uncut one would leave
    nothing in the zone window 1 shares, and the roof would come out in two pieces."""
    grid = plan_windows(560, 320, (320, 320), (0.25, 0.25))
    boxes = grid.clipped_bounds()
    roof = shapely.box(100, 50, 500, 250)
    short, at_edge = shapely.box(100, 50, 230, 250), shapely.box(150, 50, 320, 250)
    assert shapely.area(short & at_edge) / shapely.area(short) > 0.5
    right = roof.intersection(shapely.box(*boxes[1]))
    dets = _dets([short, at_edge, right], [1, 1, 1], [0.6, 0.9, 0.8], [0, 0, 1], [False, True, True])
    out = merge(JobConfig(source="x.tif", model="m.pt", merge="union"), dets, "segment", boxes)
    assert len(out) == 1 and out.geometries()[0].equals(roof)


def test_a_cut_sliver_another_window_saw_whole_is_dropped():
    """Window 0 outlines a 20 px "cut object" at its edge, where window 1 (which saw those pixels 80 px from its
    own edge) found nothing: dropped. A cut view that no other window saw whole stays."""
    sliver = shapely.box(300, 100, 320, 110)
    cut_car = shapely.box(560 - 12, 200, 560, 210)  # cut at window 1's edge x = 560, but window 2 holds it
    truck = shapely.box(200, 150, 320, 170)  # cut at 320 and longer than the overlap: no window holds it
    dets = _dets([sliver, cut_car, truck], [1, 0, 0], [0.4, 0.5, 0.6], [0, 1, 0], [True, True, True])
    for method in ("union", "suppress"):
        out = merge(JobConfig(source="x.tif", model="m.pt", merge=method), dets, "segment", ROW)
        assert len(out) == 1 and out.geometries()[0].equals(truck)


def test_a_blob_one_window_drew_around_two_boats_it_also_saw_apart_welds_nothing():
    """Window 1 outlines two moored boats apart (0.8, 0.7) and also once around both (0.5). The blob overlaps
    each boat by ios 1, but the boats do not overlap each other: the model kept them apart, so the union pass
    must too (before the fix, the blob chained them into one welded polygon)."""
    a, b = shapely.box(380, 100, 400, 140), shapely.box(402, 100, 420, 140)
    blob = shapely.box(380, 100, 420, 140)
    dets = _dets([a, b, blob], [2, 2, 2], [0.8, 0.7, 0.5], [1, 1, 1], [False, False, False])
    for method in ("union", "suppress"):
        out = merge(JobConfig(source="x.tif", model="m.pt", merge=method), dets, "segment", ROW)
        assert len(out) == 2, method
        assert out.geometries()[0].equals(a) and out.geometries()[1].equals(b), method
