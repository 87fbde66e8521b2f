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
        assert feat["geometry"]["type"] == "Polygon"
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
    # the three tasks label the same objects: same line count and classes, and the detect box is the
    # bounding box of the segment polygon
    for k in range(2):
        det, seg, obb = (per_task[t][1][k] for t in ("detect", "segment", "obb"))
        assert len(det) == len(seg) == len(obb)
        for d, s, o in zip(det, seg, obb):
            assert d.split()[0] == s.split()[0] == o.split()[0]
            cx, cy, w, h = (float(v) for v in d.split()[1:])
            poly = np.array(s.split()[1:], dtype=float).reshape(-1, 2)
            np.testing.assert_allclose([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                                       [*poly.min(axis=0), *poly.max(axis=0)], atol=2e-6)


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
