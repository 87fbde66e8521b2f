"""End-to-end tests of the `tiler predict` command line, run as a subprocess.

The successful runs use the real YOLOv8n-OBB (DOTA) model and a real DOTA image from ../shared; they
are skipped when that folder is absent. The error cases need the model/image only where they say so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODEL = SHARED / "models" / "yolov8n-obb.pt"
IMAGE = SHARED / "data" / "dota" / "P1888.png"
LABELS = SHARED / "data" / "dota" / "P1888.txt"
VEHICLES = {"large vehicle", "small vehicle"}
LARGE_VEHICLE_ID = 9  # in the DOTA class names of the shared model (checked below)

HELP_OPTIONS = ["--model", "--out", "--patch-size", "--overlap", "--conf", "--iou", "--imgsz", "--classes",
                "--nms-threshold", "--match-metric", "--class-agnostic", "--bands", "--batch-size", "--merge",
                "--simplify", "--largest-part", "--coarse-factor"]


def run_cli(*args: str | os.PathLike, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tiler.cli", *map(os.fspath, args)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)


def need_shared(*paths: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared asset(s) absent: {', '.join(map(str, missing))}")


def read_geojson(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_geojsonseq(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if not text:
        return []
    assert text.startswith("\x1e"), "RFC 8142: every record starts with a record separator"
    records = text.split("\x1e")[1:]
    for r in records:
        assert r.endswith("\n"), "RFC 8142: every record ends with a line feed"
    return [json.loads(r) for r in records]


def check_feature(feat: dict) -> None:
    assert feat["type"] == "Feature"
    props = feat["properties"]
    assert set(props) >= {"class_id", "class_name", "score", "bbox_px"}
    assert isinstance(props["class_id"], int)
    assert isinstance(props["class_name"], str) and props["class_name"]
    assert 0.0 <= props["score"] <= 1.0
    bbox = props["bbox_px"]
    assert len(bbox) == 4 and all(isinstance(v, float) for v in bbox)
    assert bbox[0] < bbox[2] and bbox[1] < bbox[3]
    geom = feat["geometry"]
    assert geom["type"] == "Polygon"
    ring = geom["coordinates"][0]
    assert len(ring) >= 4, "a closed ring of a polygon has at least 4 positions"
    assert ring[0] == ring[-1], "polygon rings must be closed"
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    # the bbox is the bounds of the polygon (both rounded to 3 decimals)
    assert min(xs) == pytest.approx(bbox[0], abs=2e-3) and max(xs) == pytest.approx(bbox[2], abs=2e-3)
    assert min(ys) == pytest.approx(bbox[1], abs=2e-3) and max(ys) == pytest.approx(bbox[3], abs=2e-3)


# -- invalid invocations -------------------------------------------------------------------------------------

def _bad_cases(tmp: Path) -> dict[str, tuple[list, str]]:
    """name -> (argv after `predict`, a regex the error line must match). {out} is replaced later.
    The valid parts are the project's own model and a small generated scene, so these run anywhere."""
    from tiler.synth import SceneSpec, write_scene

    img = str(write_scene(SceneSpec(256, 256, seed=5), tmp / "scene.tif")[0])
    model = str(REPO / "models" / "tiler-detect.pt")
    garbage_pt = tmp / "garbage.pt"
    garbage_pt.write_bytes(os.urandom(4096))
    garbage_tif = tmp / "garbage.tif"
    garbage_tif.write_bytes(b"II*\x00" + os.urandom(4096))  # a TIFF signature followed by noise
    return {
        "overlap 1": ([img, "--model", model, "--overlap", "1"], r"overlap"),
        "overlap -0.1": ([img, "--model", model, "--overlap", "-0.1"], r"overlap"),
        "patch-size 0": ([img, "--model", model, "--patch-size", "0"], r"patch.size"),
        "patch-size abc": ([img, "--model", model, "--patch-size", "abc"], r"patch.size.*abc"),
        "unknown match metric": ([img, "--model", model, "--match-metric", "dice"], r"match.metric.*dice"),
        "missing input": ([str(tmp / "no-such-image.tif"), "--model", model], r"no-such-image\.tif"),
        "missing model": ([img, "--model", str(tmp / "no-such-model.pt")], r"no-such-model\.pt"),
        "garbage model": ([img, "--model", str(garbage_pt)], r"garbage\.pt"),
        "garbage input": ([str(garbage_tif), "--model", model], r"garbage\.tif"),
        "conf 1.5": ([img, "--model", model, "--conf", "1.5"], r"conf.*1\.5"),
        "coarse-factor 1": ([img, "--model", model, "--coarse-factor", "1"], r"coarse_factor.*2 to 16.*got 1"),
        # a GPU asked for by name that is not there: an error, never a silent run on the CPU
        "absent GPU": ([img, "--model", model, "--device", "cuda:7"], r"device cuda:7 asked for, but torch sees"),
    }


