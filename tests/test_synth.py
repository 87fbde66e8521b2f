"""Tests for tiler.synth: deterministic synthetic scenes, their GeoTIFF/GeoJSON writer and training sets."""

from __future__ import annotations

import json
import math
import os

import cv2
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.enums import Compression
from rasterio.transform import Affine
from shapely.geometry import Polygon

from tiler import synth
from tiler.errors import ConfigError
from tiler.synth import CLASS_NAMES, SceneSpec, read_truth, write_scene, write_training_set

PALETTES = {0: synth._CAR_COLORS, 1: synth._ROOF_COLORS, 2: synth._BOAT_COLORS}


def local_extents(poly: np.ndarray) -> tuple[float, float]:
    """Extent along the first edge's direction and across it: (length, width) in the object's own frame.

    Vehicles, boats and buildings are all built with their first edge along the local x axis."""
    d = poly[1] - poly[0]
    a = math.atan2(d[1], d[0])
    c, s = math.cos(a), math.sin(a)
    local = (poly - poly[0]) @ np.array([[c, -s], [s, c]])
    return float(np.ptp(local[:, 0])), float(np.ptp(local[:, 1]))


def object_mask(objects, x0: int, y0: int, width: int, height: int, grow: int) -> np.ndarray:
    """Pixels of the window within ~`grow` px of any object body or its cast shadow (offset +3, +4)."""
    pad = grow + 2  # drawn on a padded canvas, so objects just outside the window count too
    mask = np.zeros((height + 2 * pad, width + 2 * pad), np.uint8)
    for obj in objects:
        for off in ((0.0, 0.0), (3.0, 4.0)) if obj.shadow else ((0.0, 0.0),):
            pts = np.round((obj.polygon + off - (x0 - pad, y0 - pad) - 0.5) * 16).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    k = 2 * grow + 1
    return (cv2.dilate(mask, np.ones((k, k), np.uint8)) > 0)[pad:pad + height, pad:pad + width]


# ---------------------------------------------------------------------------------------------------------
# determinism and window independence


