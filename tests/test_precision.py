"""The network's precision: bf16 on a CPU with native bfloat16 (the default there), fp32, fp16 on CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

from tiler.config import JobConfig
from tiler.errors import ConfigError, ModelError
from tiler.job import TileJob
from tiler.model import Predictor, predictor as predictor_module
from tiler.synth import SceneSpec, write_scene

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
NATIVE = predictor_module.cpu_has_native_bf16()
needs_bf16 = pytest.mark.skipif(not NATIVE, reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(SceneSpec(1600, 1600, seed=31), tmp_path_factory.mktemp("scene") / "scene.tif")


def patches(n: int = 6) -> list[np.ndarray]:
    spec = SceneSpec(2048, 2048, seed=4242)
    return [spec.render(x, y, 320, 320) for y in (0, 900) for x in (100, 900, 1700)][:n]


@needs_bf16
def test_auto_is_bf16_on_this_cpu_and_the_callers_model_stays_float32():
    import torch
    from ultralytics import YOLO

    model = YOLO(str(MODELS / "tiler-obb.pt"))
    p = Predictor(model, imgsz=320)
    assert p.precision == "bf16"
    dtypes = {q.dtype for q in p._ul.model.backend.model.parameters()}
    assert dtypes == {torch.bfloat16, torch.float32}  # float32: the head's DFL, which decodes boxes
    assert {q.dtype for q in model.model.parameters()} == {torch.float32}  # a copy was converted, not theirs
    assert len(p.predict(patches())) > 10
    # the caller's own predict still runs their float32 network
    assert sum(len(r) for r in model.predict([q[..., ::-1].copy() for q in patches()], imgsz=320,
                                              verbose=False)) > 10
    assert Predictor(model, imgsz=320, precision="fp32").precision == "fp32"


@needs_bf16
@pytest.mark.parametrize("task", ["obb", "detect", "segment"])
def test_bf16_boxes_are_decoded_in_float32_and_match_fp32s(task):
    """The same objects as the float32 network, and boxes within a fraction of a pixel: decoded in bfloat16
    (8 significant bits) a corner at 300 px would be rounded to 1-2 px."""
    ps = patches()
    a = Predictor(MODELS / f"tiler-{task}.pt", imgsz=320, precision="fp32").predict(ps)
    b = Predictor(MODELS / f"tiler-{task}.pt", imgsz=320, precision="bf16").predict(ps)
    assert len(a) > 20 and abs(len(a) - len(b)) <= max(2, len(a) // 50)
    ga, gb = a.geometries(), b.geometries()
    tree = shapely.STRtree(gb)
    ia, ib = tree.query(ga, predicate="intersects")
    same = (a.class_id[ia] == b.class_id[ib]) & (a.window[ia] == b.window[ib])
    ia, ib = ia[same], ib[same]
    iou = shapely.area(shapely.intersection(ga[ia], gb[ib])) / shapely.area(shapely.union(ga[ia], gb[ib]))
    best = np.zeros(len(a))
    np.maximum.at(best, ia, iou)
    assert np.mean(best > 0.9) > 0.97, np.sort(best)[:10]
    assert np.median(best) > 0.985
    if task != "segment":  # outlines are traced from masks; boxes are the network's own numbers
        # each corner's distance to the nearest bf16 corner (Chebyshev), in px on 320 px patches
        off = np.abs(a.coords[:, None] - b.coords[None]).max(axis=-1).min(axis=1)
        assert np.median(off) < 0.25, np.percentile(off, [50, 90, 99])


@needs_bf16
def test_bf16_finds_the_labelled_objects_as_fp32_does(scene, tmp_path):
    from tiler.evaluate import scene_report

    tif, truth = scene
    for task in ("obb", "detect", "segment"):
        reports, results = {}, {}
        for precision in ("fp32", "auto"):
            out = tmp_path / f"{task}-{precision}.geojson"
            results[precision] = TileJob(tif, MODELS / f"tiler-{task}.pt", patch_size=320, overlap=0.25,
                                         progress=False, runner="local", precision=precision, out=out).run()
            reports[precision] = scene_report(out, truth, tif, task)
        assert results["auto"].stats.precision == "bf16" and results["fp32"].stats.precision == "fp32"
        ref, got = reports["fp32"]["scores"]["all"], reports["auto"]["scores"]["all"]
        assert ref.precision > 0.85 and ref.recall > 0.9, (task, ref)
        assert abs(got.precision - ref.precision) <= 0.01 and abs(got.recall - ref.recall) <= 0.01, (task, ref, got)
        assert abs(reports["auto"]["median_iou"]["all"] - reports["fp32"]["median_iou"]["all"]) <= 0.01


def test_without_native_bf16_auto_is_fp32_and_bf16_is_a_one_line_error(monkeypatch):
    """The probe of the CPU is replaced (not the model): a CPU without native bfloat16 emulates it, slower
    than float32, so auto keeps fp32 there and an explicit bf16 says why it cannot run."""
    monkeypatch.setattr(predictor_module, "cpu_has_native_bf16", lambda: False)
    assert Predictor(MODELS / "tiler-detect.pt", imgsz=320).precision == "fp32"
    with pytest.raises(ModelError, match=r"^precision bf16 needs a CPU with native bfloat16 .*; use fp32$"):
        Predictor(MODELS / "tiler-detect.pt", imgsz=320, precision="bf16")


def test_bad_precision_requests_are_one_line_errors(tmp_path, scene):
    with pytest.raises(ConfigError, match=r"^precision must be one of auto, fp32, fp16, bf16, got 'fp8'$"):
        JobConfig(source="a.tif", model="m.pt", precision="fp8")
    with pytest.raises(ModelError, match=r"^precision fp16 runs on a CUDA GPU"):
        Predictor(MODELS / "tiler-detect.pt", imgsz=320, device="cpu", precision="fp16")
    for precision in ("fp32", "bf16"):  # an export runs at its runtime's own precision; nothing is exported first
        with pytest.raises(ModelError, match=rf"^precision {precision} applies to \.pt models run by torch; the onnx "
                                             r"backend runs at its runtime's own precision \(leave precision auto\)$"):
            Predictor(MODELS / "tiler-detect.pt", imgsz=320, precision=precision, backend="onnx")
    tif, _ = scene
    out = tmp_path / "out.geojson"
    r = subprocess.run([sys.executable, "-m", "tiler.cli", "predict", str(tif), "--model",
                        str(MODELS / "tiler-obb.pt"), "--out", str(out), "--precision", "fp16", "--device", "cpu",
                        "--no-progress"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.strip().splitlines()[-1].startswith("tiler: error: precision fp16 runs on a CUDA GPU"), r.stderr
