"""The sparse rotated-box NMS keeps exactly what Ultralytics' dense Fast-NMS keeps: on random clusters of
boxes at several thresholds, and through the whole Ultralytics predict on real dense patches."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ultralytics.utils import metrics
from ultralytics.utils.nms import TorchNMS

from tiler.model import _ultralytics
from tiler.model import nms
from tiler.model.nms import MIN_SPARSE_IOU, batched_rotated_nms, sparse_rotated_fast_nms

REPO = Path(__file__).resolve().parent.parent
DOTA_MODEL = REPO.parent / "shared" / "models" / "yolov8n-obb.pt"
DOTA_IMAGE = REPO.parent / "shared" / "data" / "dota" / "P0706.png"
needs_shared = pytest.mark.skipif(not DOTA_MODEL.exists() or not DOTA_IMAGE.exists(), reason="../shared absent")

_ultralytics.sparse_rotated_nms()
DENSE = TorchNMS.fast_nms._tiler_original  # Ultralytics' own


def _dense(boxes, scores, thr):
    return DENSE(boxes, scores, thr, iou_func=metrics.batch_probiou)


def _clusters(rng, n, spread):
    """Rotated boxes in tight clusters (many overlapping duplicates) plus scattered ones, float32 xywhr."""
    centres = rng.uniform(0, 640, (n // 8, 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, spread, (n, 2))
    wh = rng.uniform(4, 60, (n, 2)) * rng.choice([1.0, 0.3], (n, 1))  # some long thin boxes
    r = rng.uniform(-np.pi / 2, np.pi, (n, 1))
    return torch.from_numpy(np.hstack([xy, wh, r]).astype(np.float32))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thr", [MIN_SPARSE_IOU, 0.45, 0.7, 0.9])
def test_same_kept_boxes_as_ultralytics_fast_nms(seed, thr):
    rng = np.random.default_rng(seed)
    boxes = _clusters(rng, 1500, spread=[1.0, 3.0, 8.0][seed % 3])
    scores = torch.from_numpy(rng.random(1500).astype(np.float32))
    if seed == 5:
        scores = torch.round(scores * 4) / 4  # many tied scores: the order must match too
    want = _dense(boxes, scores, thr)
    got = sparse_rotated_fast_nms(boxes, scores, thr)
    assert 0 < len(want) < 1500
    assert torch.equal(got, want)


def _odd_boxes(rng, n):
    """Boxes the radius bound does not cover, among regular ones: tiny boxes (under 0.1 px), sub-pixel slivers,
    needles of aspect 50-500, and boxes of zero width or zero size."""
    boxes = _clusters(rng, n, 3.0).numpy()
    k = rng.permutation(n)
    tiny, sliver, needle, zero = np.array_split(k[: n // 3], 4)
    boxes[tiny, 2:4] = rng.uniform(0.001, 0.1, (len(tiny), 2))
    boxes[sliver, 3] = rng.uniform(0.05, 0.9, len(sliver))
    boxes[needle, 2] = boxes[needle, 3] * rng.uniform(50, 500, len(needle))
    boxes[zero[::2], 2] = 0.0
    boxes[zero[1::2], 2:4] = 0.0
    return torch.from_numpy(boxes)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("thr", [MIN_SPARSE_IOU, 0.7, 0.95])
def test_same_kept_boxes_with_tiny_thin_and_degenerate_boxes(seed, thr):
    rng = np.random.default_rng(50 + seed)
    boxes = _odd_boxes(rng, 900)
    scores = torch.from_numpy(rng.random(900).astype(np.float32))
    want = _dense(boxes, scores, thr)
    assert torch.equal(sparse_rotated_fast_nms(boxes, scores, thr), want)
    # boxes of zero size overlap completely under batch_probiou's eps, wherever they are: pairs above the
    # threshold with disjoint extents, which a search by extents alone would miss
    i, j = torch.nonzero(metrics.batch_probiou(boxes, boxes).triu_(diagonal=1) > thr).T
    x, y, w, h, r = boxes.double().T
    ex, ey = (w * r.cos().abs() + h * r.sin().abs()) / 2, (w * r.sin().abs() + h * r.cos().abs()) / 2
    apart = ((x[i] - x[j]).abs() > ex[i] + ex[j]) | ((y[i] - y[j]).abs() > ey[i] + ey[j])
    assert apart.sum() > 100


def test_too_many_irregular_boxes_fall_back_to_the_dense_nms(monkeypatch):
    rng = np.random.default_rng(8)
    boxes, scores = _odd_boxes(rng, 600), torch.from_numpy(rng.random(600).astype(np.float32))
    monkeypatch.setattr(nms, "_MAX_DENSE_PAIRS", 10)
    assert sparse_rotated_fast_nms(boxes, scores, 0.7) is None
    assert torch.equal(TorchNMS.fast_nms(boxes, scores, 0.7, iou_func=metrics.batch_probiou),
                       _dense(boxes, scores, 0.7))
    pred = _raw_obb_batch(rng, 2, 200, 3, tied=False)
    pred[:, 2:4] *= 0.001  # every box tiny
    assert batched_rotated_nms(pred, 0.25, 0.7, nc=3) is None


def test_candidate_pairs_hold_every_pair_above_the_threshold():
    # on clustered boxes with scattered odd ones: every pair whose batch_probiou exceeds the threshold is a candidate
    rng = np.random.default_rng(3)
    boxes = _odd_boxes(rng, 1200)
    iou = metrics.batch_probiou(boxes, boxes).triu_(diagonal=1)
    for thr in (0.3, 0.5, 0.7, 0.9):
        i, j = nms.candidate_pairs(boxes.numpy(), thr)
        assert np.all(i < j) and len(set(zip(i.tolist(), j.tolist()))) == len(i)
        above = set(map(tuple, torch.nonzero(iou > thr).tolist()))
        assert above <= set(zip(i.tolist(), j.tolist()))


def test_patched_fast_nms_defers_to_ultralytics_outside_its_range():
    rng = np.random.default_rng(9)
    boxes, scores = _clusters(rng, 300, 4.0), torch.from_numpy(rng.random(300).astype(np.float32))
    assert torch.equal(TorchNMS.fast_nms(boxes, scores, 0.1, iou_func=metrics.batch_probiou),
                       _dense(boxes, scores, 0.1))
    xyxy = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:4]], 1)
    assert torch.equal(TorchNMS.fast_nms(xyxy, scores, 0.5), DENSE(xyxy, scores, 0.5))
    assert len(sparse_rotated_fast_nms(torch.zeros((0, 5)), torch.zeros(0), 0.7)) == 0


def _raw_obb_batch(rng, images, anchors, nc, tied):
    """A raw OBB head output (images, 4 + nc + 1, anchors): clustered rotated boxes, class scores, angles."""
    boxes = torch.stack([_clusters(rng, anchors, 3.0) for _ in range(images)])  # (b, a, 5) xywhr
    scores = rng.random((images, anchors, nc)).astype(np.float32) ** 3
    if tied:
        scores = np.round(scores * 8) / 8  # many tied scores: each image's own order must be kept
    cols = [boxes[..., :4], torch.from_numpy(scores), boxes[..., 4:]]
    return torch.cat(cols, -1).transpose(1, 2).contiguous()


@pytest.mark.parametrize("case", range(6))
def test_batched_nms_keeps_what_ultralytics_keeps_image_by_image(case):
    """The whole-batch OBB NMS returns Ultralytics' `non_max_suppression(..., rotated=True)` rows, image by image
    in its order, for several images at once: tied scores, a class filter, class-agnostic, a max_det that cuts,
    images with no candidates."""
    from ultralytics.utils.nms import non_max_suppression

    rng = np.random.default_rng(100 + case)
    nc = 3
    pred = _raw_obb_batch(rng, 5, 900, nc, tied=case % 2 == 1)
    pred[2, 4:4 + nc] = 0.0  # an image with no candidates
    kw = dict(conf_thres=0.25, iou_thres=[0.7, 0.45, 0.7, 0.9, 0.7, 0.3][case], classes=[0, 2] if case == 2 else None,
              agnostic=case == 3, max_det=40 if case == 4 else 300, nc=nc)
    want = non_max_suppression(pred, kw["conf_thres"], kw["iou_thres"], kw["classes"], kw["agnostic"],
                               max_det=kw["max_det"], nc=nc, rotated=True)
    rows, image = batched_rotated_nms(pred, **kw)
    assert sum(len(w) for w in want) > 100 and len(want[2]) == 0
    if case == 4:
        assert all(len(w) == 40 for k, w in enumerate(want) if k != 2)
    for k, w in enumerate(want):
        assert torch.equal(rows[image == k], w), k


def test_batched_nms_defers_where_it_does_not_apply():
    rng = np.random.default_rng(7)
    pred = _raw_obb_batch(rng, 2, 200, 3, tied=False)
    assert batched_rotated_nms(pred, 0.25, 0.1, nc=3) is None  # below MIN_SPARSE_IOU
    assert batched_rotated_nms(pred, 0.01, 0.7, nc=3, max_nms=50) is None  # Ultralytics would cap candidates
    rows, image = batched_rotated_nms(pred[:, :, :0], 0.25, 0.7, nc=3)
    assert rows.shape == (0, 7) and len(image) == 0


def _compare_predict(model_path, patches, imgsz):
    from ultralytics import YOLO

    model = YOLO(str(model_path))
    patched = TorchNMS.__dict__["fast_nms"]
    results = {}
    try:
        for name, impl in (("sparse", patched), ("dense", staticmethod(DENSE))):
            TorchNMS.fast_nms = impl
            results[name] = [r.obb.data.clone() for r in model.predict(patches, imgsz=imgsz, conf=0.05, iou=0.7,
                                                                         max_det=3000, verbose=False)]
    finally:
        TorchNMS.fast_nms = patched
    total = 0
    for a, b in zip(results["sparse"], results["dense"]):
        assert torch.equal(a, b)
        total += len(a)
    return total


def test_real_dense_patches_of_the_project_model(tmp_path):
    """Generated scene, tiler-obb at 320 px and a low conf (many candidates per patch)."""
    from tiler.synth import SceneSpec, write_scene

    import rasterio

    tif, _ = write_scene(SceneSpec(1280, 640, seed=31), tmp_path / "s.tif")
    with rasterio.open(tif) as src:
        img = src.read([3, 2, 1]).transpose(1, 2, 0)
    patches = [np.ascontiguousarray(img[y:y + 320, x:x + 320]) for y in (0, 320) for x in range(0, 1280, 320)]
    assert _compare_predict(REPO / "models" / "tiler-obb.pt", patches, 320) > 50


@needs_shared
def test_real_dense_harbour_patches_of_yolov8n_obb():
    img = cv2.imread(str(DOTA_IMAGE))
    h, w = img.shape[:2]
    patches = [np.ascontiguousarray(img[y:y + 640, x:x + 640]) for y in (0, h - 640) for x in (0, w - 640)]
    assert _compare_predict(DOTA_MODEL, patches, 640) > 500
