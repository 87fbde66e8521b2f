"""Tests for tiler.merge.union (objects larger than a window come out whole) and the overlap bounds it
relies on, against hand-built scenes and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box

import tiler.merge as merge_pkg
from tiler.grid import plan_windows
from tiler.merge import (
    GEOMETRY_KINDS,
    MATCH_METRICS,
    MERGE_METHODS,
    group_leaders,
    merge_group_geometries,
    merge_group_scores,
    nms,
    sort_order,
    union_groups,
)
from tiler.merge.dop import intersection_area_bounds, support_numbers
from tiler.merge.overlaps import (
    decide_overlaps,
    exact_intersection_areas,
    pair_overlaps,
    pairs_above,
    polygonal_parts,
)
from tiler.merge.union import MIN_ZONE_RATIO

PATCH = 320


# --------------------------------------------------------------------------- helpers


def window_boxes(width: int, height: int, patch: int = PATCH, overlap: float = 0.25) -> np.ndarray:
    return plan_windows(width, height, (patch, patch), overlap).bounds().astype(np.float64)


def perturb(geom, rng: np.random.Generator, noise: float):
    """Move every vertex by up to ~`noise` px (two inferences never agree exactly): a random smooth
    displacement field per call, so that a ring's first and last point move together."""
    freq, phase = rng.uniform(0.05, 0.5, (2, 2)), rng.uniform(0, 2 * np.pi, (2, 2))

    def field(c):
        dx = np.sin(freq[0, 0] * c[:, 0] + phase[0, 0]) * np.cos(freq[0, 1] * c[:, 1] + phase[0, 1])
        dy = np.cos(freq[1, 0] * c[:, 0] + phase[1, 0]) * np.sin(freq[1, 1] * c[:, 1] + phase[1, 1])
        return c + noise * np.stack([dx, dy], axis=1)

    jittered = shapely.transform(geom, field)
    return jittered if jittered.is_valid else shapely.make_valid(jittered)


def tile_views(objects, wins: np.ndarray, rng: np.random.Generator, *, noise: float = 0.3,
               min_area: float = 100.0, classes=None):
    """What a tiling job returns for `objects`: for every window, the jittered part of each object
    inside it (one detection per object and window, MultiPolygon if the window cuts it in two), dropped
    under `min_area` as a model would miss it."""
    geoms, obj, win, cls = [], [], [], []
    for w, (x0, y0, x1, y1) in enumerate(wins):
        frame = box(x0, y0, x1, y1)
        for k, o in enumerate(objects):
            if not o.intersects(frame):
                continue
            part = perturb(o, rng, noise).intersection(frame)
            part = shapely.make_valid(part)
            if part.geom_type == "GeometryCollection":
                polys = [p for p in part.geoms if p.geom_type in ("Polygon", "MultiPolygon")]
                part = shapely.union_all(polys) if polys else Polygon()
            if part.area < min_area:
                continue
            geoms.append(part)
            obj.append(k)
            win.append(w)
            cls.append(0 if classes is None else classes[k])
    n = len(geoms)
    arr = np.empty(n, dtype=object)
    arr[:] = geoms
    win = np.asarray(win, dtype=np.int64)
    scores = rng.uniform(0.3, 0.95, n)
    return arr, np.asarray(obj), win, wins[win], scores, np.asarray(cls)


def seam_flags(geoms, boxes, width, height, margin=2.0) -> np.ndarray:
    """Detections touching an inner window edge, as tiler.detections.to_global flags them."""
    b = shapely.bounds(geoms)
    return (((b[:, 0] <= boxes[:, 0] + margin) & (boxes[:, 0] > 0))
            | ((b[:, 1] <= boxes[:, 1] + margin) & (boxes[:, 1] > 0))
            | ((b[:, 2] >= boxes[:, 2] - margin) & (boxes[:, 2] < width))
            | ((b[:, 3] >= boxes[:, 3] - margin) & (boxes[:, 3] < height)))


