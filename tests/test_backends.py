"""Exported-model backends: real OpenVINO and ONNX Runtime exports of the project's models, against the .pt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

from tiler.errors import ModelError
from tiler.job import TileJob
from tiler.model import Predictor, backends
from tiler.synth import SceneSpec, write_scene

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
DOTA_MODEL = REPO.parent / "shared" / "models" / "yolov8n-obb.pt"
P0706 = REPO.parent / "shared" / "data" / "dota" / "P0706.png"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One export cache for the module, so each model is exported once."""
    path = tmp_path_factory.mktemp("export-cache")
    old = os.environ.get("TILER_CACHE_DIR")
    os.environ["TILER_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TILER_CACHE_DIR", None)
    else:
        os.environ["TILER_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    tif, _ = write_scene(SceneSpec(1280, 1280, seed=21), tmp_path_factory.mktemp("scene") / "scene.tif")
    return tif


def cli_predict(raster, out, cache, *args):
    """`tiler predict RASTER --model tiler-obb.pt --out OUT ARGS` in a fresh process, exporting into `cache`."""
    return subprocess.run([sys.executable, "-m", "tiler.cli", "predict", str(raster), "--model",
                           str(MODELS / "tiler-obb.pt"), "--out", str(out), *args], capture_output=True, text=True,
                          env={**os.environ, "TILER_CACHE_DIR": str(cache)}, cwd=REPO)


def run(scene, model, **kw):
    return TileJob(scene, model, patch_size=320, overlap=0.25, progress=False, runner="local", **kw).run()


def assert_same_objects(a, b, min_iou: float):
    """Every detection of `a` has one of the same class in `b` overlapping it by `min_iou`, and counts agree."""
    da, db = a.detections, b.detections
    assert len(da) > 50
    assert abs(len(da) - len(db)) <= max(2, 0.02 * len(da)), (len(da), len(db))
    ga, gb = da.geometries(), db.geometries()
    tree = shapely.STRtree(gb)
    ia, ib = tree.query(ga, predicate="intersects")
    iou = shapely.area(shapely.intersection(ga[ia], gb[ib])) / shapely.area(shapely.union(ga[ia], gb[ib]))
    ok = (iou >= min_iou) & (da.class_id[ia] == db.class_id[ib])
    matched = np.zeros(len(da), bool)
    matched[ia[ok]] = True
    assert matched.mean() >= 0.98, f"{(~matched).sum()} of {len(da)} detections have no twin"


@pytest.mark.parametrize("task", ["obb", "detect", "segment"])
@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_exported_backend_finds_the_same_objects_as_the_pt(cache, scene, task, backend):
    ref = run(scene, MODELS / f"tiler-{task}.pt")
    got = run(scene, MODELS / f"tiler-{task}.pt", backend=backend)
    assert got.names == ref.names and got.task == ref.task
    assert got.stats.precision == "auto"  # the runtime's own choice (OpenVINO's is bf16 on a CPU that has it)
    # the same network in another runtime: float sums in another order, so near-identical, not bitwise
    assert_same_objects(ref, got, min_iou=0.9)
    assert_same_objects(got, ref, min_iou=0.9)
    exports = [json.loads(p.read_text()) for p in cache.glob(f"exports/tiler-{task}-*-{backend}-*/tiler-export.json")]
    assert len(exports) == 1 and exports[0]["imgsz"] == 320 and exports[0]["batch"] == 16


def test_export_is_cached_and_reused(cache, scene):
    Predictor(MODELS / "tiler-obb.pt", imgsz=320, backend="openvino", batch=16)
    folder, = (p for p in cache.glob("exports/tiler-obb-*-openvino-320px-b16-*") if p.is_dir())
    stamp = (folder / "tiler-export.json").stat().st_mtime_ns
    p = Predictor(MODELS / "tiler-obb.pt", imgsz=320, backend="openvino", batch=16)
    assert p.backend == "openvino"
    assert (folder / "tiler-export.json").stat().st_mtime_ns == stamp  # not exported again
    assert list((cache / "openvino-compiled").glob("*.blob"))  # nor compiled again: OpenVINO's compile cache
    # another batch size is another export (exports have a fixed batch)
    Predictor(MODELS / "tiler-obb.pt", imgsz=320, backend="openvino", batch=4)
    assert len([p for p in cache.glob("exports/tiler-obb-*-openvino-320px-*") if p.is_dir()]) == 2
    assert not list(cache.glob("exports/.export-*"))  # no half-written export left behind


def test_an_export_given_as_the_model_runs_with_the_task_from_its_metadata(cache, scene, tmp_path):
    Predictor(MODELS / "tiler-obb.pt", imgsz=320, backend="openvino", batch=16)
    folder, = (p for p in cache.glob("exports/tiler-obb-*-openvino-320px-b16-*") if p.is_dir())
    # renamed so that nothing in the name says "obb": the task must come from the export's metadata
    renamed = tmp_path / "survey_openvino_model"
    shutil.copytree(folder / json.loads((folder / "tiler-export.json").read_text())["artifact"], renamed)
    ref = run(scene, MODELS / "tiler-obb.pt", backend="openvino")
    got = run(scene, renamed)
    assert got.task == "obb" and got.names == ref.names
    assert np.array_equal(got.detections.coords, ref.detections.coords)
    with pytest.raises(ModelError, match="exported for 320x320 px input.*640 px"):
        Predictor(renamed, imgsz=640)
    with pytest.raises(ModelError, match=r"already an export \(openvino\); the onnx backend exports from the .pt"):
        Predictor(renamed, imgsz=320, backend="onnx")


def test_a_damaged_export_is_made_again_in_the_cache_and_a_one_line_error_given_as_the_model(cache, scene, tmp_path):
    def cli(out):
        return cli_predict(scene, out, cache, "--patch-size", "320", "--backend", "openvino", "--no-progress")

    r = cli(tmp_path / "first.geojson")
    assert r.returncode == 0, r.stderr
    folder, = (p for p in cache.glob("exports/tiler-obb-*-openvino-320px-b16-*") if p.is_dir())
    weights, = folder.rglob("*.bin")
    size = weights.stat().st_size
    # a copy of the export without its weights, given as the model: the runtime's reason, on one line
    copy = tmp_path / "cut_openvino_model"
    shutil.copytree(weights.parent, copy)
    (copy / weights.name).unlink()
    with pytest.raises(ModelError, match=r"cannot load model .*cut_openvino_model: .*Can not open file .*\.bin") as err:
        Predictor(copy, imgsz=320)
    assert "\n" not in str(err.value)
    # the cache's own export cut short (a full disk, an interrupted copy): made again, said in one line
    with open(weights, "r+b") as f:
        f.truncate(1000)
    r = cli(tmp_path / "again.geojson")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == f"tiler: warning: the cached export {folder} was damaged; making it again"
    assert weights.stat().st_size == size
    assert (tmp_path / "again.geojson").read_text() == (tmp_path / "first.geojson").read_text()
    stamp = (folder / "tiler-export.json").stat().st_mtime_ns
    r = cli(tmp_path / "third.geojson")  # intact again: no warning, not made again
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (folder / "tiler-export.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_a_segment_export_outlines_masks_as_its_pt_does(cache, backend, tmp_path):
    """The outline inset follows the mask_ratio the model was trained with; an export records it in its own
    metadata, so even a copy of the export away from the cache outlines masks as the .pt does."""
    pt = Predictor(MODELS / "tiler-segment.pt", imgsz=320)
    exported = Predictor(MODELS / "tiler-segment.pt", imgsz=320, backend=backend, batch=16)
    artifact = Path(exported.model.model)
    copy = tmp_path / artifact.name
    (shutil.copytree if artifact.is_dir() else shutil.copyfile)(artifact, copy)
    from tiler.model import _ultralytics
    assert _ultralytics.export_metadata(copy)["mask_ratio"] == pt.model.ckpt["train_args"]["mask_ratio"]
    assert Predictor(copy, imgsz=320).mask_inset == exported.mask_inset == pt.mask_inset > 0


def test_bad_backend_requests_are_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match="tensorrt backend needs an NVIDIA GPU"):
        Predictor(MODELS / "tiler-obb.pt", imgsz=320, backend="tensorrt", device="cpu")
    weird = tmp_path / "model.h5"
    weird.write_bytes(b"x")
    with pytest.raises(ModelError, match="unsupported model format .h5"):
        Predictor(weird)
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="no Ultralytics metadata"):
        Predictor(fake)
    for name in ("empty_openvino_model", "weights"):
        (tmp_path / name).mkdir()
        with pytest.raises(ModelError, match="not an Ultralytics OpenVINO export"):
            Predictor(tmp_path / name)


