"""Tests for tiler.merge: NMS on real geometries vs a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon, box

from tiler.merge import MATCH_METRICS, SORTERS, nms, pair_overlaps, sort_order


# --------------------------------------------------------------------------- helpers


def rotated_boxes(cx, cy, w, h, angle_deg) -> np.ndarray:
    """Vectorised rotated rectangles as shapely Polygons."""
    cx, cy, w, h, a = (np.asarray(v, dtype=np.float64) for v in (cx, cy, w, h, angle_deg))
    t = np.deg2rad(a)
    c, s = np.cos(t), np.sin(t)
    local = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    dx = local[None, :, 0] * w[:, None]
    dy = local[None, :, 1] * h[:, None]
    x = cx[:, None] + dx * c[:, None] - dy * s[:, None]
    y = cy[:, None] + dx * s[:, None] + dy * c[:, None]
    return shapely.polygons(np.stack([x, y], axis=-1))


def clustered_detections(seed: int, n: int, rotated: bool):
    """n boxes jittered around a few cluster centres so that many overlap."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // 25)
    centres = rng.uniform(0, 1000, size=(n_clusters, 2))
    which = rng.integers(0, n_clusters, size=n)
    xy = centres[which] + rng.normal(0, 15, size=(n, 2))
    w = rng.uniform(8, 60, size=n)
    h = rng.uniform(8, 60, size=n)
    angle = rng.uniform(0, 180, size=n) if rotated else np.zeros(n)
    class_ids = rng.integers(0, 3, size=n)
    # Like detections of one object from overlapping tiles: a third of the
    # boxes are slightly jittered copies (same class) of another box, so that
    # high iou thresholds also see suppressions.
    dup = rng.random(n) < 1 / 3
    src = rng.integers(0, n, size=n)
    xy[dup] = xy[src[dup]] + rng.normal(0, 1.0, size=(dup.sum(), 2))
    w[dup] = w[src[dup]] * rng.uniform(0.95, 1.05, size=dup.sum())
    h[dup] = h[src[dup]] * rng.uniform(0.95, 1.05, size=dup.sum())
    angle[dup] = angle[src[dup]] + (rng.normal(0, 2, size=dup.sum()) if rotated else 0)
    class_ids[dup] = class_ids[src[dup]]
    scores = rng.permutation(n) / n + rng.uniform(0, 1e-4)  # distinct, in [0, 1)
    if rotated:
        geoms = rotated_boxes(xy[:, 0], xy[:, 1], w, h, angle)
    else:
        geoms = shapely.box(xy[:, 0] - w / 2, xy[:, 1] - h / 2, xy[:, 0] + w / 2, xy[:, 1] + h / 2)
    return geoms, scores, class_ids


def ref_metric(a: Polygon, b: Polygon, metric: str) -> float:
    inter = a.intersection(b).area
    if metric == "ios":
        denom = min(a.area, b.area)
    else:
        denom = a.area + b.area - inter
    return 0.0 if denom <= 0 else min(max(inter / denom, 0.0), 1.0)


def ref_order(scores, geoms, sorter: str) -> list[int]:
    n = len(scores)
    if sorter == "score":
        return sorted(range(n), key=lambda k: (-scores[k], k))
    areas = [g.area for g in geoms]
    return sorted(
        range(n),
        key=lambda k: (-math.floor(scores[k] * 10 + 1e-6), -areas[k], -scores[k], k),
    )


def ref_nms(geoms, scores, class_ids, threshold, metric, class_agnostic, sorter) -> list[int]:
    """Brute force: every candidate against every kept detection, O(n^2)."""
    kept: list[int] = []
    for k in ref_order(list(scores), list(geoms), sorter):
        suppressed = False
        for m in kept:
            if not class_agnostic and class_ids[m] != class_ids[k]:
                continue
            if ref_metric(geoms[m], geoms[k], metric) > threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(k)
    return kept