def test_same_seed_same_scene_other_seed_differs():
    a = SceneSpec(512, 512, seed=3).render(0, 0, 512, 512)
    b = SceneSpec(512, 512, seed=3).render(0, 0, 512, 512)
    c = SceneSpec(512, 512, seed=4).render(0, 0, 512, 512)
    assert a.shape == (512, 512, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert (a != c).any(axis=-1).mean() > 0.5  # a different scene, not a few changed pixels
    objs_a = list(SceneSpec(512, 512, seed=3).all_objects())
    objs_b = list(SceneSpec(512, 512, seed=3).all_objects())
    assert len(objs_a) == len(objs_b) > 0
    for p, q in zip(objs_a, objs_b):
        assert p.class_id == q.class_id and p.color == q.color
        np.testing.assert_array_equal(p.polygon, q.polygon)


def test_render_has_no_nodata_value_inside_the_scene():
    img = SceneSpec(512, 512, seed=3).render(0, 0, 512, 512)
    assert img.min() >= 1  # 0 is reserved for nodata in every band


def test_window_is_the_slice_of_a_bigger_render_exactly():
    spec = SceneSpec(512, 512, seed=3)
    full = spec.render(0, 0, 512, 512)
    part = spec.render(100, 150, 300, 300)
    np.testing.assert_array_equal(part, full[150:450, 100:400])


@pytest.mark.parametrize("seed", [3, 1])
@pytest.mark.parametrize("window", [(100, 150, 300, 300), (256, 256, 256, 256), (7, 300, 500, 100),
                                   (250, 0, 20, 512)])
def test_window_is_the_slice_of_a_bigger_render_away_from_objects(seed, window):
    """Terrain, fields, grain, water and roads are a pure function of global coordinates: exact equality
    everywhere except within a few pixels of an object (exactness there is tested above)."""
    spec = SceneSpec(512, 512, seed=seed)
    full = spec.render(0, 0, 512, 512)
    x0, y0, w, h = window
    part = spec.render(x0, y0, w, h)
    assert part.shape == (h, w, 3)
    near = object_mask(list(spec.all_objects()), x0, y0, w, h, grow=3)
    assert near.mean() < 0.5
    np.testing.assert_array_equal(part[~near], full[y0:y0 + h, x0:x0 + w][~near])


def test_window_hanging_outside_the_scene_is_nodata_there():
    spec = SceneSpec(300, 200, seed=2)
    full = spec.render(0, 0, 300, 200)
    part = spec.render(-20, -10, 400, 260)
    assert not part[:10].any() and not part[:, :20].any()
    assert not part[210:].any() and not part[:, 320:].any()
    inner = part[10:210, 20:320]
    near = object_mask(list(spec.all_objects()), 0, 0, 300, 200, grow=3)
    np.testing.assert_array_equal(inner[~near], full[~near])
    assert inner.min() >= 1


def test_cell_aligned_blocks_equal_the_full_render():
    """write_scene renders 512-px blocks; the file must equal one big render."""
    spec = SceneSpec(1024, 768, seed=7, nodata_margin=40)
    full = spec.render(0, 0, 1024, 768)
    np.testing.assert_array_equal(spec.render(0, 512, 512, 256), full[512:768, 0:512])


def test_invalid_specs_raise_config_error():
    with pytest.raises(ConfigError):
        SceneSpec(0, 10)
    with pytest.raises(ConfigError):
        SceneSpec(10, -1)
    with pytest.raises(ConfigError):
        SceneSpec(100, 100, nodata_margin=-1)


# ---------------------------------------------------------------------------------------------------------
# objects: classes, sizes, placement


@pytest.fixture(scope="module")
def big_objects():
    return list(SceneSpec(2048, 2048, seed=0).all_objects())


def test_big_scene_has_all_classes(big_objects):
    classes = {o.class_id for o in big_objects}
    assert classes == {0, 1, 2}
    for o in big_objects:
        assert o.class_name == CLASS_NAMES[o.class_id]
        assert tuple(o.color) in PALETTES[o.class_id]
        assert o.shadow == (o.class_id == 1)  # buildings cast shadows, nothing else does


def test_object_sizes_are_as_documented(big_objects):
    eps = 1e-6
    counts = {0: 0, 1: 0, 2: 0}
    for o in big_objects:
        length, width = local_extents(o.polygon)
        counts[o.class_id] += 1
        if o.class_id == 0:  # vehicles: 6-20 px long side
            assert 6 - eps <= max(length, width) <= 20 + eps, (length, width)
            assert length >= width - eps
        elif o.class_id == 1:  # buildings: 20-80 px each way
            assert 20 - eps <= length <= 80 + eps and 20 - eps <= width <= 80 + eps, (length, width)
        else:  # boats: 12-40 px long, pointed (5 vertices)
            assert 12 - eps <= length <= 40 + eps, (length, width)
            assert width < length and len(o.polygon) == 5
    assert min(counts.values()) >= 5  # every class actually got checked


def test_objects_do_not_overlap_and_stay_in_the_scene(big_objects):
    shapes = [Polygon(o.polygon) for o in big_objects]
    assert all(s.is_valid and s.area > 0 for s in shapes)
    tree = shapely.STRtree(shapes)
    pairs = tree.query(shapes, predicate="dwithin", distance=1.99)  # documented gap: >= 2 px
    assert all(i == j for i, j in pairs.T), [(int(i), int(j)) for i, j in pairs.T if i != j]
    xy = np.vstack([o.polygon for o in big_objects])
    assert xy.min() >= 0 and xy[:, 0].max() <= 2048 and xy[:, 1].max() <= 2048


# ---------------------------------------------------------------------------------------------------------
# write_scene


@pytest.fixture(scope="module")
def written_scene(tmp_path_factory):
    spec = SceneSpec(1024, 768, seed=0, nodata_margin=40)
    path, truth = write_scene(spec, tmp_path_factory.mktemp("scene") / "scene.tif")
    return spec, path, truth


def test_write_scene_file_format(written_scene):
    spec, path, truth = written_scene
    assert path.exists() and truth.exists()
    assert truth.name == "scene.truth.geojson"
    assert sorted(p.name for p in path.parent.iterdir()) == ["scene.tif", "scene.truth.geojson"]
    with rasterio.open(path) as ds:
        assert (ds.width, ds.height, ds.count) == (1024, 768, 3)
        assert ds.dtypes == ("uint8",) * 3
        assert ds.crs.to_epsg() == 32633
        assert ds.res == pytest.approx((0.3, 0.3))
        assert ds.transform == Affine(0.3, 0.0, 500_000.0, 0.0, -0.3, 5_000_000.0)
        assert ds.nodata == 0
        assert ds.profile["tiled"] and ds.block_shapes == [(512, 512)] * 3
        assert ds.compression == Compression.deflate


def test_write_scene_pixels_equal_the_render(written_scene):
    spec, path, _ = written_scene
    with rasterio.open(path) as ds:
        data = np.moveaxis(ds.read(), 0, -1)
        mask = ds.read_masks(1)
    np.testing.assert_array_equal(data, spec.render(0, 0, 1024, 768))
    # nodata margin along the left and top edges, data (never 0) everywhere else
    assert not data[:40].any() and not data[:, :40].any()
    assert data[40:, 40:].min() >= 1
    assert not mask[:40].any() and not mask[:, :40].any() and mask[40:, 40:].all()


def test_truth_geojson_matches_objects(written_scene):
    spec, _, truth = written_scene
    fc = json.loads(truth.read_text())
    assert fc["type"] == "FeatureCollection"
    assert fc["crs"]["properties"]["name"] == "EPSG:32633"
    objects = list(spec.all_objects())
    assert len(objects) > 10
    assert len(fc["features"]) == len(objects)
    assert spec.transform == Affine(0.3, 0.0, 500_000.0, 0.0, -0.3, 5_000_000.0)
    for feat, obj in zip(fc["features"], objects):
        props = feat["properties"]
        assert props["class_id"] == obj.class_id and props["class_name"] == CLASS_NAMES[obj.class_id]
        pix = np.array(props["pixel_polygon"])
        np.testing.assert_allclose(pix, obj.polygon, atol=1e-4)
        assert feat["geometry"]["type"] == "Polygon" and len(feat["geometry"]["coordinates"]) == 1
        assert props["pixel_holes"] == [] and props["large"] is False  # default scenes: small, no holes
        ring = np.array(feat["geometry"]["coordinates"][0])
        assert len(ring) == len(pix) + 1 and (ring[0] == ring[-1]).all()
        expected = np.column_stack([500_000.0 + 0.3 * obj.polygon[:, 0], 5_000_000.0 - 0.3 * obj.polygon[:, 1]])
        np.testing.assert_allclose(ring[:-1], expected, atol=1e-3)
    classes, polys = read_truth(truth)
    assert classes.tolist() == [o.class_id for o in objects]
    assert all(abs(p.area - Polygon(o.polygon).area) < 1e-2 for p, o in zip(polys, objects))


def test_labels_match_pixels(written_scene):
    """Each object's interior has its colour; the ground just outside has not. No object in the margin."""
    spec, path, _ = written_scene
    with rasterio.open(path) as ds:
        img = np.moveaxis(ds.read(), 0, -1)
    objects = list(spec.all_objects())
    assert {o.class_id for o in objects} >= {0, 1, 2}
    checked = 0
    for obj in objects:
        assert obj.polygon.min() >= spec.nodata_margin  # nothing in the nodata margin
        shape = Polygon(obj.polygon)
        x0, y0, x1, y1 = (int(v) for v in shape.bounds)
        ys, xs = np.mgrid[max(0, y0 - 6):min(768, y1 + 7), max(0, x0 - 6):min(1024, x1 + 7)]
        px, py = xs + 0.5, ys + 0.5
        inside = shapely.contains_xy(shape, px, py)
        dist = shapely.distance(shape.boundary, shapely.points(px, py))
        core = inside & (dist >= 1.0)  # clear of the anti-aliased edge
        ring = ~inside & (dist >= 2.5) & (dist <= 4.5)
        if not core.any():
            continue
        colour = np.array(obj.color)
        # windscreens and roof ridges cover a minority of the body: the median is the body colour
        np.testing.assert_array_equal(np.median(img[ys[core], xs[core]], axis=0), colour)
        around = img[ys[ring], xs[ring]].astype(float)
        assert np.abs(around.mean(axis=0) - colour).mean() > 10, obj
        assert (around == colour).all(axis=1).mean() < 0.05  # the colour does not leak outside
        checked += 1
    assert checked >= 0.9 * len(objects)


def _failing_render(monkeypatch, fail_on_call: int):
    real = SceneSpec.render
    calls = {"n": 0}

    def render(self, *args):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise RuntimeError("simulated renderer crash")
        return real(self, *args)

    monkeypatch.setattr(SceneSpec, "render", render)
    return calls


def test_write_scene_failure_leaves_no_file(tmp_path, monkeypatch):
    calls = _failing_render(monkeypatch, fail_on_call=3)  # 1024 x 768 in 512 blocks: 4 blocks
    spec = SceneSpec(1024, 768, seed=1, nodata_margin=40)
    with pytest.raises(RuntimeError, match="simulated"):
        write_scene(spec, tmp_path / "out" / "scene.tif")
    assert calls["n"] == 3
    assert list((tmp_path / "out").iterdir()) == []  # no .tif, no .part, no truth


def test_write_scene_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    spec = SceneSpec(600, 520, seed=1)
    path, truth = write_scene(spec, tmp_path / "scene.tif")
    before, truth_before = path.read_bytes(), truth.read_bytes()
    _failing_render(monkeypatch, fail_on_call=2)
    with pytest.raises(RuntimeError):
        write_scene(SceneSpec(600, 520, seed=2), path)
    assert path.read_bytes() == before and truth.read_bytes() == truth_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif", "scene.truth.geojson"]
    with rasterio.open(path) as ds:
        assert (ds.width, ds.height) == (600, 520)
        assert ds.nodata is None  # no margin, no nodata


# ---------------------------------------------------------------------------------------------------------
# training sets


def test_write_training_set(tmp_path):
    seed, size = 0, 160
    out = write_training_set(tmp_path, [seed], 2, size=size, scene_size=512)
    assert set(out) == {"detect", "segment", "obb"}
    per_task = {}
    for task, data_yaml in out.items():
        assert data_yaml == tmp_path / task / "data.yaml" and data_yaml.exists()
        text = data_yaml.read_text()
        assert f"path: {(tmp_path / task).resolve()}" in text and "train: images/train" in text
        assert all(f"{i}: {n}" in text for i, n in enumerate(CLASS_NAMES))
        images = sorted((tmp_path / task / "images" / "train").glob("*.png"))
        labels = sorted((tmp_path / task / "labels" / "train").glob("*.txt"))
        assert [p.stem for p in images] == [p.stem for p in labels] == [f"s{seed}_0000", f"s{seed}_0001"]
        per_task[task] = (images, [p.read_text().splitlines() for p in labels])
    # one image, hard-linked into every task
    for k in range(2):
        inodes = {os.stat(per_task[t][0][k]).st_ino for t in per_task}
        assert len(inodes) == 1
        img = cv2.imread(str(per_task["detect"][0][k]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
    n_columns = {"detect": lambda n: n == 5, "obb": lambda n: n == 9, "segment": lambda n: n % 2 == 1 and n >= 7}
    total = 0
    for task, (_, files) in per_task.items():
        for lines in files:
            for line in lines:
                vals = line.split()
                assert n_columns[task](len(vals)), (task, line)
                assert vals[0] in {"0", "1", "2"}
                coords = np.array(vals[1:], dtype=float)
                assert (coords >= 0).all() and (coords <= 1).all(), (task, line)
                total += 1
    assert total > 0
    # detect and obb label the same objects (>= 30 % visible); segment labels those too, in the same order,
    # with the detect box the bounding box of the segment polygon, and may add objects cut by the patch edge
    extra = 0
    for k in range(2):
        det, seg, obb = (per_task[t][1][k] for t in ("detect", "segment", "obb"))
        assert len(det) == len(obb) and len(seg) >= len(det)
        it = iter(seg)
        for d, o in zip(det, obb):
            assert d.split()[0] == o.split()[0]
            cx, cy, w, h = (float(v) for v in d.split()[1:])
            for s in it:  # the next segment line with this box (skipping the extra, cut objects)
                poly = np.array(s.split()[1:], dtype=float).reshape(-1, 2)
                if s.split()[0] == d.split()[0] and np.allclose(
                        [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                        [*poly.min(axis=0), *poly.max(axis=0)], atol=2e-6):
                    break
                extra += 1
            else:
                raise AssertionError(f"no segment line for detect line {d}")


def test_training_labels_sit_on_objects(tmp_path):
    """Inside each segment polygon the patch shows one of that class's body colours."""
    write_training_set(tmp_path, [4], 2, size=160, scene_size=512)
    checked = 0
    for label in sorted((tmp_path / "segment" / "labels" / "train").glob("*.txt")):
        img = cv2.cvtColor(cv2.imread(str(tmp_path / "segment" / "images" / "train" / f"{label.stem}.png")),
                           cv2.COLOR_BGR2RGB)
        for line in label.read_text().splitlines():
            vals = line.split()
            poly = np.array(vals[1:], dtype=float).reshape(-1, 2) * 160
            shape = Polygon(poly)
            ys, xs = np.mgrid[0:160, 0:160]
            px, py = xs + 0.5, ys + 0.5
            core = shapely.contains_xy(shape, px, py) & (shapely.distance(shape.boundary,
                                                                          shapely.points(px, py)) >= 1.0)
            if core.sum() < 3:
                continue
            median = tuple(int(v) for v in np.median(img[core], axis=0))
            assert median in PALETTES[int(vals[0])], (line, median)
            checked += 1
    assert checked >= 3


# ---------------------------------------------------------------------------------------------------------
# large objects (an option): big flat roofs with courtyards, exact truth, window-independent rendering

LARGE = dict(width=1024, height=1024, seed=14, large_objects=True)  # one 384-px roof with two courtyards


@pytest.fixture(scope="module")
def large_scene():
    spec = SceneSpec(**LARGE)
    return spec, spec.render(0, 0, spec.width, spec.height)


def test_default_scenes_have_no_large_objects():
    spec = SceneSpec(1024, 1024, seed=14)
    assert spec.large_objects is False and spec.large_in(0, 0, 1024, 1024) == []
    assert all(not o.holes and not o.large for o in spec.all_objects())


def test_large_objects_are_as_documented():
    n_holes = n_large = 0
    for seed in range(200, 206):
        spec = SceneSpec(2048, 2048, seed=seed, large_objects=True, nodata_margin=150 if seed % 2 else 0)
        objects = list(spec.all_objects())
        bigs = [o for o in objects if o.large]
        assert bigs == spec.large_in(0, 0, 2048, 2048)
        assert 1 <= len(bigs) <= 2  # one 2048-px large cell: at most two
        for o in bigs:
            n_large += 1
            n_holes += bool(o.holes)
            assert o.class_id == 1 and o.shadow and len(o.polygon) in (4, 6, 8)
            assert 300 - 1e-6 <= np.ptp(o.polygon, axis=0).max() and local_extents(o.polygon)[0] <= 900 + 1e-6
            shape = o.shape
            assert shape.is_valid and len(shape.interiors) == len(o.holes)
            assert all(Polygon(h).within(Polygon(o.polygon)) for h in o.holes)
            # dry ground, off the roads, outside the nodata margin: check every 4 px of the footprint
            x0, y0, x1, y1 = shape.bounds
            xs, ys = np.meshgrid(np.arange(x0, x1, 4.0), np.arange(y0, y1, 4.0))
            inside = shapely.contains_xy(Polygon(o.polygon), xs, ys)
            xs, ys = xs[inside], ys[inside]
            assert not spec.water(xs, ys).any() and (spec.road_distance(xs, ys) > 0).all()
            assert not spec.in_nodata(xs, ys).any()
        # nothing overlaps anything, courtyards included (a car may park in a courtyard)
        shapes = [o.shape for o in objects]
        pairs = shapely.STRtree(shapes).query(shapes, predicate="dwithin", distance=1.99)
        assert all(i == j for i, j in pairs.T), [(int(i), int(j)) for i, j in pairs.T if i != j]
    assert n_large >= 8 and n_holes >= 3


def test_large_scene_is_deterministic_and_window_independent(large_scene):
    """A large roof is drawn on canvases fixed to global tiles: any window, cut anywhere through it,
    gets exactly the pixels of the full render (and a second spec renders the same)."""
    spec, full = large_scene
    big = spec.large_in(0, 0, 1024, 1024)[0]
    assert len(big.holes) == 2
    np.testing.assert_array_equal(SceneSpec(**LARGE).render(0, 0, 1024, 1024), full)
    (bx0, by0), (bx1, by1) = big.polygon.min(axis=0).astype(int), big.polygon.max(axis=0).astype(int)
    rng = np.random.default_rng(0)
    windows = [(0, 512, 512, 512), (512, 0, 512, 512), (bx0 + 7, by0 + 5, 97, 301), (-30, -20, 700, 600)]
    windows += [(int(rng.integers(bx0 - 100, bx1)), int(rng.integers(by0 - 100, by1)), int(rng.integers(1, 400)),
                 int(rng.integers(1, 400))) for _ in range(12)]
    for x0, y0, w, h in windows:
        part = spec.render(x0, y0, w, h)
        fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, 1024), min(y0 + h, 1024)
        np.testing.assert_array_equal(part[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0], full[fy0:fy1, fx0:fx1])


def test_large_roof_pixels(large_scene):
    """The roof shows its colour (parapet, seams and boxes are a minority), the courtyards show the ground,
    and the roof has visible structure (not one flat colour)."""
    spec, img = large_scene
    big = spec.large_in(0, 0, 1024, 1024)[0]
    ys, xs = np.mgrid[0:1024, 0:1024]
    px, py = xs + 0.5, ys + 0.5
    roof = shapely.contains_xy(big.shape.buffer(-2), px, py)
    np.testing.assert_array_equal(np.median(img[roof], axis=0), big.color)
    assert 0.05 < (img[roof] != big.color).any(axis=1).mean() < 0.4  # structure, but mostly roof
    for hole in big.holes:
        court = shapely.contains_xy(Polygon(hole).buffer(-6), px, py)
        assert court.sum() > 500
        assert (img[court] == big.color).all(axis=1).mean() < 0.02


def test_render_never_allocates_the_raster():
    """A window of a 64k x 64k scene with large objects: memory in proportion to the window."""
    import tracemalloc

    spec = SceneSpec(65536, 65536, seed=5, large_objects=True)
    big = spec.large_in(20000, 20000, 26000, 26000)[0]
    x, y = (int(v) for v in big.polygon.mean(axis=0))
    tracemalloc.start()
    try:
        img = spec.render(x - 300, y - 200, 256, 256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert img.shape == (256, 256, 3)
    assert peak < 40 * 2**20, peak / 2**20


def test_truth_with_holes(tmp_path):
    spec = SceneSpec(**LARGE)
    _, truth = write_scene(spec, tmp_path / "large.tif")
    feats = json.loads(truth.read_text())["features"]
    objects = list(spec.all_objects())
    assert len(feats) == len(objects)
    classes, polys, large = read_truth(truth, with_large=True)
    assert large.sum() == 1 and classes[large].tolist() == [1]
    for feat, obj, poly, is_large in zip(feats, objects, polys, large):
        rings = feat["geometry"]["coordinates"]
        assert len(rings) == 1 + len(obj.holes) and feat["properties"]["large"] is bool(is_large) is obj.large
        assert len(feat["properties"]["pixel_holes"]) == len(obj.holes)
        np.testing.assert_allclose(feat["properties"]["pixel_polygon"], obj.polygon, atol=1e-4)
        for ring, pix in zip(rings, obj.rings):
            assert ring[0] == ring[-1]
            expected = np.column_stack([500_000.0 + 0.3 * pix[:, 0], 5_000_000.0 - 0.3 * pix[:, 1]])
            np.testing.assert_allclose(np.array(ring[:-1]), expected, atol=1e-3)
        assert len(poly.interiors) == len(obj.holes)
        assert abs(poly.area - obj.shape.area) < 1e-2
    big = polys[large][0]
    assert big.area < Polygon(big.exterior).area - 2 * 50 * 50  # two courtyards of at least 50 x 50


def ultralytics_mask(line: str, size: int) -> np.ndarray:
    """Rasterise a YOLO segment label the way Ultralytics' dataset does (resample, then polygon2mask)."""
    from ultralytics.data.utils import polygon2mask
    from ultralytics.utils.ops import resample_segments

    seg = np.array(line.split()[1:], dtype=float).reshape(-1, 2) * size
    seg = resample_segments([seg], 1000)[0]
    return polygon2mask((size, size), [seg.ravel()]).astype(bool)


def pixel_mask(shape, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size]
    return shapely.contains_xy(shape, xs + 0.5, ys + 0.5)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_segment_label_of_a_courtyard_building_rasterises_with_its_holes():
    """The label of a roof cut by the patch edge, with courtyards, rasterised as Ultralytics does, is the
    visible part of the roof with the courtyards left out (without the holes, it would not be)."""
    spec = SceneSpec(**LARGE)
    big = spec.large_in(0, 0, 1024, 1024)[0]
    size = 320
    # both courtyards inside the patch, the roof cut by its left and right edges
    x0, y0 = int(min(h[:, 0].min() for h in big.holes)) - 30, int(big.polygon[:, 1].min()) - 50
    lab = next(lab for lab in synth.patch_labels(spec, x0, y0, size) if lab.shape.equals(
        shapely.transform(big.shape.intersection(shapely.box(x0, y0, x0 + size, y0 + size)),
                          lambda xy: xy - (x0, y0))))
    assert lab.visible < 1 and len(lab.shape.interiors) == 2  # cut by the edge, both courtyards inside
    lines = synth._yolo_lines([lab], size, "segment", 0.3)
    assert len(lines) == 1 and lines[0].startswith("1 ")
    truth = pixel_mask(lab.shape, size)
    assert iou(ultralytics_mask(lines[0], size), truth) > 0.97
    assert iou(pixel_mask(Polygon(lab.shape.exterior), size), truth) < 0.9  # the holes matter


def test_merge_rings_parts_and_holes():
    """Two parts, one with a hole, joined into one polygon: fillPoly gives the parts and not the hole."""
    a = shapely.box(10, 10, 150, 150).difference(shapely.box(50, 60, 110, 100))
    b = shapely.box(200, 30, 300, 290)
    shape = shapely.MultiPolygon([b, a])
    poly = synth.segment_polygon(shape)
    assert poly.ndim == 2 and poly.shape[1] == 2
    line = "1 " + " ".join(f"{v:.6f}" for v in (poly / 320).ravel())
    assert iou(ultralytics_mask(line, 320), pixel_mask(shape, 320)) > 0.97
    # parts under the minimum area are left out; nothing left: no polygon
    tiny = shapely.MultiPolygon([b, shapely.box(0, 0, 3, 3)])
    assert np.array_equal(synth.segment_polygon(tiny), np.asarray(b.exterior.coords)[:-1])
    assert synth.segment_polygon(shapely.box(0, 0, 3, 3)) is None


def test_segment_labels_keep_cut_objects_detect_and_obb_do_not():
    spec = SceneSpec(**LARGE)
    big = spec.large_in(0, 0, 1024, 1024)[0]
    # a small patch lying entirely on the roof: segment labels the whole patch as building
    inner = big.shape.buffer(-1)
    x0, y0 = next((x, y) for y in range(0, 1024, 8) for x in range(0, 1024, 8)
                  if inner.contains(shapely.box(x, y, x + 64, y + 64)))
    labels = [lab for lab in synth.patch_labels(spec, x0, y0, 64) if lab.class_id == 1]
    seg = synth._yolo_lines(labels, 64, "segment", 0.3)
    assert len(seg) == 1 and iou(ultralytics_mask(seg[0], 64), np.ones((64, 64), bool)) > 0.97
    assert synth._yolo_lines(labels, 64, "detect", 0.3) == synth._yolo_lines(labels, 64, "obb", 0.3) == []
    # objects cut by the edge: detect and obb keep those >= 30 % visible, segment those with >= 16 px² visible
    found = 0
    for x0 in range(0, 1024 - 160, 160):
        for y0 in range(0, 1024 - 160, 160):
            labels = synth.patch_labels(spec, x0, y0, 160)
            det, obb = (synth._yolo_lines(labels, 160, t, 0.3) for t in ("detect", "obb"))
            seg = synth._yolo_lines(labels, 160, "segment", 0.3)
            assert len(det) == len(obb) == sum(lab.visible >= 0.3 for lab in labels)
            assert len(seg) == sum(lab.visible >= 0.3 or any(
                g.area >= 16 for g in getattr(lab.shape, "geoms", [lab.shape]) if g.geom_type == "Polygon")
                for lab in labels)
            found += len(seg) - len(det)
    assert found > 10


def test_training_set_with_segment_only_large_object_scenes(tmp_path):
    write_training_set(tmp_path, [0], 1, size=160, scene_size=512, val_seeds=[1])
    before = {t: sorted(p.name for p in (tmp_path / t).rglob("*")) for t in ("detect", "obb")}
    out = write_training_set(tmp_path, [14], 3, size=160, scene_size=1024, tasks=("segment",),
                             large_objects=True, centred_on_large=2)
    assert set(out) == {"segment"}
    assert "val: images/val" in out["segment"].read_text()  # the first call's val split stays
    assert {t: sorted(p.name for p in (tmp_path / t).rglob("*")) for t in ("detect", "obb")} == before
    names = sorted(p.stem for p in (tmp_path / "segment" / "images" / "train").glob("*.png"))
    assert names == ["s0_0000", "s14_0000", "s14_0001", "s14_0002"]
    # the centred patches show a part of the large roof, labelled as a building
    big = SceneSpec(1024, 1024, seed=14, large_objects=True).large_in(0, 0, 1024, 1024)[0]
    for k in (0, 1):
        lines = (tmp_path / "segment" / "labels" / "train" / f"s14_{k:04d}.txt").read_text().splitlines()
        areas = [Polygon(np.array(ln.split()[1:], dtype=float).reshape(-1, 2) * 160).area
                 for ln in lines if ln.startswith("1 ")]
        assert max(areas) > 0.25 * 160 * 160, (k, areas)
    assert big.large


def test_cli_synth_large_objects(tmp_path, capsys):
    from tiler.cli import main

    out = tmp_path / "big.tif"
    assert main(["synth", str(out), "--size", "800x800", "--seed", "12", "--large-objects"]) == 0
    feats = json.loads(out.with_suffix(".truth.geojson").read_text())["features"]
    large = [f for f in feats if f["properties"]["large"]]
    assert len(large) == 1 and len(large[0]["geometry"]["coordinates"]) == 3  # exterior and two courtyards
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(np.moveaxis(ds.read(), 0, -1),
                                      SceneSpec(800, 800, seed=12, large_objects=True).render(0, 0, 800, 800))