def test_cli_backend_option_and_bad_value(cache, scene, tmp_path):
    out = tmp_path / "out.geojson"
    r = cli_predict(scene, out, cache, "--patch-size", "320", "--backend", "onnx", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(out.read_text())["features"]) > 50
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr
    r = cli_predict(scene, tmp_path / "x.geojson", cache, "--backend", "tflite")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "backend must be auto or one of torch, openvino" in r.stderr
    assert not (tmp_path / "x.geojson").exists()


def test_model_format_names():
    assert backends.model_format(MODELS / "tiler-obb.pt") == "torch"
    with pytest.raises(ModelError, match="unsupported model format"):
        backends.model_format("model.tflite")


def test_int8_backend_finds_the_labelled_objects_as_the_pt_does(cache, tmp_path):
    """openvino-int8 quantises the model on the job's own windows, once: another network (int8 weights and
    activations), so its detections are compared with the scene's labels, against the .pt's."""
    from tiler.evaluate import score_scene

    tif, truth = write_scene(SceneSpec(1600, 1600, seed=31), tmp_path / "scene.tif")
    scores, results = {}, {}
    for backend in ("auto", "openvino-int8"):
        out = tmp_path / f"{backend}.geojson"
        results[backend] = run(tif, MODELS / "tiler-obb.pt", backend=backend, out=out)
        scores[backend] = score_scene(out, truth, tif, "obb")["all"]
    ref, got = scores["auto"], scores["openvino-int8"]
    assert ref.precision > 0.85 and ref.recall > 0.9, ref
    assert abs(got.precision - ref.precision) <= 0.02 and abs(got.recall - ref.recall) <= 0.02, (ref, got)
    assert results["openvino-int8"].stats.backend == "openvino-int8"
    assert "quantize" in results["openvino-int8"].stats.seconds
    # quantised once, on every window of the job (fewer than the 128 it takes at most)
    folder, = (p for p in cache.glob("exports/tiler-obb-*-openvino-int8-320px-b16-cal*") if p.is_dir())
    record = json.loads((folder / "tiler-export.json").read_text())
    assert record["calibration_patches"] == results["auto"].stats.windows_run < 128
    assert record["backend"] == "openvino-int8"
    stamp = (folder / "tiler-export.json").stat().st_mtime_ns
    again = run(tif, MODELS / "tiler-obb.pt", backend="openvino-int8", out=tmp_path / "again.geojson")
    assert (folder / "tiler-export.json").stat().st_mtime_ns == stamp  # the cached model, not quantised again
    assert np.array_equal(again.detections.coords, results["openvino-int8"].detections.coords)
    # the export, copied anywhere, is known for what it is
    copy = tmp_path / "copy_openvino_model"
    shutil.copytree(folder / record["artifact"], copy)
    assert backends.model_backend(copy) == "openvino-int8" and backends.model_format(copy) == "openvino"
    assert not list(cache.glob("exports/.export-*"))