BAD_CASES = ["overlap 1", "overlap -0.1", "patch-size 0", "patch-size abc", "unknown match metric",
             "missing input", "missing model", "garbage model", "garbage input", "conf 1.5", "coarse-factor 1",
             "absent GPU"]


def assert_usage_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got:\n{proc.stderr[-3000:]}"
    assert lines[0].startswith("tiler: error:"), lines[0]
    assert re.search(pattern, lines[0], re.IGNORECASE), (pattern, lines[0])
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", BAD_CASES)
def test_invalid_values_exit_2_with_one_line_and_no_output(case, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv, pattern = _bad_cases(inputs)[case]
    proc = run_cli("predict", *argv, "--out", out_dir / "result.geojson", "--no-progress")
    assert_usage_error(proc, pattern)
    assert os.listdir(out_dir) == [], "a failed run must leave no output (nor a hidden .part file)"


@pytest.mark.parametrize("out_name, pattern", [
    ("result.txt", r"\.txt"),
    ("missing-folder/result.geojson", r"missing-folder"),
])
def test_invalid_output_path_exit_2(out_name, pattern, tmp_path):
    # validated before the input or model is touched, so these need nothing from ../shared
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_cli("predict", tmp_path / "img.tif", "--model", tmp_path / "m.pt", "--out", out_dir / out_name,
                   "--no-progress")
    assert_usage_error(proc, pattern)
    assert os.listdir(out_dir) == []


def test_existing_output_replaced_only_on_success(tmp_path):
    from tiler.synth import SceneSpec, write_scene

    image = write_scene(SceneSpec(256, 256, seed=5), tmp_path / "inputs" / "scene.tif")[0]
    out = tmp_path / "result.geojson"
    out.write_text("sentinel\n", encoding="utf-8")
    proc = run_cli("predict", image, "--model", tmp_path / "missing.pt", "--out", out, "--no-progress")
    assert_usage_error(proc, r"missing\.pt")
    assert out.read_text(encoding="utf-8") == "sentinel\n"
    assert sorted(os.listdir(tmp_path)) == ["inputs", "result.geojson"], "no hidden .part file may be left"


def test_predict_help_lists_every_option():
    proc = run_cli("predict", "--help")
    assert proc.returncode == 0, proc.stderr
    for opt in HELP_OPTIONS:
        assert re.search(re.escape(opt) + r"\b", proc.stdout), f"{opt} missing from `tiler predict --help`"


def test_cli_without_arguments_is_a_usage_error():
    proc = run_cli()
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


# -- real runs -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    need_shared(MODEL, IMAGE)
    out_dir = tmp_path_factory.mktemp("full")
    out = out_dir / "P1888.geojson"
    proc = run_cli("predict", IMAGE, "--model", MODEL, "--out", out, "--patch-size", "640", "--overlap", "0.25",
                   "--no-progress")
    return proc, out


def test_real_run_succeeds_and_reports(full_run):
    proc, out = full_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("tiler:"), last
    m = re.search(r"(\d+) objects", last)
    assert m, last
    assert int(m.group(1)) == len(read_geojson(out)["features"])
    assert os.listdir(out.parent) == [out.name], "only the output file, no leftovers"


def test_real_run_geojson_structure(full_run):
    proc, out = full_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = read_geojson(out)
    assert doc["type"] == "FeatureCollection"
    assert doc["coordinate_space"] == "pixel", "a PNG has no georeferencing"
    assert "crs" not in doc
    feats = doc["features"]
    assert feats
    for feat in feats:
        check_feature(feat)
    # everything lies within the 712x557 image (give a few pixels for boxes that overhang an edge)
    xy = np.array([p for f in feats for p in f["geometry"]["coordinates"][0]])
    assert xy[:, 0].min() > -10 and xy[:, 0].max() < 712 + 10
    assert xy[:, 1].min() > -10 and xy[:, 1].max() < 557 + 10
    # coordinates are floats, never truncated to whole pixels
    assert np.any(xy != np.round(xy)), "all coordinates are integers: were they truncated?"
    assert np.mean(xy != np.round(xy)) > 0.5


def test_real_run_finds_the_vehicles(full_run):
    proc, out = full_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    feats = read_geojson(out)["features"]
    vehicles = [f for f in feats if f["properties"]["class_name"] in VEHICLES]
    assert len(vehicles) >= 30

    from tiler.evaluate import match, read_dota_labels

    need_shared(LABELS)
    names, truth, _difficult = read_dota_labels(LABELS)
    is_vehicle = np.isin(names, ["large-vehicle", "small-vehicle"])
    assert is_vehicle.sum() == 64  # 50 large + 14 small
    pred = np.array([shapely.Polygon(f["geometry"]["coordinates"][0]) for f in vehicles], dtype=object)
    scores = np.array([f["properties"]["score"] for f in vehicles])
    score = match(pred, scores, truth[is_vehicle], iou_threshold=0.3)
    assert score.recall >= 0.7, str(score)
    # merged output: no vehicle is reported twice in the same place
    assert score.precision >= 0.7, str(score)


def test_model_class_names_are_dota():
    need_shared(MODEL)
    from ultralytics import YOLO

    names = YOLO(str(MODEL)).names
    assert names[LARGE_VEHICLE_ID] == "large vehicle"
    assert names[LARGE_VEHICLE_ID + 1] == "small vehicle"


def test_classes_option_restricts_output(tmp_path, full_run):
    need_shared(MODEL, IMAGE)
    out = tmp_path / "large.geojsonl"
    proc = run_cli("predict", IMAGE, "--model", MODEL, "--out", out, "--classes", str(LARGE_VEHICLE_ID),
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    feats = read_geojsonseq(out)
    assert len(feats) >= 20
    for feat in feats:
        check_feature(feat)
    assert {f["properties"]["class_id"] for f in feats} == {LARGE_VEHICLE_ID}
    assert {f["properties"]["class_name"] for f in feats} == {"large vehicle"}
    # the unrestricted run did report other classes, so the option did something
    _, full_out = full_run
    if full_out.exists():
        all_ids = {f["properties"]["class_id"] for f in read_geojson(full_out)["features"]}
        assert all_ids - {LARGE_VEHICLE_ID}, "the full run found only large vehicles; the check proves nothing"


def test_segmentation_and_merge_flags_reach_the_job(tmp_path):
    """--merge, --simplify and --largest-part on a segment model: a pixel-space scene, every feature a valid
    single Polygon with at most the vertices the tolerance allows; a bad merge name is one line, exit 2."""
    from tiler.synth import SceneSpec

    import rasterio

    spec = SceneSpec(640, 640, seed=12)
    png = tmp_path / "scene.png"
    with rasterio.open(png, "w", driver="PNG", width=640, height=640, count=3, dtype="uint8") as ds:
        ds.write(spec.render(0, 0, 640, 640).transpose(2, 0, 1))
    out = tmp_path / "seg.geojson"
    model = REPO / "models" / "tiler-segment.pt"
    proc = run_cli("predict", png, "--model", model, "--out", out, "--patch-size", "320", "--merge", "union",
                   "--simplify", "1.0", "--largest-part", "--coarse-factor", "2", "--report", tmp_path / "r.json",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["config"]["coarse_factor"] == 2
    # 3 x 3 fine windows of 320 px, one coarse window of 640 px read at 320
    assert report["frames"][0]["coarse_patch_size"] == [640, 640] and report["stats"]["windows_planned"] == 10
    fc = read_geojson(out)
    assert fc["coordinate_space"] == "pixel" and len(fc["features"]) > 10
    for f in fc["features"]:
        assert f["geometry"]["type"] == "Polygon"
        assert shapely.geometry.shape(f["geometry"]).is_valid
    assert np.mean([len(f["geometry"]["coordinates"][0]) for f in fc["features"]]) < 12
    bad = run_cli("predict", png, "--model", model, "--out", tmp_path / "x.geojson", "--merge", "weld")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "merge" in bad.stderr
    assert not (tmp_path / "x.geojson").exists()