def ref_nms_fast(geoms, scores, class_ids, threshold, metric, class_agnostic, sorter) -> list[int]:
    """Same brute force, but each candidate is tested against all kept ones with
    one vectorised shapely call (still O(n * kept), no spatial index)."""
    geoms = np.asarray(geoms, dtype=object)
    areas = shapely.area(geoms)
    kept: list[int] = []
    for k in ref_order(list(scores), list(geoms), sorter):
        if kept:
            ks = np.asarray(kept)
            if not class_agnostic:
                ks = ks[class_ids[ks] == class_ids[k]]
            if len(ks):
                inter = shapely.area(shapely.intersection(geoms[ks], geoms[k]))
                if metric == "ios":
                    denom = np.minimum(areas[ks], areas[k])
                else:
                    denom = areas[ks] + areas[k] - inter
                val = np.where(denom > 0, inter / np.where(denom > 0, denom, 1), 0.0)
                if np.any(np.clip(val, 0, 1) > threshold):
                    continue
        kept.append(k)
    return kept


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("rotated", [False, True], ids=["aabb", "rotated"])
@pytest.mark.parametrize("metric", MATCH_METRICS)
@pytest.mark.parametrize("class_agnostic", [True, False], ids=["agnostic", "per_class"])
@pytest.mark.parametrize("sorter", SORTERS)
@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_matches_brute_force(rotated, metric, class_agnostic, sorter, threshold, seed):
    geoms, scores, class_ids = clustered_detections(seed, 300, rotated)
    got = nms(geoms, scores, class_ids, threshold, metric, class_agnostic, sorter)
    want = ref_nms_fast(geoms, scores, class_ids, threshold, metric, class_agnostic, sorter)
    assert got.dtype == np.int64
    assert got.tolist() == want
    # The clustering must actually produce suppressions, else the test is vacuous.
    assert len(want) < len(geoms)


@pytest.mark.parametrize("rotated", [False, True], ids=["aabb", "rotated"])
def test_fast_reference_matches_pure_python_reference(rotated):
    # Guard the vectorised reference itself against the plainest possible loop.
    geoms, scores, class_ids = clustered_detections(7, 120, rotated)
    for metric in MATCH_METRICS:
        for sorter in SORTERS:
            args = (geoms, scores, class_ids, 0.3, metric, False, sorter)
            assert ref_nms_fast(*args) == ref_nms(*args) == nms(*args).tolist()


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.integers(0, 40), st.integers(0, 40),  # x, y
            st.integers(1, 20), st.integers(1, 20),  # w, h
            st.floats(0, 180),  # angle
            st.integers(0, 2),  # class
        ),
        min_size=0,
        max_size=40,
    ),
    metric=st.sampled_from(MATCH_METRICS),
    sorter=st.sampled_from(SORTERS),
    class_agnostic=st.booleans(),
    threshold=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    rotate=st.booleans(),
)
def test_nms_matches_brute_force_hypothesis(data, metric, sorter, class_agnostic, threshold, rotate):
    n = len(data)
    arr = np.asarray(data, dtype=np.float64).reshape(n, 6)
    if rotate:
        geoms = rotated_boxes(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4])
    else:
        geoms = shapely.box(arr[:, 0], arr[:, 1], arr[:, 0] + arr[:, 2], arr[:, 1] + arr[:, 3])
    scores = (np.arange(n)[::-1] + 0.5) / (n + 1)  # distinct, in (0, 1)
    scores = np.random.default_rng(n).permutation(scores)
    class_ids = arr[:, 5].astype(int)
    got = nms(geoms, scores, class_ids, threshold, metric, class_agnostic, sorter)
    want = ref_nms(list(geoms), scores, class_ids, threshold, metric, class_agnostic, sorter)
    assert got.tolist() == want


@pytest.mark.parametrize("metric", MATCH_METRICS)
@pytest.mark.parametrize("rotated", [False, True], ids=["aabb", "rotated"])
def test_pair_overlaps_matches_all_pairs(metric, rotated):
    geoms, _, _ = clustered_detections(3, 150, rotated)
    i, j, v = pair_overlaps(geoms, metric)
    assert i.dtype == np.int64 and j.dtype == np.int64
    assert np.all(i < j)
    got = {(a, b): x for a, b, x in zip(i.tolist(), j.tolist(), v.tolist())}
    assert len(got) == len(i)  # no duplicate pairs
    n = len(geoms)
    for a in range(n):
        for b in range(a + 1, n):
            if geoms[a].intersects(geoms[b]):
                assert (a, b) in got
                assert got[(a, b)] == pytest.approx(ref_metric(geoms[a], geoms[b], metric), abs=1e-9)
            else:
                assert (a, b) not in got