def test_int8_calibration_patches_spread_over_every_frame_of_a_survey(tmp_path):
    from tiler.config import JobConfig
    from tiler.frames import calibration_patches, plan_frames
    from tiler.pipeline import read_patches

    uris = [str(write_scene(SceneSpec(960, 960, seed=40 + k), tmp_path / f"f{k}.tif")[0]) for k in range(2)]
    cfg = JobConfig(source=uris, model=str(MODELS / "tiler-obb.pt"), patch_size=320, overlap=0.25)
    frames = plan_frames(cfg, uris)
    per_frame = [len(f.plan.window_ids) for f in frames]
    assert per_frame == [16, 16]
    patches = calibration_patches(frames, 8)
    assert len(patches) == 8
    # evenly over the job's 32 windows in job order: every 4th or 5th, so 4 from each frame
    picks = np.linspace(0, 31, 8).round().astype(int)
    expected = []
    for f, first in zip(frames, (0, 16)):
        local = picks[(picks >= first) & (picks < first + 16)] - first
        src = f.source.reopened()
        expected += list(read_patches(src, f.patch_size, f.plan.origins[local], f.plan.window_ids[local]))
        src.close()
    assert all(np.array_equal(a, b) for a, b in zip(patches, expected))
    assert len(calibration_patches(frames, 128)) == 32  # never more than the job has