def groups_of(order: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [order[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def check_csr(order, offsets, n, scores, demote=None):
    """The documented invariants of union_groups' output."""
    assert order.dtype == np.int64 and offsets.dtype == np.int64
    assert offsets[0] == 0 and offsets[-1] == n and np.all(np.diff(offsets) > 0)
    assert sorted(order.tolist()) == list(range(n))  # every detection exactly once
    rank = np.empty(n, dtype=np.int64)
    rank[sort_order(scores, np.zeros(n), "score", demote)] = np.arange(n)
    for grp in groups_of(order, offsets):
        assert np.all(np.diff(rank[grp]) > 0)  # members best first
    firsts = rank[order[offsets[:-1]]]
    assert np.all(np.diff(firsts) > 0)  # groups by their best member's rank


def iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def assert_clean(geoms):
    """Valid, non-empty, polygonal."""
    for g in geoms:
        assert g is not None and not g.is_empty and g.is_valid and g.area > 0
        assert g.geom_type in ("Polygon", "MultiPolygon")


def l_building_with_hole(x0=100.0, y0=100.0, size=900.0, angle=0.0) -> Polygon:
    outer = box(x0, y0, x0 + size, y0 + size).difference(box(x0 + size / 2, y0 + size / 2, x0 + size, y0 + size))
    hole = box(x0 + size / 6, y0 + size / 6, x0 + size / 3, y0 + size / 3)
    shape = outer.difference(hole)
    return affinity.rotate(shape, angle, origin="centroid") if angle else shape


# --------------------------------------------------------------------------- big objects


@pytest.mark.parametrize("angle", [0.0, 17.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_large_polygon_fragments_come_back_whole(angle, seed):
    rng = np.random.default_rng(seed)
    wins = window_boxes(1200, 1200)
    building = l_building_with_hole(angle=angle)
    assert len(building.interiors) == 1 and building.area > 400_000
    g, obj, win, wb, scores, cls = tile_views([building], wins, rng)
    assert len(g) >= 9  # really cut into fragments, one per window it crosses
    assert all(frag.area < 0.4 * building.area for frag in g)
    demote = seam_flags(g, wb, 1200, 1200)
    order, offsets = union_groups(g, scores, cls, win, wb, demote=demote)
    check_csr(order, offsets, len(g), scores, demote)
    assert len(offsets) == 2  # one group holding every fragment
    for kind in GEOMETRY_KINDS:
        (merged,) = merge_group_geometries(g, order, offsets, kind=kind, demote=demote)
        assert_clean([merged])
        if kind == "polygon":
            assert iou(merged, building) > 0.98
            assert len(merged.interiors) == 1  # the courtyard survives the union
        elif kind == "box":
            assert merged.equals(shapely.envelope(shapely.union_all(g)))
        else:
            assert len(merged.exterior.coords) == 5
            assert merged.buffer(1e-6).contains(shapely.union_all(g))
    # Suppression cannot do this: fragments of different windows do not overlap enough to suppress
    # each other, so several pieces (none of them the whole) survive.
    kept = nms(g, scores, threshold=0.5, metric="ios")
    assert len(kept) > 2
    assert max(iou(g[k], building) for k in kept) < 0.5


def test_object_seen_by_eight_windows_in_a_row_is_one_group():
    rng = np.random.default_rng(3)
    wins = window_boxes(2100, 320)
    assert len(wins) == 9
    road = box(40, 120, 2060, 170)  # ~2000 px long
    g, obj, win, wb, scores, cls = tile_views([road], wins, rng)
    assert len(set(win.tolist())) >= 8
    order, offsets = union_groups(g, scores, cls, win, wb)
    assert len(offsets) == 2
    (merged,) = merge_group_geometries(g, order, offsets, kind="polygon")
    assert iou(merged, road) > 0.98


# --------------------------------------------------------------------------- no welding


@pytest.mark.parametrize("wall_x", [480.0, 560.0, 600.0])  # a window's left edge, a right edge, neither
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_touching_buildings_stay_two(wall_x, seed):
    rng = np.random.default_rng(seed)
    wins = window_boxes(1200, 600)
    left, right = box(100, 100, wall_x, 420), box(wall_x, 100, 1000, 420)  # sharing a wall
    g, obj, win, wb, scores, cls = tile_views([left, right], wins, rng, noise=0.5)
    order, offsets = union_groups(g, scores, cls, win, wb, threshold=0.5, metric="ios")
    groups = groups_of(order, offsets)
    assert len(groups) == 2
    assert sorted(sorted(set(obj[grp].tolist())) for grp in groups) == [[0], [1]]
    merged = merge_group_geometries(g, order, offsets, kind="polygon")
    truth = [left, right][obj[groups[0][0]]], [left, right][obj[groups[1][0]]]
    assert iou(merged[0], truth[0]) > 0.97 and iou(merged[1], truth[1]) > 0.97


def test_zone_ratio_stops_slivers_from_linking():
    # The shared wall lies on window B's left edge: A's view of the left house pokes a ~0.5 px sliver
    # into the zone both windows saw, where B sees the right house. Inside that zone the sliver is
    # (almost) covered by the right house, so ios alone would link them.
    wins = np.array([[0, 0, 320, 320], [240, 0, 560, 320]], dtype=np.float64)
    left = Polygon([(200, 100), (240.5, 100), (240.4, 140), (200, 140)])  # crosses x = 240 by ~0.5 px
    right_a = box(240, 100, 280, 140)
    right_b = box(240.1, 100.2, 280.2, 139.9)
    g = np.array([left, right_a, right_b], dtype=object)
    win = np.array([0, 0, 1])
    zone = box(240, 0, 320, 320)
    sliver = left.intersection(zone)
    assert sliver.intersection(right_b).area / sliver.area > 0.5  # ios inside the zone is high
    assert sliver.area < MIN_ZONE_RATIO * right_b.intersection(zone).area
    order, offsets = union_groups(g, [0.9, 0.8, 0.7], [0, 0, 0], win, wins[win])
    assert sorted(sorted(grp) for grp in groups_of(order, offsets)) == [[0], [1, 2]]


def test_row_of_six_touching_houses_stays_six():
    rng = np.random.default_rng(5)
    wins = window_boxes(1200, 600)
    houses = [box(430 + 60 * k, 250, 490 + 60 * k, 290) for k in range(6)]  # x 430..790, walls shared
    g, obj, win, wb, scores, cls = tile_views(houses, wins, rng, noise=0.5, min_area=50)
    assert len(g) > 12  # most houses are seen by two or more windows
    order, offsets = union_groups(g, scores, cls, win, wb)
    groups = groups_of(order, offsets)
    assert len(groups) == 6
    assert sorted(tuple(set(obj[grp].tolist())) for grp in groups) == [(k,) for k in range(6)]


@pytest.mark.parametrize("first_better", [True, False])
def test_blob_in_one_window_never_welds_two_objects_of_another(first_better):
    wins = np.array([[240, 0, 560, 320], [480, 0, 800, 320]], dtype=np.float64)  # zone x 480..560
    x, y = box(490, 100, 520, 130), box(520, 100, 550, 130)  # two touching objects inside the zone
    blob = box(490.2, 100.1, 549.8, 130.2)  # window B saw them as one
    # jitter decides which of A's detections overlaps the blob best; either way they stay apart
    x_a = box(490, 100, 520, 130) if first_better else box(491, 101, 520, 131)
    y_a = box(521, 101, 550, 131) if first_better else box(520, 100, 550, 130)
    g = np.array([x_a, y_a, blob], dtype=object)
    win = np.array([0, 0, 1])
    for metric in ("ios",):
        order, offsets = union_groups(g, [0.9, 0.8, 0.7], [0, 0, 0], win, wins[win], metric=metric)
        groups = groups_of(order, offsets)
        assert len(groups) == 2
        assert not any({0, 1} <= set(grp) for grp in groups)
        assert x.area and y.area  # (shapes used above)


def test_blob_does_not_take_a_house_from_its_true_duplicate():
    # A sees houses X and Y, B sees them as one blob, C sees Y again. Under ios every link with the
    # blob is a perfect 1.0, above Y's true duplicate pair (A, C); taken first, blob + X_A + Y_C would
    # weld X to Y across windows. Links are taken by iou, where the duplicate pair comes first.
    wins = np.array([[0, 0, 320, 320], [240, 0, 560, 320], [0, 240, 320, 560]], dtype=np.float64)
    x_a, y_a = box(245, 250, 275, 280), box(275, 250, 305, 280)
    blob = box(244.8, 249.8, 305.2, 280.2)  # holds all three other views: ios 1 with each
    y_c = box(275.3, 250.4, 305.1, 280.1)
    g = np.array([x_a, y_a, blob, y_c], dtype=object)
    win = np.array([0, 0, 1, 2])
    for metric in MATCH_METRICS:
        order, offsets = union_groups(g, [0.9, 0.8, 0.7, 0.6], [0] * 4, win, wins[win], metric=metric,
                                      threshold=0.4)
        groups = [set(grp) for grp in groups_of(order, offsets)]
        assert {1, 3} in [grp - {2} for grp in groups]  # Y's two views together, the blob maybe with them
        assert not any(0 in grp and grp & {1, 3} for grp in groups)  # and never with X


# --------------------------------------------------------------------------- duplicates


def test_duplicates_of_a_small_object_keep_the_best_view_unchanged():
    wins = np.array([[0, 0, 320, 320], [240, 0, 560, 320], [0, 240, 320, 560]], dtype=np.float64)
    car = Polygon([(250, 100), (290, 104), (288, 122), (249, 118)])
    views = [car, affinity.translate(car, 0.4, -0.3), affinity.rotate(car, 1.0), box(245, 300, 260, 310)]
    g = np.array(views, dtype=object)
    win = np.array([0, 1, 0, 2])  # the first and third come from the same window
    scores = np.array([0.6, 0.9, 0.95, 0.5])
    cls = np.array([1, 1, 1, 2])
    demote = np.array([False, True, False, False])  # the 0.9 view touches an inner window edge
    order, offsets = union_groups(g, scores, cls, win, wins[win], demote=demote)
    groups = groups_of(order, offsets)
    # 2 (best overall, window 0) links to 1 (window 1); 0 is from window 0 as well, so stays apart
    assert groups == [[2, 1], [0], [3]]
    check_csr(order, offsets, 4, scores, demote)
    merged = merge_group_geometries(g, order, offsets, kind="polygon", demote=demote)
    assert merged[0] is g[2] and merged[1] is g[0] and merged[2] is g[3]  # unchanged objects
    np.testing.assert_array_equal(merge_group_scores(scores, order, offsets), np.float32([0.95, 0.6, 0.5]))
    assert merge_group_scores(scores, order, offsets).dtype == np.float32
    leaders = group_leaders(order, offsets)
    assert leaders.tolist() == [2, 0, 3] and cls[leaders].tolist() == [1, 1, 2]


def test_merge_geometry_is_the_best_non_demoted_member():
    wins = np.array([[0, 0, 280, 320], [200, 0, 520, 320]], dtype=np.float64)  # zone x 200..280
    whole = box(250, 100, 300, 130)  # window B sees it whole, window A cut at x = 280
    cut = box(250, 100, 280, 130)
    g = np.array([cut, whole], dtype=object)
    win = np.array([0, 1])
    scores = np.array([0.95, 0.7])
    demote = np.array([True, False])
    order, offsets = union_groups(g, scores, [0, 0], win, wins[win], demote=demote)
    assert groups_of(order, offsets) == [[1, 0]]  # demoted ranks last
    merged = merge_group_geometries(g, order, offsets, kind="polygon", demote=demote)
    assert merged[0] is g[1]
    # Without the flags the cut view leads, and covers the whole one by ios (1 > 0.5): kept as is.
    order2, offsets2 = union_groups(g, scores, [0, 0], win, wins[win])
    assert groups_of(order2, offsets2) == [[0, 1]]
    assert merge_group_geometries(g, order2, offsets2, kind="polygon")[0] is g[0]
    # Every member demoted: no view is known whole, so the group is united.
    merged = merge_group_geometries(g, order2, offsets2, kind="polygon", demote=np.array([True, True]))
    assert merged[0] is not g[0] and merged[0] is not g[1] and merged[0].equals(whole)


def test_a_group_with_a_member_flagged_never_duplicate_is_united():
    """A part inside the whole covers it by ios (1 > 0.5), so the better scored part would be kept as a
    duplicate; flagged (the caller knows no window saw the object whole), the group is the union."""
    part, whole = box(0, 0, 100, 100), box(0, 0, 400, 100)
    g = np.array([part, whole], dtype=object)
    order, offsets = np.array([0, 1]), np.array([0, 2])  # the part leads
    assert merge_group_geometries(g, order, offsets, kind="polygon")[0] is g[0]
    for flags in ([False, True], [True, False]):
        (m,) = merge_group_geometries(g, order, offsets, kind="polygon", never_duplicate=np.array(flags))
        assert m.equals(whole)
    with pytest.raises(ValueError, match="never_duplicate has length 1"):
        merge_group_geometries(g, order, offsets, kind="polygon", never_duplicate=np.array([True]))


def test_partial_views_that_do_not_cover_each_other_are_united():
    wins = np.array([[0, 0, 320, 320], [240, 0, 560, 320]], dtype=np.float64)
    truck = box(200, 100, 360, 140)  # longer than the 80 px overlap: no window sees it whole
    a, b = truck.intersection(box(*wins[0])), truck.intersection(box(*wins[1]))
    g = np.array([a, b], dtype=object)
    seam = np.array([True, True])  # both cut by an inner window edge
    order, offsets = union_groups(g, [0.8, 0.9], [0, 0], [0, 1], wins, demote=seam)
    assert groups_of(order, offsets) == [[1, 0]]
    for kind in GEOMETRY_KINDS:
        (m,) = merge_group_geometries(g, order, offsets, kind=kind, demote=seam)
        assert m.equals(truck)
        assert_clean([m])
    # Unflagged, the two halves overlap by ios 2/3 > 0.5 and pass for duplicates: the best one is kept.
    assert merge_group_geometries(g, order, offsets, kind="polygon")[0] is g[1]
    assert merge_group_geometries(g, order, offsets, kind="polygon", threshold=0.7)[0].equals(truck)


# --------------------------------------------------------------------------- rules


def test_same_window_never_grouped_and_classes_respected():
    wins = np.array([[0, 0, 320, 320], [240, 0, 560, 320]], dtype=np.float64)
    a = box(250, 50, 290, 90)
    g = np.array([a, a, a], dtype=object)
    scores = [0.9, 0.8, 0.7]
    # two identical detections from one window: distinct objects for the model
    order, offsets = union_groups(g[:2], scores[:2], [0, 0], [0, 0], wins[[0, 0]])
    assert groups_of(order, offsets) == [[0], [1]]
    # different windows, different classes: apart unless class_agnostic
    order, offsets = union_groups(g[:2], scores[:2], [0, 1], [0, 1], wins)
    assert groups_of(order, offsets) == [[0], [1]]
    order, offsets = union_groups(g[:2], scores[:2], [0, 1], [0, 1], wins, class_agnostic=True)
    assert groups_of(order, offsets) == [[0, 1]]
    order, offsets = union_groups(g[:2], scores[:2], None, [0, 1], wins, class_agnostic=True)
    assert groups_of(order, offsets) == [[0, 1]]
    # string classes work too
    order, offsets = union_groups(g[:2], scores[:2], ["car", "car"], [0, 1], wins)
    assert groups_of(order, offsets) == [[0, 1]]


def test_overlap_outside_the_shared_zone_does_not_count():
    # Window A sees a building whole; window B only its part inside B, which covers a different area
    # outside the zone: the metric is measured in the zone only, where they agree.
    wins = np.array([[0, 0, 320, 320], [240, 0, 560, 320]], dtype=np.float64)
    big = box(100, 100, 300, 200)
    part = box(240, 100, 300, 200)
    g = np.array([big, part], dtype=object)
    order, offsets = union_groups(g, [0.9, 0.8], [0, 0], [0, 1], wins, metric="iou", threshold=0.9)
    assert len(offsets) == 2  # iou in the zone is 1, though over the whole shapes it is 0.3
    # touching only along the zone's edge: no area inside it, no link
    g2 = np.array([box(200, 100, 240, 200), box(240, 100, 300, 200)], dtype=object)
    order, offsets = union_groups(g2, [0.9, 0.8], [0, 0], [0, 1], wins, threshold=0.0)
    assert len(offsets) == 3
    # windows that do not overlap have no zone at all
    far = np.array([[0, 0, 320, 320], [400, 0, 720, 320]], dtype=np.float64)
    order, offsets = union_groups(g[:1].repeat(2), [0.9, 0.8], [0, 0], [0, 1], far, threshold=0.0)
    assert len(offsets) == 3


def test_threshold_edges():
    wins = np.array([[0, 0, 320, 320], [240, 0, 560, 320]], dtype=np.float64)
    a, b = box(250, 0, 290, 10), box(270, 0, 310, 10)  # ios 0.5, iou 1/3 inside the zone
    g = np.array([a, b], dtype=object)
    for metric, value in (("ios", 0.5), ("iou", 1 / 3)):
        for thr, linked in ((value - 1e-9, True), (value, False), (0.0, True), (1.0, False)):
            order, offsets = union_groups(g, [0.9, 0.8], [0, 0], [0, 1], wins, threshold=thr, metric=metric)
            assert (len(offsets) == 2) == linked, (metric, thr)


def test_empty_missing_and_invalid_geometries():
    order, offsets = union_groups([], [], [], [], np.zeros((0, 4)))
    assert order.dtype == np.int64 and order.tolist() == [] and offsets.tolist() == [0]
    assert merge_group_geometries([], order, offsets, kind="polygon").tolist() == []
    assert merge_group_scores([], order, offsets).tolist() == []
    wins = np.array([[0, 0, 320, 320], [240, 0, 560, 320]], dtype=np.float64)
    bowtie = Polygon([(250, 0), (300, 50), (300, 0), (250, 50)])  # self-intersecting, area 1250 repaired
    tri = Polygon([(250, 0), (275, 25), (250, 50)])  # one lobe of the bowtie
    g = np.array([bowtie, tri, None, Polygon(), box(260, 60, 300, 100)], dtype=object)
    win = np.array([0, 1, 0, 1, 1])
    order, offsets = union_groups(g, [0.9, 0.8, 0.7, 0.6, 0.5], [0] * 5, win, wins[win])
    groups = groups_of(order, offsets)
    assert [0, 1] in groups and len(groups) == 4  # lobe inside the repaired bowtie: ios 1
    for kind in GEOMETRY_KINDS:
        merged = merge_group_geometries(g, order, offsets, kind=kind)
        pair = merged[groups.index([0, 1])]
        assert pair.is_valid and pair.area == pytest.approx(1250)  # the repaired bowtie covers its lobe
        assert merged[groups.index([2])] is None and merged[groups.index([3])] is g[3]  # singletons as given


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metric="dice"), "metric"),
        (dict(threshold=-0.1), "threshold"),
        (dict(threshold=float("nan")), "threshold"),
        (dict(threshold="high"), "threshold"),
        (dict(scores=[0.9]), "scores"),
        (dict(class_ids=[0, 1, 2]), "class_ids"),
        (dict(class_ids=None), "class_ids"),
        (dict(windows=[0]), "windows"),
        (dict(window_boxes=np.zeros((2, 3))), "window_boxes"),
        (dict(demote=[True]), "demote"),
    ],
)
def test_union_groups_validation(kwargs, match):
    args = dict(geoms=[box(0, 0, 1, 1), box(0, 0, 1, 1)], scores=[0.9, 0.8], class_ids=[0, 0], windows=[0, 1],
                window_boxes=np.array([[0, 0, 320, 320], [240, 0, 560, 320]], dtype=float))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as exc:
        union_groups(**args)
    assert "\n" not in str(exc.value)


def test_merge_group_geometries_validation():
    g = [box(0, 0, 1, 1), box(0, 0, 1, 1)]
    with pytest.raises(ValueError, match="kind"):
        merge_group_geometries(g, [0, 1], [0, 2], kind="circle")
    with pytest.raises(ValueError, match="metric"):
        merge_group_geometries(g, [0, 1], [0, 2], kind="box", metric="giou")
    with pytest.raises(ValueError, match="offsets"):
        merge_group_geometries(g, [0, 1], [0, 1], kind="box")
    with pytest.raises(ValueError, match="order"):
        merge_group_geometries(g, [0, 5], [0, 2], kind="box")
    with pytest.raises(ValueError, match="demote"):
        merge_group_geometries(g, [0, 1], [0, 2], kind="box", demote=[True])


def test_package_api():
    assert MERGE_METHODS == ("suppress", "union")
    for name in ("MATCH_METRICS", "SORTERS", "pair_overlaps", "sort_order", "nms", "union_groups",
                 "merge_group_geometries", "merge_group_scores", "group_leaders", "MERGE_METHODS"):
        assert name in merge_pkg.__all__ and hasattr(merge_pkg, name)


# --------------------------------------------------------------------------- brute-force reference


def ref_union_groups(geoms, scores, cls, windows, boxes, threshold, metric, class_agnostic, demote=None,
                     within_window=False, refuse=True):
    """All pairs, plain shapely per pair, links sorted by (-iou in the zone, i, j), union-find on
    Python sets; a join is refused if it would put together two detections of one window that are not
    linked (unless not ``refuse``: then the groups are the connected components of the links)."""
    n = len(geoms)
    geoms = [shapely.make_valid(g) if g is not None and not g.is_valid else g for g in geoms]
    links = []
    for a in range(n):
        for b in range(a + 1, n):
            if (windows[a] == windows[b]) != within_window or (not class_agnostic and cls[a] != cls[b]):
                continue
            x0, y0 = max(boxes[a][0], boxes[b][0]), max(boxes[a][1], boxes[b][1])
            x1, y1 = min(boxes[a][2], boxes[b][2]), min(boxes[a][3], boxes[b][3])
            if x1 <= x0 or y1 <= y0:
                continue
            zone = box(x0, y0, x1, y1)
            pa, pb = geoms[a].intersection(zone), geoms[b].intersection(zone)
            area_a, area_b = pa.area, pb.area
            if area_a <= 0 or area_b <= 0 or min(area_a, area_b) < MIN_ZONE_RATIO * max(area_a, area_b):
                continue
            inter = pa.intersection(pb).area
            denom = min(area_a, area_b) if metric == "ios" else area_a + area_b - inter
            value = min(max(inter / denom, 0.0), 1.0)
            if value > threshold:
                links.append((-min(max(inter / (area_a + area_b - inter), 0.0), 1.0), a, b))
    links.sort()
    linked = {(a, b) for _, a, b in links} | {(b, a) for _, a, b in links}
    members = {k: {k} for k in range(n)}
    owner = list(range(n))
    for _, a, b in links:
        ga, gb = owner[a], owner[b]
        if ga == gb or refuse and any(windows[x] == windows[y] and (x, y) not in linked
                                      for x in members[ga] for y in members[gb]):
            continue
        for k in members[gb]:
            owner[k] = ga
        members[ga] |= members.pop(gb)
    d = [False] * n if demote is None else list(demote)
    rank = {k: r for r, k in enumerate(sorted(range(n), key=lambda k: (d[k], -scores[k], k)))}
    groups = [sorted(m, key=rank.get) for m in members.values()]
    return sorted(groups, key=lambda grp: rank[grp[0]])


def rectilinear_scene(rng: np.random.Generator, n_objects: int, size: int = 200, patch: int = 80):
    """Integer rectilinear shapes (boxes and L-shapes) seen by a small window grid, with integer jitter:
    every area is an exact integer, so metric values (and their ties) are the same however computed."""
    wins = window_boxes(size, size, patch, 0.25)
    geoms, win, cls = [], [], []
    for _ in range(n_objects):
        x, y = rng.integers(0, size - 10, 2)
        w, h = rng.integers(4, 60, 2)
        shape = box(x, y, x + w, y + h)
        if rng.random() < 0.4 and w > 6 and h > 6:  # an L
            shape = shape.difference(box(x + w // 2, y + h // 2, x + w, y + h))
        c = int(rng.integers(0, 2))
        for k, wb in enumerate(wins):
            if rng.random() < 0.3 or not shape.intersects(box(*wb)):
                continue
            dx0, dy0, dx1, dy1 = rng.integers(-1, 2, 4)
            view = shape.intersection(box(wb[0] + dx0, wb[1] + dy0, wb[2] + dx1, wb[3] + dy1))
            view = shapely.make_valid(view)
            if view.area <= 0 or view.geom_type not in ("Polygon", "MultiPolygon"):
                continue
            geoms.append(view)
            win.append(k)
            cls.append(c if rng.random() < 0.9 else 1 - c)
    n = len(geoms)
    g = np.empty(n, dtype=object)
    g[:] = geoms
    win = np.asarray(win, dtype=np.int64)
    scores = rng.permutation(n) / max(n, 1) * 0.9 + 0.05
    demote = rng.random(n) < 0.3
    return g, scores, np.asarray(cls), win, wins[win] if n else np.zeros((0, 4)), demote


@pytest.mark.parametrize("seed", range(12))
def test_union_groups_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    g, scores, cls, win, wb, demote = rectilinear_scene(rng, 40)
    assert len(g) > 30
    for metric in MATCH_METRICS:
        for thr in (0.3, 0.5, 0.8):
            for agnostic in (False, True):
                got = union_groups(g, scores, cls, win, wb, threshold=thr, metric=metric,
                                   class_agnostic=agnostic, demote=demote)
                check_csr(*got, len(g), scores, demote)
                want = ref_union_groups(g, scores, cls, win, wb, thr, metric, agnostic, demote)
                assert groups_of(*got) == want
    # the scenes must exercise grouping, including refused joins
    ref = ref_union_groups(g, scores, cls, win, wb, 0.5, "ios", True)
    assert max(len(grp) for grp in ref) >= 3


@pytest.mark.parametrize("seed", range(12))
def test_union_groups_within_windows_matches_brute_force(seed):
    """Within each window: the overlapping views of different objects are linked, and a group holds only
    detections all linked to each other."""
    rng = np.random.default_rng(seed)
    g, scores, cls, win, wb, demote = rectilinear_scene(rng, 60, size=160)
    refused = 0
    for metric in MATCH_METRICS:
        for thr in (0.1, 0.3, 0.5):
            for agnostic in (False, True):
                got = union_groups(g, scores, cls, win, wb, threshold=thr, metric=metric, class_agnostic=agnostic,
                                   demote=demote, within_window=True)
                check_csr(*got, len(g), scores, demote)
                want = ref_union_groups(g, scores, cls, win, wb, thr, metric, agnostic, demote, within_window=True)
                assert groups_of(*got) == want
                assert all(len({win[k] for k in grp}) == 1 for grp in want)
                chained = ref_union_groups(g, scores, cls, win, wb, thr, metric, agnostic, demote, within_window=True,
                                           refuse=False)
                refused += len(want) - len(chained)  # groups the chaining would have welded
    assert refused > 0


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_objects=st.integers(0, 25),
    metric=st.sampled_from(MATCH_METRICS),
    threshold=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    class_agnostic=st.booleans(),
)
def test_union_groups_matches_brute_force_hypothesis(seed, n_objects, metric, threshold, class_agnostic):
    g, scores, cls, win, wb, demote = rectilinear_scene(np.random.default_rng(seed), n_objects, size=160)
    got = union_groups(g, scores, cls, win, wb, threshold=threshold, metric=metric,
                       class_agnostic=class_agnostic, demote=demote)
    assert groups_of(*got) == ref_union_groups(g, scores, cls, win, wb, threshold, metric, class_agnostic,
                                               demote)


@pytest.mark.parametrize("seed", range(4))
def test_union_groups_matches_brute_force_on_rotated_shapes(seed):
    # Float coordinates: no exact ties, so the order of links is the same however it is rounded.
    rng = np.random.default_rng(100 + seed)
    wins = window_boxes(300, 300, 120, 0.25)
    geoms, win = [], []
    for _ in range(30):
        cx, cy = rng.uniform(20, 280, 2)
        shape = affinity.rotate(box(cx - rng.uniform(5, 40), cy - rng.uniform(4, 20), cx + rng.uniform(5, 40),
                                    cy + rng.uniform(4, 20)), rng.uniform(0, 180))
        for k, wb in enumerate(wins):
            view = perturb(shape, rng, 0.3).intersection(box(*wb))
            if view.area > 20 and view.geom_type == "Polygon":
                geoms.append(view)
                win.append(k)
    g = np.array(geoms, dtype=object)
    win = np.array(win)
    scores = rng.uniform(0, 1, len(g))
    cls = rng.integers(0, 2, len(g))
    for metric in MATCH_METRICS:
        got = union_groups(g, scores, cls, win, wins[win], metric=metric)
        assert groups_of(*got) == ref_union_groups(g, scores, cls, win, wins[win], 0.5, metric, False)


# --------------------------------------------------------------------------- kinds and cleanliness


def test_box_and_rotated_kinds_contain_all_members():
    rng = np.random.default_rng(9)
    wins = window_boxes(1200, 1200)
    shapes = [affinity.rotate(box(100, 500, 900, 700), 30), l_building_with_hole(150, 150, 500, 10),
              Polygon([(900, 900), (1100, 950), (1000, 1150)])]
    g, obj, win, wb, scores, cls = tile_views(shapes, wins, rng)
    demote = seam_flags(g, wb, 1200, 1200)
    order, offsets = union_groups(g, scores, cls, win, wb, demote=demote)
    groups = groups_of(order, offsets)
    assert len(groups) == 3
    united = 0
    for kind in GEOMETRY_KINDS:
        merged = merge_group_geometries(g, order, offsets, kind=kind, demote=demote)
        assert_clean(merged)
        for m, grp in zip(merged, groups):
            if any(m is g[k] for k in grp):  # a plain duplicate: its best whole view, unchanged
                assert not demote[[k for k in grp if m is g[k]][0]]
                continue
            united += 1
            members = shapely.union_all(g[grp])
            assert m.buffer(1e-6).contains(members)
            if kind == "polygon":
                assert m.equals(shapely.make_valid(members)) or iou(m, members) > 1 - 1e-9
            else:
                assert len(m.exterior.coords) == 5 and not m.interiors  # a rectangle
                if kind == "box":
                    assert m.equals(shapely.envelope(members))
                else:
                    assert m.area <= shapely.envelope(members).area + 1e-6
    assert united >= 6  # the two big objects, in each kind


def test_union_output_is_polygonal_even_when_members_only_touch():
    # Members whose union would carry a dangling line or point must still give a (Multi)Polygon.
    a = box(0, 0, 10, 10)
    b = box(10, 10, 20, 20)  # touches a at one corner
    c = Polygon([(20, 0), (30, 0), (30, 10), (20, 10), (20, 0)])
    g = np.array([a, b, c], dtype=object)
    merged = merge_group_geometries(g, np.array([0, 1, 2]), np.array([0, 3]), kind="polygon")
    assert_clean(merged)
    assert merged[0].geom_type == "MultiPolygon" and merged[0].area == pytest.approx(300)
    # nothing polygonal at all in the union: fall back to the best member
    flat = np.array([Polygon([(0, 0), (1, 1), (2, 2)]), Polygon([(0, 0), (2, 2), (4, 4)])], dtype=object)
    out = merge_group_geometries(flat, np.array([0, 1]), np.array([0, 2]), kind="polygon", threshold=0.5)
    assert out[0] is flat[0]


def test_singletons_are_returned_unchanged():
    g = np.array([box(0, 0, 1, 1), Polygon([(5, 5), (6, 5), (6, 6)]), MultiPolygon([box(9, 9, 10, 10)])],
                 dtype=object)
    for kind in GEOMETRY_KINDS:
        out = merge_group_geometries(g, np.array([2, 0, 1]), np.array([0, 1, 2, 3]), kind=kind)
        assert out[0] is g[2] and out[1] is g[0] and out[2] is g[1]


# --------------------------------------------------------------------------- overlap bounds


def random_shapes(rng: np.random.Generator, n: int) -> list:
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(0, 60, 2) + 1e4  # far from the origin, like global pixels
        kind = rng.integers(0, 4)
        if kind == 0:
            s = affinity.rotate(box(cx - rng.uniform(1, 20), cy - rng.uniform(1, 8), cx + rng.uniform(1, 20),
                                    cy + rng.uniform(1, 8)), rng.uniform(0, 180))
        elif kind == 1:
            k = rng.integers(3, 20)
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            r = rng.uniform(3, 20) * rng.uniform(0.5, 1.0, k)
            s = Polygon(np.c_[cx + r * np.cos(ang), cy + r * np.sin(ang)])
        elif kind == 2:
            s = box(cx, cy, cx + 30, cy + 30).difference(box(cx + rng.uniform(5, 25), cy + rng.uniform(5, 25),
                                                             cx + 30, cy + 30))
        else:
            s = Polygon(rng.uniform(0, 30, (rng.integers(3, 8), 2)) + [cx, cy])
        out.append(s)
    return polygonal_parts(shapely.make_valid(np.array(out, dtype=object))).tolist()


@pytest.mark.parametrize("seed", range(3))
def test_intersection_bounds_hold(seed):
    rng = np.random.default_rng(seed)
    shapes = np.array(random_shapes(rng, 250), dtype=object)
    i, j = np.triu_indices(len(shapes), 1)
    hit = shapely.intersects(shapes[i], shapes[j])
    i, j = i[hit], j[hit]
    area, sup = shapely.area(shapes), support_numbers(shapes)
    lower, upper = intersection_area_bounds(area[i], area[j], sup[i], sup[j])
    exact = exact_intersection_areas(shapes[i], shapes[j])
    tol = 1e-7 * np.maximum(area[i], area[j])
    assert np.all(lower <= exact + tol) and np.all(exact <= upper + tol)
    small = np.minimum(area[i], area[j])
    assert np.mean(upper < 0.9 * small) > 0.5 and np.mean(lower > 0.1 * small) > 0.05  # not vacuous
    # near copies of convex shapes: the lower bound alone decides
    copies = np.array([perturb(s, rng, 0.2) for s in shapes], dtype=object)
    lo2, _ = intersection_area_bounds(area, shapely.area(copies), sup, support_numbers(copies))
    convex = np.abs(shapely.area(shapely.convex_hull(shapes)) - area) < 1e-9 * area
    lb_ios = (lo2 / np.minimum(area, shapely.area(copies)))[convex]
    assert convex.sum() > 50 and np.mean(lb_ios > 0.5) > 0.8
    for metric in MATCH_METRICS:
        for thr in (0.0, 0.3, 0.7, 1.0):
            above, value = decide_overlaps(shapes[i], shapes[j], area[i], area[j], sup[i], sup[j], metric, thr)
            ia, ib = area[i], area[j]
            denom = np.minimum(ia, ib) if metric == "ios" else ia + ib - exact
            truth = np.clip(exact / denom, 0, 1) > thr
            assert np.array_equal(above, truth)
            asked = ~np.isnan(value)
            np.testing.assert_allclose(value[asked], np.clip(exact / denom, 0, 1)[asked], atol=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_pairs_above_are_the_exact_pairs_above(seed):
    rng = np.random.default_rng(20 + seed)
    shapes = random_shapes(rng, 200) + [None, Polygon(), Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])]
    g = np.array(shapes, dtype=object)
    groups = rng.integers(0, 2, len(g))
    for metric in MATCH_METRICS:
        for grp in (None, groups):
            i, j, v = pair_overlaps(g, metric, groups=grp)
            for thr in (0.0, 0.2, 0.6, 1.0):
                a, b = pairs_above(g, metric, thr, groups=grp)
                assert a.dtype == np.int64 and b.dtype == np.int64
                assert sorted(zip(a.tolist(), b.tolist())) == sorted(zip(i[v > thr].tolist(), j[v > thr].tolist()))
    with pytest.raises(ValueError, match="groups"):
        pairs_above(g, "ios", 0.5, groups=groups[:-1])


def test_support_numbers_and_missing():
    g = np.array([box(0, 0, 2, 1), None, Polygon()], dtype=object)
    sup = support_numbers(g)
    assert sup.shape == (3, 16)
    np.testing.assert_allclose(sup[0, [0, 4, 8, 12]], [2, 1, 0, 0], atol=1e-12)  # +x, +y, -x, -y
    assert np.isnan(sup[1:]).all()
    lo, hi = intersection_area_bounds(np.array([2.0, 2.0]), np.array([0.0, 0.0]), sup[[0, 0]], sup[1:])
    assert lo.tolist() == [0, 0] and hi.tolist() == [0, 0]


@settings(max_examples=200, deadline=None)
@given(
    pts=st.lists(st.tuples(st.integers(-6, 6), st.integers(-6, 6)), min_size=3, max_size=9),
    scale=st.sampled_from([1.0, 1e-3, 1e4]),
)
def test_star_screen_never_passes_an_invalid_ring(pts, scale):
    # The numpy screen that spares GEOS validity checks may only say "valid" when GEOS agrees.
    poly = Polygon(np.asarray(pts, dtype=float) * scale + 5e4)
    _, simple = support_numbers(np.array([poly], dtype=object), simple=True)
    if simple[0]:
        assert poly.is_valid


def test_pipeline_union_joins_fragments_across_classes_only_when_class_agnostic():
    """The job's merge: a 400 px building cut by two 320 px windows (overlap 80 px), its two fragments
    labelled with different classes, is one object only with class_agnostic."""
    import shapely as _shapely

    from tiler.config import JobConfig
    from tiler.detections import Detections
    from tiler.grid import plan_windows
    from tiler.pipeline import merge

    grid = plan_windows(560, 320, (320, 320), (0.25, 0.25))
    assert grid.n_cols == 2 and grid.n_rows == 1
    building = _shapely.box(100, 50, 500, 250)
    frags = [building.intersection(_shapely.box(*b)) for b in grid.clipped_bounds()]
    dets = Detections.from_geometries(np.array(frags, dtype=object), [1, 2], [0.9, 0.8], window=[0, 1],
                                      on_seam=[True, True])
    for agnostic, expect in ((False, 2), (True, 1)):
        cfg = JobConfig(source="x.tif", model="m.pt", merge="union", class_agnostic=agnostic)
        out = merge(cfg, dets, "segment", grid.clipped_bounds())
        assert len(out) == expect
        if expect == 1:
            assert out.geometries()[0].equals(building) and out.class_id[0] == 1
