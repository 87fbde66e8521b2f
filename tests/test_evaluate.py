"""Tests for tiler.evaluate on hand-made geometries: matching, per-object IoU, pieces per object, reading
predictions with holes and several parts, and the scene report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from rasterio.transform import Affine
from shapely.geometry import Polygon

from tiler.evaluate import (load_prediction_pixels, match, pieces_per_object, polygon_ious, scene_report,
                            score_scene)
from tiler.synth import SceneSpec, write_scene

TRANSFORM = Affine(0.3, 0.0, 500_000.0, 0.0, -0.3, 5_000_000.0)
CRS = "EPSG:32633"


def arr(geoms) -> np.ndarray:
    out = np.empty(len(geoms), dtype=object)
    out[:] = list(geoms)
    return out


def square(x, y, s=10.0) -> Polygon:
    return shapely.box(x, y, x + s, y + s)


# ---------------------------------------------------------------------------------------------------------
# polygon_ious


def test_polygon_ious_per_truth():
    truth = arr([square(0, 0), square(100, 0), square(200, 0)])
    pred = arr([square(102, 0), square(0, 0), square(500, 500)])  # shifted by 2 px, exact, a false positive
    scores = np.array([0.9, 0.8, 0.7])
    ious = polygon_ious(pred, scores, truth)
    assert ious[0] == pytest.approx(1.0)
    assert ious[1] == pytest.approx(80 / 120)  # 8 x 10 overlap, union 120
    assert math.isnan(ious[2])  # missed
    s = match(pred, scores, truth)
    assert (s.tp, s.fp, s.fn) == (2, 1, 1) == (int((~np.isnan(ious)).sum()), 1, int(np.isnan(ious).sum()))


def test_polygon_ious_follows_the_greedy_matching():
    """Two predictions on one truth: the better-scored one takes it, even if the other fits better; an
    overlap under the threshold is no match."""
    truth = arr([square(0, 0)])
    exact, loose = square(0, 0), square(3, 0)  # IoU 1, IoU 70/130
    assert polygon_ious(arr([exact, loose]), [0.5, 0.9], truth)[0] == pytest.approx(70 / 130)
    assert polygon_ious(arr([exact, loose]), [0.9, 0.5], truth)[0] == pytest.approx(1.0)
    assert math.isnan(polygon_ious(arr([loose]), [0.9], truth, iou_threshold=0.6)[0])
    assert polygon_ious(arr([]), [], truth).shape == (1,) and math.isnan(polygon_ious(arr([]), [], truth)[0])
    assert polygon_ious(arr([exact]), [0.9], arr([])).shape == (0,)


def test_polygon_ious_with_holes():
    """A prediction that fills the courtyard scores lower than one that leaves it out."""
    roof = Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [[(30, 30), (70, 30), (70, 70), (30, 70)]])
    filled = square(0, 0, 100)
    assert polygon_ious(arr([filled]), [1.0], arr([roof]))[0] == pytest.approx(8400 / 10000)
    assert polygon_ious(arr([roof]), [1.0], arr([roof]))[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------
# pieces_per_object


def test_pieces_per_object_counts_fragments():
    roof = Polygon([(0, 0), (300, 0), (300, 200), (0, 200)], [[(120, 60), (180, 60), (180, 140), (120, 140)]])
    whole = roof
    thirds = [roof.intersection(shapely.box(x, -1, x + 100, 201)) for x in (0, 100, 200)]
    other = square(1000, 1000, 50)
    truth = arr([roof, other])
    assert pieces_per_object(arr([whole]), truth).tolist() == [1, 0]
    assert pieces_per_object(arr(thirds), truth).tolist() == [3, 0]
    assert pieces_per_object(arr([*thirds, square(1000, 1000, 50)]), truth).tolist() == [3, 1]
    # a prediction with only a third of its area inside is not a piece of it; min_overlap decides
    spill = shapely.box(250, 0, 400, 200)  # 50 of 150 px wide inside the roof
    assert pieces_per_object(arr([whole, spill]), truth).tolist() == [1, 0]
    assert pieces_per_object(arr([whole, spill]), truth, min_overlap=0.3).tolist() == [2, 0]
    # a prediction inside the courtyard is not inside the roof
    assert pieces_per_object(arr([square(130, 70, 40)]), truth).tolist() == [0, 0]
    assert pieces_per_object(arr([]), truth).tolist() == [0, 0]


# ---------------------------------------------------------------------------------------------------------
# load_prediction_pixels


def ring(poly_coords, reverse=False):
    r = [list(map(float, p)) for p in poly_coords]
    r = r[::-1] if reverse else r
    return r + [r[0]]


def features(space: str):
    """Three features in pixel coordinates (or projected to lon/lat): a Polygon with a hole (clockwise
    exterior, counter-clockwise hole: any orientation is accepted), a MultiPolygon of two parts, one with a
    hole, and a self-intersecting bow tie."""
    outer = [(0, 0), (0, 100), (100, 100), (100, 0)]
    hole = [(30, 30), (70, 30), (70, 70), (30, 70)]
    part_a = [(200, 0), (260, 0), (260, 60), (200, 60)]
    hole_a = [(220, 20), (240, 20), (240, 40), (220, 40)]
    part_b = [(300, 0), (320, 0), (320, 20), (300, 20)]
    bowtie = [(400, 0), (440, 40), (440, 0), (400, 40)]
    geoms = [{"type": "Polygon", "coordinates": [ring(outer), ring(hole, reverse=True)]},
             {"type": "MultiPolygon", "coordinates": [[ring(part_a), ring(hole_a)], [ring(part_b, reverse=True)]]},
             {"type": "Polygon", "coordinates": [ring(bowtie)]}]
    if space != "pixel":
        to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)

        def convert(c):
            if isinstance(c[0], float):
                x, y = TRANSFORM @ (c[0], c[1])
                return list(to_ll.transform(x, y))
            return [convert(v) for v in c]

        geoms = [{"type": g["type"], "coordinates": convert(g["coordinates"])} for g in geoms]
    feats = [{"type": "Feature", "geometry": g, "properties": {"class_id": k, "score": 0.9 - 0.1 * k}}
             for k, g in enumerate(geoms)]
    fc = {"type": "FeatureCollection", "features": feats}
    if space == "pixel":
        fc["coordinate_space"] = "pixel"
    return fc


@pytest.mark.parametrize("space", ["pixel", "lonlat"])
def test_load_prediction_pixels_holes_and_parts(tmp_path, space):
    path = tmp_path / "pred.geojson"
    path.write_text(json.dumps(features(space)))
    classes, scores, geoms = load_prediction_pixels(path, TRANSFORM, CRS)
    assert classes.tolist() == [0, 1, 2] and scores == pytest.approx([0.9, 0.8, 0.7])
    assert geoms.dtype == object and geoms.shape == (3,)
    tol = 1e-6 if space == "pixel" else 0.05
    donut, multi, bowtie = geoms
    assert donut.geom_type == "Polygon" and len(donut.interiors) == 1
    assert donut.area == pytest.approx(100 * 100 - 40 * 40, abs=tol * 400)
    assert multi.geom_type == "MultiPolygon" and len(multi.geoms) == 2
    assert multi.area == pytest.approx(60 * 60 - 20 * 20 + 20 * 20, abs=tol * 400)
    assert sum(len(g.interiors) for g in multi.geoms) == 1
    assert all(g.is_valid for g in geoms)  # the bow tie is repaired into its two triangles
    assert bowtie.area == pytest.approx(2 * 0.5 * 40 * 20, abs=tol * 400)
    # the geometries are on their objects
    assert donut.symmetric_difference(Polygon(ring([(0, 0), (100, 0), (100, 100), (0, 100)]),
                                              [ring([(30, 30), (70, 30), (70, 70), (30, 70)])])).area < tol * 400


def test_load_prediction_pixels_empty(tmp_path):
    path = tmp_path / "empty.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [], "coordinate_space": "pixel"}))
    classes, scores, geoms = load_prediction_pixels(path, TRANSFORM, CRS)
    assert len(classes) == len(scores) == len(geoms) == 0


# ---------------------------------------------------------------------------------------------------------
# scene_report / score_scene on a written scene with a large roof


@pytest.fixture(scope="module")
def large_scene(tmp_path_factory):
    spec = SceneSpec(1024, 1024, seed=14, large_objects=True)
    tif, truth = write_scene(spec, tmp_path_factory.mktemp("scene") / "scene.tif")
    return spec, tif, truth


def write_pred(path, geoms, classes, scores=None):
    feats = []
    for k, (g, c) in enumerate(zip(geoms, classes)):
        feats.append({"type": "Feature", "geometry": shapely.geometry.mapping(g),
                      "properties": {"class_id": int(c), "score": 0.9 if scores is None else scores[k]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats, "coordinate_space": "pixel"}))
    return path


def test_scene_report_large_object_in_pieces(tmp_path, large_scene):
    spec, tif, truth = large_scene
    objects = list(spec.all_objects())
    big = next(o for o in objects if o.large)
    small = [o for o in objects if not o.large]
    vehicles = [o for o in small if o.class_id == 0]
    missed = vehicles[0]
    x0, _, x1, _ = big.shape.bounds
    cuts = np.linspace(x0, x1, 4)
    thirds = [big.shape.intersection(shapely.box(a, -1, b, 2000)) for a, b in zip(cuts[:-1], cuts[1:])]
    kept = [o for o in small if o is not missed]
    geoms = [o.shape for o in kept] + thirds + [square(5, 900, 12)]  # + a false-positive vehicle
    classes = [o.class_id for o in kept] + [1, 1, 1] + [0]
    pred = write_pred(tmp_path / "pieces.geojson", geoms, classes)
    report = scene_report(pred, truth, tif, "segment")
    scores = report["scores"]
    assert (scores["vehicle"].tp, scores["vehicle"].fp, scores["vehicle"].fn) == (len(vehicles) - 1, 1, 1)
    assert scores["building"].fn == 1 and scores["building"].fp == 3  # no third reaches IoU 0.5 with the roof
    assert scores["boat"].precision == scores["boat"].recall == 1.0
    assert report["median_iou"]["vehicle"] == pytest.approx(1.0, abs=1e-3)
    assert report["median_iou"]["boat"] == pytest.approx(1.0, abs=1e-3)  # truth is rounded to 1e-4 px
    large = report["large"]
    assert large["n"] == 1 and large["pieces"] == [3] and large["mean_pieces"] == 3.0
    assert large["recall"] == 0.0 and math.isnan(large["median_iou"])
    s = score_scene(pred, truth, tif, "segment")
    assert {k: (v.tp, v.fp, v.fn) for k, v in s.items()} == {k: (v.tp, v.fp, v.fn) for k, v in scores.items()}


def test_scene_report_large_object_whole_but_courtyards_filled(tmp_path, large_scene):
    """The truth keeps its courtyards: a prediction that fills them is one piece with IoU < 1."""
    spec, tif, truth = large_scene
    objects = list(spec.all_objects())
    big = next(o for o in objects if o.large)
    geoms = [Polygon(o.polygon) for o in objects]  # exteriors only
    pred = write_pred(tmp_path / "filled.geojson", geoms, [o.class_id for o in objects])
    report = scene_report(pred, truth, tif, "segment")
    expected = big.shape.area / Polygon(big.polygon).area
    assert expected < 0.97
    large = report["large"]
    assert large["pieces"] == [1] and large["recall"] == 1.0
    assert large["median_iou"] == pytest.approx(expected, rel=1e-4)
    assert report["scores"]["all"].fp == report["scores"]["all"].fn == 0
    assert report["median_iou"]["all"] == pytest.approx(1.0, abs=1e-3)  # the many small objects fit exactly
    # detect compares boxes: the filled exterior's box is the roof's box
    det = scene_report(write_pred(tmp_path / "boxes.geojson", [shapely.envelope(g) for g in geoms],
                                  [o.class_id for o in objects]), truth, tif, "detect")
    assert det["large"]["median_iou"] == pytest.approx(1.0, abs=1e-3) and det["scores"]["all"].fn == 0
