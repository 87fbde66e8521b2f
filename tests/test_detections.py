"""Tests for tiler.detections: the ragged polygon container and the patch -> global transform."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from tiler.detections import Detections, to_global


def random_polygons(rng: np.random.Generator, counts: list[int]) -> list[np.ndarray]:
    return [rng.uniform(0, 500, (n, 2)) for n in counts]


def polygon(dets: Detections, k: int) -> np.ndarray:
    return dets.coords[dets.offsets[k]:dets.offsets[k + 1]]


def check_consistent(dets: Detections) -> None:
    n = len(dets)
    assert dets.class_id.shape == dets.score.shape == dets.window.shape == dets.on_seam.shape == (n,)
    assert dets.offsets.shape == (n + 1,) and dets.offsets[0] == 0 and dets.offsets[-1] == len(dets.coords)
    assert np.all(np.diff(dets.offsets) >= 0)
    assert dets.coords.ndim == 2 and dets.coords.shape[1] == 2


# -- from_polygons -------------------------------------------------------------------------------------------

def test_from_polygons_drops_degenerate_and_keeps_attributes_aligned():
    polys = [
        np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 3.0]]),  # 3: kept
        np.array([[1.0, 1.0], [2.0, 2.0]]),  # 2: dropped
        np.array([[5.0, 5.0], [9.0, 5.0], [9.0, 9.0], [5.0, 9.0]]),  # 4: kept
        np.zeros((0, 2)),  # 0: dropped
        np.array([[7.0, 7.0]]),  # 1: dropped
        np.array([[0.5, 0.5], [3.5, 0.5], [4.5, 2.0], [2.0, 4.0], [0.0, 2.0]]),  # 5: kept
    ]
    dets = Detections.from_polygons(polys, [0, 1, 2, 3, 4, 5], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], window=3)
    check_consistent(dets)
    assert len(dets) == 3
    assert dets.class_id.tolist() == [0, 2, 5]
    np.testing.assert_allclose(dets.score, [0.9, 0.7, 0.4], rtol=1e-6)
    assert dets.window.tolist() == [3, 3, 3]
    assert dets.counts.tolist() == [3, 4, 5]
    for k, src in enumerate([polys[0], polys[2], polys[5]]):
        np.testing.assert_array_equal(polygon(dets, k), src)
    assert dets.class_id.dtype == np.int32 and dets.score.dtype == np.float32
    assert dets.coords.dtype == np.float64 and dets.offsets.dtype == np.int64
    assert not dets.on_seam.any()


def test_from_polygons_3d_array():
    arr = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2) + 0.25
    dets = Detections.from_polygons(arr, [1, 2, 3], [0.1, 0.2, 0.3])
    check_consistent(dets)
    assert dets.counts.tolist() == [4, 4, 4]
    for k in range(3):
        np.testing.assert_array_equal(polygon(dets, k), arr[k].astype(np.float64))
    # every polygon of a (n, 2, 2) array is a segment: all dropped
    segs = Detections.from_polygons(np.ones((2, 2, 2)), [0, 1], [0.5, 0.5])
    check_consistent(segs)
    assert len(segs) == 0


def test_from_polygons_empty_list():
    dets = Detections.from_polygons([], [], [])
    check_consistent(dets)
    assert len(dets) == 0 and dets.bounds().shape == (0, 4) and len(dets.geometries()) == 0


def test_float_coordinates_are_kept():
    dets = Detections.from_polygons([np.array([[0.125, 0.875], [10.3, 0.2], [5.55, 7.77]])], [0], [1.0])
    np.testing.assert_array_equal(dets.coords, [[0.125, 0.875], [10.3, 0.2], [5.55, 7.77]])


# -- take / concat -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("idx", [
    [4, 0, 7, 2], [7, 6, 5, 4, 3, 2, 1, 0], [3], [], [1, 1, 5, 1], [0, 2, 4, 6, 1, 3, 5, 7],
], ids=["shuffled", "reversed", "one", "none", "repeats", "interleaved"])
def test_take_matches_a_per_item_loop(idx):
    rng = np.random.default_rng(3)
    counts = [3, 8, 4, 5, 3, 11, 4, 6]
    polys = random_polygons(rng, counts)
    dets = Detections.from_polygons(polys, np.arange(8), np.linspace(0.1, 0.8, 8), window=0)
    dets.window = np.arange(100, 108)
    dets.on_seam = np.array([True, False, False, True, False, True, False, False])
    sub = dets.take(np.array(idx, dtype=np.int64))
    check_consistent(sub)
    assert len(sub) == len(idx)
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(polygon(sub, j), polys[i])
        assert sub.class_id[j] == i
        assert sub.score[j] == dets.score[i]
        assert sub.window[j] == 100 + i
        assert sub.on_seam[j] == dets.on_seam[i]


def test_take_of_take():
    rng = np.random.default_rng(5)
    polys = random_polygons(rng, [3, 4, 5, 6, 7])
    dets = Detections.from_polygons(polys, range(5), np.ones(5))
    twice = dets.take([4, 2, 0, 3]).take([3, 0, 2])
    assert twice.class_id.tolist() == [3, 4, 0]
    for j, i in enumerate([3, 4, 0]):
        np.testing.assert_array_equal(polygon(twice, j), polys[i])


def test_concat():
    rng = np.random.default_rng(9)
    pa, pb = random_polygons(rng, [3, 5]), random_polygons(rng, [4, 3, 6])
    a = Detections.from_polygons(pa, [0, 1], [0.5, 0.6], window=1)
    b = Detections.from_polygons(pb, [2, 3, 4], [0.7, 0.8, 0.9], window=2)
    b.on_seam = np.array([False, True, False])
    both = Detections.concat([a, Detections.empty(), b])
    check_consistent(both)
    assert len(both) == 5
    assert both.class_id.tolist() == [0, 1, 2, 3, 4]
    assert both.window.tolist() == [1, 1, 2, 2, 2]
    assert both.on_seam.tolist() == [False, False, False, True, False]
    assert both.counts.tolist() == [3, 5, 4, 3, 6]
    for k, p in enumerate(pa + pb):
        np.testing.assert_array_equal(polygon(both, k), p)
    assert len(Detections.concat([])) == 0
    assert len(Detections.concat([Detections.empty(), Detections.empty()])) == 0


# -- bounds / geometries -------------------------------------------------------------------------------------

def test_bounds_and_geometries():
    rng = np.random.default_rng(13)
    counts = [3, 4, 9, 5, 3]
    polys = []
    for n in counts:  # star-shaped, so every polygon is valid
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(3, 30, n)
        polys.append(rng.uniform(50, 400, 2) + np.column_stack([r * np.cos(ang), r * np.sin(ang)]))
    dets = Detections.from_polygons(polys, np.zeros(5), np.ones(5))
    b = dets.bounds()
    assert b.shape == (5, 4)
    for k, p in enumerate(polys):
        np.testing.assert_array_equal(b[k], [p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])
    geoms = dets.geometries()
    assert len(geoms) == 5
    for g, p in zip(geoms, polys):
        assert g.is_valid
        assert g.area == pytest.approx(shapely.Polygon(p).area, rel=1e-12)
        assert g.area == pytest.approx(abs(0.5 * np.sum(p[:, 0] * np.roll(p[:, 1], -1)
                                                        - np.roll(p[:, 0], -1) * p[:, 1])), rel=1e-9)
        np.testing.assert_allclose(g.bounds, [p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])
    # an axis-aligned rectangle, exactly
    rect = Detections.from_polygons([np.array([[1.5, 2.0], [11.5, 2.0], [11.5, 6.0], [1.5, 6.0]])], [0], [1])
    assert rect.geometries()[0].area == 40.0
    assert rect.bounds().tolist() == [[1.5, 2.0, 11.5, 6.0]]


def test_owner():
    dets = Detections.from_polygons([np.zeros((3, 2)), np.ones((5, 2)), np.zeros((4, 2))], [0, 1, 2], [1, 1, 1])
    assert dets.owner().tolist() == [0] * 3 + [1] * 5 + [2] * 4


# -- to_global -----------------------------------------------------------------------------------------------

RASTER = (1000, 800)  # width, height
PATCH = (400, 400)
# batch positions -> origins; the last column window reaches the right raster edge exactly, the bottom row
# the bottom edge; window 4 overhangs the right edge (a partial last window)
ORIGINS = np.array([[0, 0], [300, 0], [600, 0], [0, 400], [800, 400], [300, 300]], dtype=np.int64)
WINDOW_IDS = np.array([17, 42, 5, 8, 99, 23], dtype=np.int64)


def box(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


# (window position, local box, expected on_seam, why)
SEAM_CASES = [
    (0, box(0.5, 100, 30, 130), False, "left edge of the raster"),
    (0, box(100, 0.0, 130, 30), False, "top edge of the raster"),
    (0, box(370, 100, 399.5, 130), True, "right edge of window 0 is inner"),
    (0, box(100, 370, 130, 399.0), True, "bottom edge of window 0 is inner"),
    (0, box(100, 100, 200, 200), False, "in the middle"),
    (1, box(0.5, 100, 30, 130), True, "left edge of window 1 is inner"),
    (1, box(2.0, 100, 30, 130), True, "exactly at the seam margin"),
    (1, box(2.5, 100, 30, 130), False, "just beyond the seam margin"),
    (1, box(100, 100, 397.5, 130), False, "just beyond the margin on the right"),
    (2, box(370, 100, 399.0, 130), False, "right edge of window 2 is the raster's"),
    (2, box(100, 0, 130, 30), False, "top of window 2 is the raster's"),
    (3, box(100, 398.5, 130, 399.5), False, "bottom of window 3 is the raster's"),
    (3, box(100, 1.0, 130, 30), True, "top of window 3 is inner"),
    (4, box(150, 100, 199.5, 130), False, "window 4 is clipped at x=1000: the raster edge"),
    (4, box(100, 100, 150, 130), False, "inside the clipped window"),
    (4, box(1.0, 100, 50, 130), True, "left of window 4 is inner"),
    (5, box(100, 100, 200, 200), False, "middle of an interior window"),
    (5, box(100, 100, 200, 399.0), True, "bottom of an interior window (y1=700 < 800)"),
]


def test_to_global_offsets_window_ids_and_seams():
    polys = [c[1] for c in SEAM_CASES]
    parts = [Detections.from_polygons([p], [k % 3], [0.5 + k / 100], window=c[0])
             for k, (c, p) in enumerate(zip(SEAM_CASES, polys))]
    local = Detections.concat(parts)
    assert local.window.tolist() == [c[0] for c in SEAM_CASES]
    glob = to_global(local, ORIGINS, WINDOW_IDS, PATCH, RASTER)
    check_consistent(glob)
    assert len(glob) == len(SEAM_CASES)
    for k, (pos, p, seam, why) in enumerate(SEAM_CASES):
        np.testing.assert_array_equal(polygon(glob, k), p + ORIGINS[pos], err_msg=why)
        assert glob.window[k] == WINDOW_IDS[pos], why
        assert bool(glob.on_seam[k]) == seam, why
    np.testing.assert_array_equal(glob.class_id, local.class_id)
    np.testing.assert_array_equal(glob.score, local.score)
    # the input was not modified
    np.testing.assert_array_equal(local.coords, np.concatenate(polys))


def test_to_global_seam_margin_parameter():
    local = Detections.from_polygons([box(5.0, 100, 30, 130)], [0], [1.0], window=1)
    assert not to_global(local, ORIGINS, WINDOW_IDS, PATCH, RASTER).on_seam[0]
    assert to_global(local, ORIGINS, WINDOW_IDS, PATCH, RASTER, seam_margin=6.0).on_seam[0]


def test_to_global_empty():
    out = to_global(Detections.empty(), ORIGINS, WINDOW_IDS, PATCH, RASTER)
    assert len(out) == 0


# -- geometries with holes and parts, and per-object masks ----------------------------------------------------

def courtyard(x: float, y: float, size: float = 10.0) -> shapely.Polygon:
    return shapely.box(x, y, x + size, y + size).difference(shapely.box(x + 3, y + 3, x + 6, y + 6))


def mixed_geometries() -> np.ndarray:
    return np.array([courtyard(0, 0), shapely.MultiPolygon([shapely.box(20, 0, 25, 5), courtyard(30, 0)]),
                     shapely.box(50, 50, 53, 52), shapely.Polygon([(60, 60), (70, 61), (64, 69)])], dtype=object)


def test_from_geometries_round_trips_holes_and_parts():
    geoms = mixed_geometries()
    dets = Detections.from_geometries(geoms, [1, 2, 3, 4], [0.9, 0.8, 0.7, 0.6], window=5)
    check_consistent(dets)
    assert dets.rings is not None and dets.rings.shell.tolist() == [True, False, True, True, False, True, True]
    back = dets.geometries()
    assert [g.geom_type for g in back] == ["Polygon", "MultiPolygon", "Polygon", "Polygon"]
    assert shapely.equals(back, geoms).all()
    np.testing.assert_allclose(dets.bounds(), shapely.bounds(geoms))
    # take and concat keep every ring with its detection, in any order
    picked = dets.take([3, 1, 1, 0])
    assert shapely.equals(picked.geometries(), geoms[[3, 1, 1, 0]]).all()
    boxes = Detections.from_polygons(np.array([[[0, 0], [1, 0], [1, 1], [0, 1.0]]]), [0], [0.5])
    both = Detections.concat([boxes, dets, boxes])
    check_consistent(both)
    assert shapely.equals(both.geometries()[1:5], geoms).all()
    assert both.geometries()[0].equals(shapely.box(0, 0, 1, 1)) and both.geometries()[5].equals(shapely.box(0, 0, 1, 1))


def test_simple_geometries_need_no_ring_layout():
    geoms = np.array([shapely.box(0, 0, 2, 2), shapely.box(5, 5, 9, 6)], dtype=object)
    dets = Detections.from_geometries(geoms, [0, 1], [0.5, 0.4], window=[3, 4])
    assert dets.rings is None and dets.counts.tolist() == [4, 4] and dets.window.tolist() == [3, 4]
    assert shapely.equals(dets.geometries(), geoms).all()


def test_masks_follow_their_detections_through_take_concat_and_to_global():
    from tiler.detections import Masks

    rng = np.random.default_rng(2)
    crops = [rng.random((h, w)) > 0.5 for h, w in ((3, 4), (5, 2), (1, 1))]
    masks = Masks.from_crops(crops, np.array([[10, 20], [0, 0], [7, 9]]))
    geoms = np.array([shapely.box(10, 20, 14, 23), shapely.box(0, 0, 2, 5), shapely.box(7, 9, 8, 10)], dtype=object)
    dets = Detections.from_geometries(geoms, [0, 1, 2], [0.9, 0.8, 0.7], window=[0, 1, 0], masks=masks)
    g = to_global(dets, np.array([[100, 200], [300, 400]]), np.array([11, 12]), (320, 320), (10_000, 10_000))
    assert g.window.tolist() == [11, 12, 11]
    for k, (dx, dy) in enumerate([(100, 200), (300, 400), (100, 200)]):
        crop, (x0, y0) = g.masks.crop(k)
        np.testing.assert_array_equal(crop, crops[k])
        assert (x0, y0) == tuple(masks.boxes[k, :2] + (dx, dy))
    t = Detections.concat([g.take([2, 0]), g.take([1])])
    for k, src in enumerate([2, 0, 1]):
        np.testing.assert_array_equal(t.masks.crop(k)[0], crops[src])
    assert Detections.concat([g, Detections.from_polygons([np.eye(3, 2)], [0], [0.1])]).masks is None


def test_masks_of_a_group_are_joined_on_the_box_holding_them_all():
    from tiler.detections import Masks

    a = np.zeros((4, 6), bool)
    a[1:3, 2:6] = True
    b = np.ones((2, 3), bool)
    c = np.eye(3, dtype=bool)
    masks = Masks.from_crops([a, b, c], np.array([[10, 10], [15, 12], [0, 0]]))
    order, offsets = np.array([2, 1, 0]), np.array([0, 1, 3])  # groups: {2}, {1, 0}
    out = masks.union_groups(order, offsets)
    np.testing.assert_array_equal(out.crop(0)[0], c)
    joined, (x0, y0) = out.crop(1)
    assert (x0, y0) == (10, 10) and joined.shape == (4, 8)
    expect = np.zeros((4, 8), bool)
    expect[1:3, 2:6] = True
    expect[2:4, 5:8] = True
    np.testing.assert_array_equal(joined, expect)
