"""End to end: real rasters, real models, the whole job, scored against labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import shapely

from tiler import TileJob
from tiler.evaluate import match, read_dota_labels, score_scene
from tiler.merge import pair_overlaps
from tiler.synth import SceneSpec, write_scene

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = REPO / "models"
DOTA = SHARED / "data" / "dota"
DOTA_MODEL = SHARED / "models" / "yolov8n-obb.pt"
needs_shared = pytest.mark.skipif(not (DOTA / "P0706.png").exists() or not DOTA_MODEL.exists(),
                                  reason="../shared DOTA assets not present")
PATCH = 320  # the project's models are trained on 320 px patches


@pytest.fixture(scope="module")
def p0706_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("dota") / "p0706.geojson"
    result = TileJob(DOTA / "P0706.png", DOTA_MODEL, patch_size=640, overlap=0.25, progress=False,
                     runner="local").run()
    result.to_file(out)
    return result, out


@needs_shared
def test_dota_ships_recall_precision_and_no_duplicates(p0706_result):
    result, out = p0706_result
    names, truth, _ = read_dota_labels(DOTA / "P0706.txt")
    ships_true = truth[names == "ship"]
    assert len(ships_true) == 531
    fc = json.loads(out.read_text())
    ships = [f for f in fc["features"] if f["properties"]["class_name"] == "ship"]
    pred = np.array([shapely.Polygon(f["geometry"]["coordinates"][0]) for f in ships], dtype=object)
    scores = np.array([f["properties"]["score"] for f in ships])
    s = match(pred, scores, ships_true, iou_threshold=0.3)
    assert s.recall >= 0.98, s
    assert s.precision >= 0.88, s
    # the merge removed the seam duplicates: no two kept ships overlap by more than half the smaller one
    _, _, ios = pair_overlaps(pred, "ios")
    assert (ios <= 0.5).all(), f"{(ios > 0.5).sum()} duplicate pairs left"
    # and there were duplicates to remove: the overlap made windows see the same ships twice
    assert result.stats.raw_detections > 1.2 * len(result)


@needs_shared
def test_dota_output_is_pixel_space_with_float_coordinates(p0706_result):
    _, out = p0706_result
    fc = json.loads(out.read_text())
    assert fc["coordinate_space"] == "pixel" and "crs" not in fc
    coords = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in fc["features"]])
    assert (coords != np.round(coords)).mean() > 0.9  # never truncated to integers
    # pixel space of the 1111 x 1182 image (a rotated box may reach past its edge; its centre may not)
    centres = np.array([np.mean(f["geometry"]["coordinates"][0][:-1], axis=0) for f in fc["features"]])
    assert (centres >= 0).all() and (centres[:, 0] <= 1111).all() and (centres[:, 1] <= 1182).all()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A fresh validation scene: a seed no training patch came from, with a nodata margin."""
    folder = tmp_path_factory.mktemp("scene")
    # big enough (about 600 objects) that precision and recall are measured, not sampled noise
    tif, truth = write_scene(SceneSpec(3072, 3072, seed=4242, nodata_margin=400), folder / "val.tif")
    return tif, truth


@pytest.mark.parametrize("task", ["detect", "obb", "segment"])
def test_own_models_on_fresh_scene(scene, task, tmp_path):
    """Issue 2 quality bar: each model reaches P >= 0.9 and R >= 0.9 at IoU 0.5 over 320 px patches."""
    tif, truth = scene
    model = MODELS / f"tiler-{task}.pt"
    out = tmp_path / f"{task}.geojson"
    result = TileJob(tif, model, patch_size=PATCH, overlap=0.25, progress=False, out=out, runner="local").run()
    assert result.task == task
    scores = score_scene(out, truth, tif, task, iou_threshold=0.5)
    summary = {k: str(v) for k, v in scores.items()}
    assert scores["all"].recall >= 0.9, summary
    assert scores["all"].precision >= 0.9, summary
    for name in ("vehicle", "building", "boat"):
        assert scores[name].recall >= 0.8, summary


def test_geojson_is_rfc7946_and_lands_on_objects(scene, tmp_path):
    tif, truth = scene
    out = tmp_path / "obb.geojson"
    result = TileJob(tif, MODELS / "tiler-obb.pt", patch_size=PATCH, overlap=0.25, progress=False, out=out,
                     runner="local").run()
    text = out.read_text()
    fc = json.loads(text)
    assert fc["type"] == "FeatureCollection" and "crs" not in fc and "coordinate_space" not in fc
    assert len(fc["features"]) == len(result) > 50
    # at most 7 decimals in any coordinate
    assert not re.search(r"\d\.\d{8,}[,\]]", text.split('"features"')[1].replace('"score"', ""))
    for f in fc["features"]:
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]
        assert shapely.LinearRing(ring).is_ccw  # RFC 7946: exterior rings counter-clockwise
        lon, lat = np.asarray(ring).T
        # the scene sits in UTM zone 33N near 45 N, 15 E
        assert (12 < lon).all() and (lon < 18).all() and (44 < lat).all() and (lat < 46).all()
        assert set(f["properties"]) >= {"class_id", "class_name", "score", "bbox_px"}
    # projected back through EPSG:4326 -> UTM -> pixels, boxes land on the true objects
    scores = score_scene(out, truth, tif, "obb", iou_threshold=0.5)
    assert scores["all"].recall >= 0.9, {k: str(v) for k, v in scores.items()}
    # nothing detected inside the nodata margin
    bbox = np.array([f["properties"]["bbox_px"] for f in fc["features"]])
    assert (bbox[:, 2] > 400).all() and (bbox[:, 3] > 400).all()
    assert result.stats.windows_planned > result.stats.windows_run


def test_geodataframe_matches_the_geojson(scene, tmp_path):
    gpd = pytest.importorskip("geopandas")
    tif, _ = scene
    out = tmp_path / "det.geojson"
    result = TileJob(tif, MODELS / "tiler-detect.pt", patch_size=PATCH, progress=False, out=out,
                     runner="local").run()
    gdf = result.to_geodataframe()
    from_file = gpd.read_file(out)
    assert len(gdf) == len(from_file) == len(result) > 50
    assert gdf.crs.to_epsg() == 4326
    assert list(gdf["class_name"]) == list(from_file["class_name"])
    # same polygons as written (the file rounds lon/lat to 7 decimals, ~1 cm)
    assert gdf.geometry.distance(from_file.geometry).max() < 1e-6
    assert (gdf["x1"] > gdf["x0"]).all() and (gdf["y1"] > gdf["y0"]).all()
