"""Predictor: real Ultralytics models on real patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely

from tiler.errors import ModelError
from tiler.evaluate import match, truth_geometries
from tiler.model import Predictor, resolve_device
from tiler.synth import SceneSpec, patch_labels

REPO = Path(__file__).resolve().parents[1]
DOTA_MODEL = REPO.parent / "shared" / "models" / "yolov8n-obb.pt"
DOTA_IMAGE = REPO.parent / "shared" / "data" / "dota" / "P0706.png"
needs_shared = pytest.mark.skipif(not DOTA_MODEL.exists() or not DOTA_IMAGE.exists(), reason="../shared absent")


def dota_patches() -> list[np.ndarray]:
    import cv2

    im = cv2.imread(str(DOTA_IMAGE))[..., ::-1]
    return [np.ascontiguousarray(im[y:y + 640, x:x + 640]) for y in (0, 480, 542) for x in (0, 471)]


def test_missing_and_bad_models(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Predictor(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load model"):
        Predictor(bad)
    # other formats and exports: test_backends.py


def test_a_model_object_set_up_again_with_the_same_arguments_reuses_its_predictor(tmp_path):
    """tiler.compat makes a Predictor per call around the caller's model object: the second one reuses the
    Ultralytics predictor the first set up, unless the arguments differ; the caller's own `model.predict`
    never shares or changes it."""
    import rasterio
    from ultralytics import YOLO

    from tiler.synth import write_scene

    tif, _ = write_scene(SceneSpec(640, 640, seed=5), tmp_path / "scene.tif")
    with rasterio.open(tif) as ds:
        im = np.ascontiguousarray(ds.read([1, 2, 3]).transpose(1, 2, 0))
    patches = [im[:320, :320], im[320:, 320:]]
    model = YOLO(str(REPO / "models" / "tiler-detect.pt"))
    first = Predictor(model, imgsz=320)
    ref = first.predict(patches)
    assert len(ref) > 5
    again = Predictor(model, imgsz=320)
    assert again._ul is first._ul
    assert np.array_equal(again.predict(patches).coords, ref.coords)
    other = Predictor(model, imgsz=320, conf=0.6)  # other arguments: set up anew
    assert other._ul is not first._ul
    fewer = other.predict(patches)
    assert len(fewer) < len(ref)
    # the caller's own predict, with its own arguments, runs its own predictor and changes nothing of tiler's
    theirs = model.predict([np.ascontiguousarray(p[..., ::-1]) for p in patches], imgsz=320, conf=0.9, verbose=False)
    assert model.predictor is not other._ul and sum(len(r) for r in theirs) < len(fewer)
    assert np.array_equal(other.predict(patches).coords, fewer.coords)
    assert Predictor(model, imgsz=320, conf=0.6)._ul is other._ul


@needs_shared
def test_task_names_and_unknown_class():
    p = Predictor(DOTA_MODEL, imgsz=640)
    assert p.task == "obb" and p.names[1] == "ship" and len(p.names) == 15
    with pytest.raises(ModelError, match="not in model"):
        Predictor(DOTA_MODEL, classes=(99,))
    assert resolve_device("auto") in ("cpu", "cuda:0")


@needs_shared
def test_batch_equals_one_by_one_and_nms_time_limit_never_drops_patches(monkeypatch):
    """Ultralytics' NMS gives up after ~2 s per batch and returns nothing for the remaining images.
    Make its clock jump 10 s per reading: every patch must still get its detections."""
    patches = dota_patches()
    p = Predictor(DOTA_MODEL, imgsz=640)
    single = [len(p.predict([im])) for im in patches]
    assert min(single) > 100  # dense harbour: hundreds of ships per patch

    from ultralytics.utils import nms

    clock = iter(np.arange(0, 1e6, 10.0))
    monkeypatch.setattr(nms.time, "time", lambda: float(next(clock)))
    batched = p.predict(patches)
    assert np.bincount(batched.window, minlength=len(patches)).tolist() == single


def test_segment_polygons_account_for_letterbox():
    """A non-square patch is letterboxed by the model; polygons must come back in patch pixels."""
    spec = SceneSpec(2048, 2048, seed=31337)
    w, h = 320, 224  # 224 rows: the model letterboxes the patch to its 320 input
    for y0 in range(0, 2048 - h, 224):  # the first window with several whole objects
        for x0 in range(0, 2048 - w, 320):
            labels = [lab for lab in patch_labels(spec, x0, y0, w) if lab.visible == 1.0
                      and lab.polygon[:, 1].max() < h]
            if len(labels) >= 5:
                break
        else:
            continue
        break
    assert len(labels) >= 5
    patch = spec.render(x0, y0, w, h)
    p = Predictor(REPO / "models" / "tiler-segment.pt", imgsz=320)
    assert p.task == "segment"
    dets = p.predict([patch])
    pred = dets.geometries()
    truth = np.array([shapely.Polygon(lab.polygon) for lab in labels], dtype=object)
    s = match(pred, dets.score, truth_geometries(truth, "segment"), iou_threshold=0.5)
    assert s.tp >= 0.8 * len(labels), s


EQUALS_ULTRALYTICS = r"""
import json, sys
import numpy as np
from tiler.model import Predictor
from tiler.synth import SceneSpec