def test_large_input_invariants():
    # 3000 detections: kept ones never overlap above threshold and every
    # suppressed one overlaps some earlier kept one above threshold.
    geoms, scores, class_ids = clustered_detections(11, 3000, rotated=True)
    thr = 0.4
    kept = nms(geoms, scores, class_ids, thr, "iou")
    assert len(set(kept.tolist())) == len(kept)
    _, _, v = pair_overlaps(geoms[kept], "iou")
    assert not np.any(v > thr)
    rank = np.empty(len(geoms), dtype=np.int64)
    rank[sort_order(scores, shapely.area(geoms))] = np.arange(len(geoms))
    assert np.all(np.diff(rank[kept]) > 0)  # kept in processing order
    is_kept = np.zeros(len(geoms), dtype=bool)
    is_kept[kept] = True
    i, j, v = pair_overlaps(geoms, "iou")
    hit = v > thr
    covered = np.zeros(len(geoms), dtype=bool)
    a, b = i[hit], j[hit]
    covered[b[is_kept[a] & (rank[a] < rank[b])]] = True
    covered[a[is_kept[b] & (rank[b] < rank[a])]] = True
    assert np.all(covered[~is_kept])


def _brute_box_pairs(bounds: np.ndarray) -> set[tuple[int, int]]:
    lo, hi = np.minimum(bounds[:, :2], bounds[:, 2:]), np.maximum(bounds[:, :2], bounds[:, 2:])
    meet = np.all((lo[:, None] <= hi[None]) & (lo[None] <= hi[:, None]), axis=2)
    finite = np.isfinite(bounds).all(axis=1)  # a box with a NaN or infinite side pairs with none
    meet &= finite[:, None] & finite[None]
    i, j = np.nonzero(np.triu(meet, 1))
    return set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("path", ["sweep", "chunks", "tree"])
def test_box_pairs_equal_brute_force(seed, path, monkeypatch):
    # clusters of small boxes (NMS candidates), a few boxes across everything, exact touches, ties, zero
    # widths, sides given in either order and non-finite sides; every path of box_pairs lists the same pairs
    from tiler.merge import overlaps

    if path == "chunks":
        monkeypatch.setattr(overlaps, "_SWEEP_CHUNK", 97)
    elif path == "tree":
        monkeypatch.setattr(overlaps, "_SWEEP_PAIRS_PER_BOX", 0)
    rng = np.random.default_rng(seed)
    n = 1500
    centre = rng.uniform(0, 640, (n // 20, 2))[rng.integers(0, n // 20, n)] + rng.normal(0, 8, (n, 2))
    size = rng.uniform(0, 40, (n, 2))
    size[rng.random(n) < 0.01] *= 20  # a few boxes spanning many strips
    b = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    b[::50, 2] = b[::50, 0]  # zero width
    b[1::50, 1] = b[2::50, 3]  # touching along y
    b[3::50, 0] = b[4::50, 2]  # touching along x
    b[5::50] = b[6::50]  # identical
    b[7::50] = b[7::50][:, [2, 3, 0, 1]]  # sides in the other order
    b[8::100, 1] = np.nan
    b[9::100, 2] = np.inf
    b = np.round(b, 1)  # many equal coordinates
    i, j = overlaps.box_pairs(b)
    assert i.dtype == j.dtype == np.int64 and np.all(i < j)
    got = list(zip(i.tolist(), j.tolist()))
    assert len(got) == len(set(got))
    assert set(got) == _brute_box_pairs(b)


def test_box_pairs_small_inputs():
    from tiler.merge.overlaps import box_pairs, candidate_pairs

    for b in (np.empty((0, 4)), np.array([[0, 0, 1, 1.0]]), np.array([[0, 0, 1, 1], [2, 2, 3, 3.0]]),
              np.array([[0, 0, 1, 1], [1, 1, 2, 2.0]])):
        i, j = box_pairs(b)
        assert set(zip(i.tolist(), j.tolist())) == _brute_box_pairs(b)
    # candidate_pairs on bounding boxes goes through box_pairs: empty and missing geometries pair with none
    geoms = np.array([box(0, 0, 2, 2), shapely.Polygon(), None, box(1, 1, 3, 3), box(5, 5, 6, 6)], dtype=object)
    i, j = candidate_pairs(geoms, predicate=None)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 3)]


# --------------------------------------------------------------------------- targeted cases


def test_pair_overlaps_groups():
    geoms, _, cls = clustered_detections(5, 200, rotated=True)
    i, j, v = pair_overlaps(geoms, "iou")
    gi, gj, gv = pair_overlaps(geoms, "iou", groups=cls)
    same = cls[i] == cls[j]
    assert gi.tolist() == i[same].tolist() and gj.tolist() == j[same].tolist()
    np.testing.assert_array_equal(gv, v[same])
    with pytest.raises(ValueError, match="groups"):
        pair_overlaps(geoms, "iou", groups=cls[:-1])


