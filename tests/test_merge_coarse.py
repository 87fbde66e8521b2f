"""The coarse pass's part of the merge (tiler.merge.coarse): which coarse detections stay, which fine ones join them."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from tiler import ConfigError, JobConfig
from tiler.merge import coarse_groups


# fine windows of 320 px at a 240 px stride (overlap 80 px), as a 320 px patch with overlap 0.25 plans them
GRID = np.array([[x, y, x + 320, y + 320] for x in range(0, 2400, 240) for y in range(0, 2400, 240)], dtype=float)


def groups(order, offsets):
    return [order[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def test_a_large_coarse_detection_takes_in_the_fine_pieces_of_it():
    geoms = [
        shapely.box(0, 0, 300, 300),      # 0 fine: a piece of the roof (all inside the coarse one)
        shapely.box(500, 0, 700, 300),    # 1 fine: another piece, apart from the first (the middle unseen)
        shapely.box(650, 250, 720, 320),  # 2 fine: 49 % of it inside (70x70 box, 50x50 + ... inside)
        shapely.box(100, 100, 120, 120),  # 3 fine, other class: a vehicle on the roof, not a piece
        shapely.box(2, 2, 698, 298),      # 4 coarse: the whole roof, 696 px > a 320 px window
        shapely.box(2000, 0, 2100, 60),   # 5 coarse: small (100 px), a fine window holds it: seen better there
        shapely.box(2000, 0, 2100, 60),   # 6 fine: that small object
    ]
    cls = [1, 1, 1, 0, 1, 1, 1]
    coarse = [False, False, False, False, True, True, False]
    windows = [0, 0, 1, 0, 9, 9, 2]  # 0 and 1: one window saw the two pieces apart (the middle unseen)
    order, offsets = coarse_groups(geoms, cls, coarse, windows, GRID)
    inside_2 = shapely.box(650, 250, 698, 298).area / geoms[2].area
    assert inside_2 < 0.5
    # groups in the order of their first member's index; the coarse detection leads its own
    assert groups(order, offsets) == [[2], [3], [4, 0, 1], [6]]


@pytest.mark.parametrize("x0, kept", [(250, False), (200, True), (-10, True)])
def test_a_coarse_detection_is_kept_where_no_fine_window_holds_it_whole(x0, kept):
    """A 200 px roof (smaller than a 320 px window) at x 250..450 lies inside the window at 240..560: that window
    saw it whole, at full resolution. At x 200..400 it lies across the seams of the windows at 0..320 and
    240..560, and no window saw it whole: the coarse view is kept, with the fine piece it takes in. A box poking
    out of the raster's windows (x0 -10) is held by none either."""
    roof = shapely.box(x0, 100, x0 + 200, 200)
    piece = shapely.box(max(x0, 0) + 10, 110, x0 + 100, 190)
    order, offsets = coarse_groups([piece, roof], [1, 1], [False, True], [0, 9], GRID)
    assert groups(order, offsets) == ([[1, 0]] if kept else [[0]])


def test_class_agnostic_takes_in_other_classes():
    geoms = [shapely.box(10, 10, 30, 30), shapely.box(0, 0, 400, 400)]
    order, offsets = coarse_groups(geoms, [0, 1], [False, True], [0, 9], GRID, class_agnostic=True)
    assert groups(order, offsets) == [[1, 0]]
    order, offsets = coarse_groups(geoms, [0, 1], [False, True], [0, 9], GRID)
    assert groups(order, offsets) == [[0], [1]]


def test_a_fine_detection_inside_two_coarse_ones_joins_the_one_covering_more_of_it():
    geoms = [shapely.box(300, 0, 400, 100),   # fine: 80 % in the second coarse detection, 20 % in the first
             shapely.box(0, 0, 320, 500),     # coarse
             shapely.box(320, 0, 800, 500)]   # coarse
    order, offsets = coarse_groups(geoms, [1, 1, 1], [False, True, True], [0, 8, 9], GRID)
    assert groups(order, offsets) == [[1], [2, 0]]


def test_invalid_outlines_are_repaired_not_raised_on():
    bowtie = shapely.Polygon([(0, 0), (100, 100), (100, 0), (0, 100)])  # self-intersecting
    geoms = [bowtie, shapely.box(-10, -10, 500, 500)]
    order, offsets = coarse_groups(geoms, [1, 1], [False, True], [0, 9], GRID)
    assert groups(order, offsets) == [[1, 0]]


def test_nothing_kept():
    order, offsets = coarse_groups([shapely.box(0, 0, 10, 10)], [0], [True], [9], GRID)
    assert len(order) == 0 and offsets.tolist() == [0]
    with pytest.raises(ValueError, match="one entry per geometry"):
        coarse_groups([shapely.box(0, 0, 10, 10)], [0, 1], [True], [9], GRID)


@pytest.mark.parametrize("gap, same_window, welded", [(0, True, False), (1.5, True, False), (30, True, True),
                                                       (0, False, True)])
def test_a_coarse_blob_of_two_touching_objects_one_window_saw_apart_is_not_kept(gap, same_window, welded):
    """Two houses side by side, seen apart by one fine window; the coarse pass sees one block over both. Touching
    (gap <= 2 px): the block is a blob and both houses stay. Apart (a courtyard between two parts of one
    roof), or seen by two different windows (no window saw them apart): the coarse detection takes both in."""
    geoms = [shapely.box(0, 0, 200, 100), shapely.box(200 + gap, 0, 400 + gap, 100),
             shapely.box(-3, -3, 403 + gap, 103)]
    windows = [0, 0 if same_window else 1, 9]
    order, offsets = coarse_groups(geoms, [1, 1, 1], [False, False, True], windows, GRID)
    assert groups(order, offsets) == ([[2, 0, 1]] if welded else [[0], [1]])


def test_overlapping_parts_of_one_roof_from_one_window_are_taken_in():
    geoms = [shapely.box(0, 0, 250, 100), shapely.box(150, 0, 400, 100), shapely.box(-3, -3, 403, 103)]
    order, offsets = coarse_groups(geoms, [1, 1, 1], [False, False, True], [0, 0, 9], GRID)
    assert groups(order, offsets) == [[2, 0, 1]]


@pytest.mark.parametrize("bad", [1, 17, 2.5, True, "4"])
def test_coarse_factor_is_validated(bad, tmp_path):
    with pytest.raises(ConfigError, match="coarse_factor must be an integer from 2 to 16"):
        JobConfig(source="a.tif", model="m.pt", coarse_factor=bad)


def test_coarse_factor_and_keep_masks_are_refused_together():
    with pytest.raises(ConfigError, match="coarse_factor cannot be combined with keep_masks"):
        JobConfig(source="a.tif", model="m.pt", coarse_factor=4, keep_masks=True)
    assert JobConfig(source="a.tif", model="m.pt", coarse_factor=np.int64(4)).coarse_factor == 4