def test_int8_calibration_leaves_out_windows_read_back_empty(cache, tmp_path):
    """A black border without a nodata value: its windows are planned, read back all zero and skipped by the
    model, so they are not calibrated on either; a raster black all over runs the .pt, with a warning."""
    import rasterio

    from tiler.config import JobConfig
    from tiler.frames import calibration_patches, plan_frames

    tif, _ = write_scene(SceneSpec(960, 960, seed=41), tmp_path / "border.tif")
    with rasterio.open(tif, "r+") as ds:
        ds.nodata = None
        ds.write(np.zeros((3, 960, 480), np.uint8), window=rasterio.windows.Window(0, 0, 480, 960))
    cfg = JobConfig(source=str(tif), model=str(MODELS / "tiler-obb.pt"), patch_size=320, overlap=0.25)
    frames = plan_frames(cfg, [str(tif)])
    assert len(frames[0].plan.window_ids) == 16  # the black half is planned: nothing says it is nodata
    patches = calibration_patches(frames, 128)
    assert 0 < len(patches) < 16 and all(p.any() for p in patches)

    from affine import Affine

    black = tmp_path / "black.tif"
    with rasterio.open(black, "w", driver="GTiff", width=700, height=700, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as ds:
        ds.write(np.zeros((3, 700, 700), np.uint8))
    with pytest.warns(RuntimeWarning, match="read back empty; the model runs as the .pt"):
        result = run(black, MODELS / "tiler-obb.pt", backend="openvino-int8", out=tmp_path / "black.geojson")
    assert result.stats.backend == "torch" and len(result.detections) == 0


def test_int8_job_with_no_window_to_run_ends_as_a_torch_job_does(cache, tmp_path):
    """An all-nodata raster has nothing to calibrate on, nor anything to predict: the same empty output as the
    .pt's, and nothing quantised."""
    import rasterio
    from affine import Affine

    tif = tmp_path / "empty.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=1000, height=800, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as ds:
        ds.write(np.zeros((3, 800, 1000), np.uint8))
    before = set(cache.glob("exports/*"))
    outs = {}
    for backend in ("auto", "openvino-int8"):
        outs[backend] = tmp_path / f"{backend}.geojson"
        r = cli_predict(tif, outs[backend], cache, "--patch-size", "320", "--backend", backend, "--no-progress")
        assert r.returncode == 0, r.stderr
        assert "0/12 windows run, 12 nodata skipped" in r.stdout + r.stderr
    assert json.loads(outs["openvino-int8"].read_text()) == json.loads(outs["auto"].read_text())
    assert json.loads(outs["auto"].read_text())["features"] == []
    assert set(cache.glob("exports/*")) == before


def test_int8_predictor_needs_calibration_patches(cache):
    with pytest.raises(ModelError, match="openvino-int8 backend quantises the model on calibration patches"):
        Predictor(MODELS / "tiler-detect.pt", imgsz=320, backend="openvino-int8")
    with pytest.raises(ModelError, match="one or more RGB uint8"):
        Predictor(MODELS / "tiler-detect.pt", imgsz=320, backend="openvino-int8",
                  calibration=[np.zeros((320, 320), np.uint8)])


@pytest.mark.skipif(not DOTA_MODEL.exists() or not P0706.exists(), reason="../shared absent")
def test_dota_ship_f1_of_each_cpu_backend_within_half_a_point_of_the_pt(cache):
    """Against the .pt run as it is (fp32): the default (bf16 on a CPU with native bfloat16, else that same
    fp32) and every CPU export."""
    from tiler.evaluate import match, read_dota_labels

    names, truth, _ = read_dota_labels(P0706.with_suffix(".txt"))
    f1 = {}
    runs = {"pt": dict(precision="fp32"), "default": {}, **{b: dict(backend=b) for b in
                                                             ("openvino", "openvino-int8", "onnx")}}
    for name, args in runs.items():
        result = TileJob(P0706, DOTA_MODEL, patch_size=640, overlap=0.25, progress=False, runner="local",
                         **args).run()
        d = result.detections
        ship = d.class_id == next(k for k, v in result.names.items() if v == "ship")
        s = match(d.geometries()[ship], d.score[ship], truth[names == "ship"], iou_threshold=0.3)
        f1[name] = 2 * s.precision * s.recall / (s.precision + s.recall)
    assert f1["pt"] > 0.9
    for name in runs:
        assert abs(f1[name] - f1["pt"]) <= 0.005, f1