def test_thin_diagonal_boxes_not_suppressed_by_bbox_overlap():
    # Two long thin boxes at 45 degrees, side by side: their axis-aligned
    # bounding boxes overlap almost entirely, the polygons only touch a sliver.
    a, b = rotated_boxes([100, 102.7], [100, 97.3], [200, 200], [4, 4], [45, 45])
    assert a.intersection(b).area / min(a.area, b.area) < 0.05
    ba, bb = box(*a.bounds), box(*b.bounds)
    assert ba.intersection(bb).area / min(ba.area, bb.area) > 0.9
    for metric in MATCH_METRICS:
        kept = nms([a, b], [0.9, 0.8], threshold=0.5, metric=metric)
        assert kept.tolist() == [0, 1]
        # A bbox-based NMS would have dropped the second one.
        assert nms([ba, bb], [0.9, 0.8], threshold=0.5, metric=metric).tolist() == [0]


def test_ios_vs_iou_small_box_inside_big_box():
    big, small = box(0, 0, 100, 100), box(10, 10, 20, 20)
    # small box scores higher so it is kept first; the big one is the candidate
    scores = [0.6, 0.9]
    assert nms([big, small], scores, threshold=0.5, metric="ios").tolist() == [1]
    assert nms([big, small], scores, threshold=0.5, metric="iou").tolist() == [1, 0]
    # and the other way round: big one kept, small (ios=1) suppressed
    assert nms([big, small], [0.9, 0.6], threshold=0.5, metric="ios").tolist() == [0]
    assert nms([big, small], [0.9, 0.6], threshold=0.5, metric="iou").tolist() == [0, 1]


def test_per_class_mode():
    g = [box(0, 0, 10, 10), box(1, 1, 11, 11)]
    scores, cls = [0.9, 0.8], [0, 1]
    assert nms(g, scores, cls, 0.5, "iou", class_agnostic=False).tolist() == [0, 1]
    assert nms(g, scores, cls, 0.5, "iou", class_agnostic=True).tolist() == [0]
    # same class: suppressed in per-class mode too
    assert nms(g, scores, [2, 2], 0.5, "iou", class_agnostic=False).tolist() == [0]
    # string class labels work
    assert nms(g, scores, ["car", "truck"], 0.5, class_agnostic=False).tolist() == [0, 1]


def test_intelligent_sorter_order():
    scores = np.array([0.95, 0.91, 0.87, 0.99, 0.80, 0.7])
    areas = np.array([10.0, 50.0, 100.0, 5.0, 100.0, 1000.0])
    # bins: 9, 9, 8, 9, 8, 7 -> bin 9 by area (50, 10, 5), bin 8 tie on area
    # (100, 100) by score, then bin 7.
    assert sort_order(scores, areas, "intelligent").tolist() == [1, 0, 3, 2, 4, 5]
    assert sort_order(scores, areas, "score").tolist() == [3, 0, 1, 2, 4, 5]
    # float32 scores of 0.7 must land in bin 7, not 6 (0.7f == 0.69999998...)
    s32 = np.array([0.7, 0.65], dtype=np.float32)
    assert sort_order(s32, [1.0, 2.0], "intelligent").tolist() == [0, 1]
    # score ties are broken by index
    assert sort_order([0.5, 0.5, 0.5], [1, 1, 1], "score").tolist() == [0, 1, 2]
    assert sort_order([0.5, 0.5, 0.5], [1, 1, 1], "intelligent").tolist() == [0, 1, 2]


def test_intelligent_sorter_changes_nms_result():
    # A fragment (small, slightly higher score) inside a whole object: score
    # sorting keeps the fragment, intelligent sorting keeps the whole object.
    whole, fragment = box(0, 0, 100, 100), box(0, 0, 40, 100)
    scores = [0.91, 0.93]
    assert nms([whole, fragment], scores, sorter="score").tolist() == [1]
    assert nms([whole, fragment], scores, sorter="intelligent").tolist() == [0]


def test_empty_and_degenerate_inputs():
    assert nms([], []).dtype == np.int64
    assert nms([], []).tolist() == []
    assert nms(np.array([], dtype=object), np.array([]), class_ids=[], class_agnostic=False).tolist() == []
    i, j, v = pair_overlaps(np.array([], dtype=object), "iou")
    assert len(i) == len(j) == len(v) == 0

    big = box(0, 0, 10, 10)
    empty = Polygon()
    flat = Polygon([(1, 1), (5, 1), (9, 1)])  # zero area
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-intersecting
    geoms = [big, empty, flat, bowtie, None, box(0, 0, 10, 10)]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    for metric in MATCH_METRICS:
        for sorter in SORTERS:
            kept = nms(geoms, scores, threshold=0.5, metric=metric, sorter=sorter).tolist()
            # zero-area / missing geometries have metric 0 with everything
            assert {1, 2, 4} <= set(kept)
            assert 5 not in kept  # exact duplicate of a kept box
            i, j, v = pair_overlaps(np.asarray(geoms, dtype=object), metric)
            assert np.all(np.isfinite(v)) and np.all((v >= 0) & (v <= 1))
    # bowtie (two triangles, area 50) inside big: ios = 1 -> suppressed
    assert 3 not in nms(geoms, scores, threshold=0.5, metric="ios").tolist()