spec = SceneSpec(2048, 2048, seed=4242)
square = [spec.render(x, y, 320, 320) for y in (0, 700, 1400) for x in (100, 900, 1700)]
oblong = [spec.render(x, 1000, 300, 200) for x in (0, 600, 1200)]  # letterboxed to the 320 input
out = {}
first = {}
for task in ("obb", "detect", "segment"):
    for name, patches in (("square", square), ("oblong", oblong)):
        p = Predictor(f"models/tiler-{task}.pt", imgsz=320, threads=1, keep_masks=True, precision="fp32")
        first[task, name] = (p, patches, p.predict(patches))
out["torchvision_imported_by_tiler"] = "torchvision" in sys.modules

from ultralytics import YOLO
from tiler.detections import Detections
for (task, name), (p, patches, ours) in first.items():
    theirs = YOLO(f"models/tiler-{task}.pt").predict([np.ascontiguousarray(q[..., ::-1]) for q in patches],
                                                        **p.args)
    if task == "segment":
        # outlines are tiler's own (exact iso-lines); which objects, their classes and scores are Ultralytics',
        # and so are the bitmaps where the patch is the model input (square: no letterbox)
        cls = np.concatenate([r.boxes.cls.cpu().numpy() for r in theirs]).astype(np.int32)
        conf = np.concatenate([r.boxes.conf.cpu().numpy() for r in theirs])
        win = np.concatenate([np.full(len(r.boxes), k) for k, r in enumerate(theirs)])
        agree = total = 0
        if name == "square":
            kk = 0
            for k, r in enumerate(theirs):
                data = r.masks.data.cpu().numpy().astype(bool)
                for j in range(len(data)):
                    crop, (x0, y0) = ours.masks.crop(kk)
                    h, w = crop.shape
                    agree += int((data[j, y0:y0 + h, x0:x0 + w] == crop).sum()) - int(data[j].sum() - data[j, y0:y0 + h, x0:x0 + w].sum())
                    total += crop.size
                    kk += 1
        out[f"{task}/{name}"] = {
            "n": len(ours), "n_ref": len(cls), "mask_agreement": agree / total if total else 1.0,
            "equal": bool(len(ours) == len(cls) and np.array_equal(ours.score, conf)
                          and np.array_equal(ours.class_id, cls) and np.array_equal(ours.window, win))}
        continue
    ref = Detections.concat([p._extract(r, k) for k, r in enumerate(theirs)])
    out[f"{task}/{name}"] = {
        "n": len(ours), "n_ref": len(ref),
        "equal": bool(len(ours) == len(ref) and np.array_equal(ours.coords, ref.coords)
                      and np.array_equal(ours.score, ref.score) and np.array_equal(ours.class_id, ref.class_id)
                      and np.array_equal(ours.window, ref.window))}
print("RESULT " + json.dumps(out))
"""


def test_fast_path_equals_ultralytics_predict():
    """Predictor calls Ultralytics' letterbox/forward/postprocess directly and skips its warm-up (which only
    imports torchvision for NMS); its detections must equal `YOLO.predict` bit for bit, for every task, for
    square patches and letterboxed oblong ones (for segment: the same objects, classes and scores, and the same
    bitmaps, made per object). A fresh process, so that torchvision is really absent."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", EQUALS_ULTRALYTICS], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert res.pop("torchvision_imported_by_tiler") is False
    assert len(res) == 6
    for case, r in res.items():
        assert r["n"] >= 5, (case, r)  # enough objects that NMS and scaling are exercised
        assert r["equal"], (case, r)
        assert r.get("mask_agreement", 1.0) > 0.9999, (case, r)


def test_detect_model_is_the_segment_network_without_its_mask_branch():
    """models/README.md: tiler-detect.pt is made from tiler-segment.pt (scripts/train_models.py), not trained on
    its own: every detect tensor is the segment tensor of the same name, only the mask branches are left out,
    and on real patches both models find exactly the same boxes, classes and scores."""
    import torch
    from ultralytics import YOLO

    def state(name):
        return torch.load(REPO / "models" / name, map_location="cpu", weights_only=False)["model"].state_dict()

    seg, det = state("tiler-segment.pt"), state("tiler-detect.pt")
    assert det.keys() < seg.keys()
    assert all(torch.equal(det[k], seg[k]) for k in det)
    assert {k.split(".")[2] for k in seg.keys() - det.keys()} == {"cv4", "proto"}
    spec = SceneSpec(2048, 2048, seed=31337)
    patches = [spec.render(x, y, 320, 320) for x, y in ((0, 0), (640, 320), (960, 960))]
    found_d = YOLO(str(REPO / "models" / "tiler-detect.pt")).predict(patches, imgsz=320, verbose=False)
    found_s = YOLO(str(REPO / "models" / "tiler-segment.pt")).predict(patches, imgsz=320, verbose=False)
    assert sum(len(r.boxes) for r in found_d) >= 8
    for d, s in zip(found_d, found_s):
        assert torch.equal(d.boxes.data, s.boxes.data)