def test_threshold_edges():
    a, b = box(0, 0, 10, 10), box(5, 0, 15, 10)  # iou = 1/3, ios = 1/2
    assert nms([a, b], [0.9, 0.8], threshold=0.5, metric="ios").tolist() == [0, 1]  # not > 0.5
    assert nms([a, b], [0.9, 0.8], threshold=0.49, metric="ios").tolist() == [0]
    assert nms([a, b], [0.9, 0.8], threshold=1.0, metric="ios").tolist() == [0, 1]
    assert nms([a, a], [0.9, 0.8], threshold=1.0, metric="iou").tolist() == [0, 1]
    assert nms([a, a], [0.9, 0.8], threshold=0.0, metric="iou").tolist() == [0]
    # touching edges only: metric 0, never suppressed even at threshold 0
    c = box(10, 0, 20, 10)
    assert nms([a, c], [0.9, 0.8], threshold=0.0).tolist() == [0, 1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metric="dice"), "metric"),
        (dict(sorter="area"), "sorter"),
        (dict(threshold=-0.1), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(threshold=float("nan")), "threshold"),
        (dict(threshold="high"), "threshold"),
        (dict(scores=[0.9]), "scores"),
        (dict(class_ids=[0, 1, 2]), "class_ids"),
        (dict(class_agnostic=False), "class_ids"),
    ],
)
def test_validation_errors(kwargs, match):
    args = dict(geoms=[box(0, 0, 1, 1), box(0, 0, 1, 1)], scores=[0.9, 0.8])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as exc:
        nms(**args)
    assert "\n" not in str(exc.value)


def test_helper_validation_errors():
    with pytest.raises(ValueError, match="metric"):
        pair_overlaps(np.array([box(0, 0, 1, 1)], dtype=object), "giou")
    with pytest.raises(ValueError, match="sorter"):
        sort_order([0.5], [1.0], "random")
    with pytest.raises(ValueError, match="areas"):
        sort_order([0.5, 0.4], [1.0], "intelligent")


def _sequential_greedy(order, i, j):
    """Greedy NMS over a pair list, one detection at a time: the definition greedy_keep must reproduce."""
    nbrs = {}
    for a, b in zip(i.tolist(), j.tolist()):
        nbrs.setdefault(a, set()).add(b)
        nbrs.setdefault(b, set()).add(a)
    suppressed, kept = set(), []
    for k in order.tolist():
        if k not in suppressed:
            kept.append(k)
            suppressed |= nbrs.get(k, set())
    return np.array(kept, dtype=np.int64)


@pytest.mark.parametrize("seed", range(6))
def test_greedy_keep_equals_the_sequential_pass(seed, monkeypatch):
    """Random pair graphs, from sparse to dense (the vectorised rounds), and long chains of overlaps with
    monotone scores (which outlast the rounds and are walked one by one), mixed in one input."""
    from tiler.merge import suppress
    from tiler.merge.suppress import _ROUNDS, greedy_keep

    walked = []
    monkeypatch.setattr(suppress, "_walk", lambda *a, _walk=suppress._walk: walked.append(1) or _walk(*a))
    rng = np.random.default_rng(seed)
    n = 3000
    m = [500, 3000, 12000, 40000, 3000, 0][seed]
    i, j = rng.integers(0, n, m), rng.integers(0, n, m)
    # chains: a run of 5 * _ROUNDS detections, each overlapping the next, ranked best at one end
    chain = rng.choice(n, 5 * _ROUNDS, replace=False)
    i, j = np.concatenate([i, chain[:-1]]), np.concatenate([j, chain[1:]])
    order = rng.permutation(n)
    if seed % 2:  # ranks falling along the chain: one link settles per round
        rest = np.setdiff1d(order, chain)
        order = np.concatenate([chain[::-1], rest])
    got = greedy_keep(order, i, j)
    assert np.array_equal(got, _sequential_greedy(order, i, j))
    assert 0 < len(got) <= n
    assert bool(walked) == bool(seed % 2)  # the long chains were walked; the rest settled in rounds
