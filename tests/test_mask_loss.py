"""scripts/mask_loss.py (the segment training loss at full label resolution) against Ultralytics' own loss."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
from ultralytics.utils.loss import v8SegmentationLoss  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "mask_loss", Path(__file__).resolve().parent.parent / "scripts" / "mask_loss.py")
mask_loss = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mask_loss)


def _case(seed: int, scale: int, overlap: bool, h: int = 24, n_obj: int = 12, anchors: int = 300, bs: int = 3):
    """Random prototypes, coefficients, positive anchors, boxes (some at the image edges, some tiny, some
    nearly the whole image) and label masks at `scale` times the prototypes' size."""
    g = torch.Generator().manual_seed(seed)
    H = h * scale
    img = float(4 * h)  # model input: prototypes are 1/4 of it, as in YOLOv8
    proto = torch.randn(bs, 32, h, h, dtype=torch.float64, generator=g, requires_grad=True)
    pred = torch.randn(bs, anchors, 32, dtype=torch.float64, generator=g, requires_grad=True)
    fg = torch.rand(bs, anchors, generator=g) < 0.2
    fg[1] = False  # an image without positive anchors
    gt_idx = torch.randint(0, n_obj, (bs, anchors), generator=g)
    cx, cy = (torch.rand(2, bs, n_obj, generator=g, dtype=torch.float64) * (img - 4) + 2)
    w = torch.rand(bs, n_obj, generator=g, dtype=torch.float64) ** 3 * img + 1
    ht = torch.rand(bs, n_obj, generator=g, dtype=torch.float64) ** 3 * img + 0.6
    boxes = torch.stack([cx - w / 2, cy - ht / 2, cx + w / 2, cy + ht / 2], -1).clamp(0, img)
    boxes[0, 0] = torch.tensor([0.0, 0.0, img, img])  # the whole image
    boxes[0, 1] = torch.tensor([img - 3.3, img - 5.1, img, img])  # the bottom-right corner
    target = torch.gather(boxes, 1, gt_idx[..., None].expand(-1, -1, 4))
    if overlap:
        masks = torch.randint(0, n_obj + 1, (bs, H, H), generator=g).double()
        batch_idx = torch.zeros(bs * n_obj)
    else:
        masks = (torch.rand(bs * n_obj, H, H, generator=g) < 0.5).double()
        batch_idx = torch.arange(bs).repeat_interleave(n_obj).double()
    return proto, pred, fg, gt_idx, target, masks, batch_idx, torch.tensor([img, img], dtype=torch.float64)


@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("overlap", [True, False])
def test_same_loss_and_gradients_as_ultralytics(scale, overlap):
    for seed in range(2):
        proto, pred, fg, gt_idx, target, masks, batch_idx, imgsz = _case(seed, scale, overlap)
        ultra = SimpleNamespace(overlap=overlap, single_mask_loss=v8SegmentationLoss.single_mask_loss)
        upsampled = F.interpolate(proto, masks.shape[-2:], mode="bilinear", align_corners=False)
        want = v8SegmentationLoss.calculate_segmentation_loss(ultra, fg, masks, gt_idx, target,
                                                              batch_idx.view(-1, 1), upsampled, pred, imgsz)
        want_grads = torch.autograd.grad(want, [proto, pred])
        got = mask_loss.segmentation_loss(fg, masks, gt_idx, target, batch_idx, proto, pred, imgsz, overlap)
        got_grads = torch.autograd.grad(got, [proto, pred])
        # Ultralytics compares an overlap mask in float32; otherwise the two agree to float64 rounding
        tol = 1e-6 if overlap else 1e-12
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=tol)
        for a, b in zip(got_grads, want_grads):
            assert float((a - b).abs().max()) <= tol * float(b.abs().max())


def test_a_window_one_cell_off_is_caught():
    """The check above can fail: prototypes shifted by one cell give a different loss."""
    proto, pred, fg, gt_idx, target, masks, batch_idx, imgsz = _case(0, 4, True)
    ultra = SimpleNamespace(overlap=True, single_mask_loss=v8SegmentationLoss.single_mask_loss)
    upsampled = F.interpolate(proto.roll(1, dims=3), masks.shape[-2:], mode="bilinear", align_corners=False)
    shifted = v8SegmentationLoss.calculate_segmentation_loss(ultra, fg, masks, gt_idx, target, batch_idx.view(-1, 1),
                                                             upsampled, pred, imgsz)
    got = mask_loss.segmentation_loss(fg, masks, gt_idx, target, batch_idx, proto, pred, imgsz, True)
    assert abs(float(got.detach()) - float(shifted.detach())) > 1e-3 * abs(float(shifted.detach()))


def test_labels_not_a_multiple_of_the_prototypes_are_refused():
    proto, pred, fg, gt_idx, target, masks, batch_idx, imgsz = _case(0, 2, True)
    with pytest.raises(ValueError, match="integer multiple"):
        mask_loss.segmentation_loss(fg, masks[:, :-1, :-1], gt_idx, target, batch_idx, proto, pred, imgsz, True)


def test_whole_training_loss_matches_on_a_real_segment_network():
    """Through v8SegmentationLoss itself: a YOLOv8 segment network's training outputs on labelled images,
    the stock loss against the installed one, mask_ratio 1 (labels at the input size)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(0)
    model = SegmentationModel("yolov8n-seg.yaml", nc=3, verbose=False)
    model.args = get_cfg()
    model.train()
    imgs = torch.rand(2, 3, 128, 128)
    # two objects per image, as Ultralytics' collated batch (xywh normalised) with an overlap index mask
    boxes = torch.tensor([[0.30, 0.30, 0.20, 0.10], [0.70, 0.60, 0.40, 0.50],
                          [0.50, 0.50, 0.90, 0.90], [0.12, 0.85, 0.08, 0.12]])
    masks = torch.zeros(2, 128, 128)
    for k, (x, y, w, h) in enumerate(boxes.tolist()):
        x0, y0, x1, y1 = (int(round(v * 128)) for v in (x - w / 2, y - h / 2, x + w / 2, y + h / 2))
        masks[k // 2, y0 + 1:y1 - 1, x0 + 2:x1 - 1] = k % 2 + 1
    batch = {"batch_idx": torch.tensor([0.0, 0.0, 1.0, 1.0]), "cls": torch.tensor([[0.0], [1.0], [1.0], [2.0]]),
             "bboxes": boxes, "masks": masks}
    preds = model(imgs)
    criterion = v8SegmentationLoss(model)
    want, _ = v8SegmentationLoss.loss(criterion, preds, batch)
    want_grad = torch.autograd.grad(want.sum(), [preds["proto"], preds["mask_coefficient"]], retain_graph=True)
    got, _ = mask_loss.loss(criterion, preds, batch)
    got_grad = torch.autograd.grad(got.sum(), [preds["proto"], preds["mask_coefficient"]])
    assert float(want[1].detach()) > 0
    assert torch.allclose(got, want, rtol=1e-5)
    for a, b in zip(got_grad, want_grad):
        assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())


def test_install_replaces_the_loss():
    before = v8SegmentationLoss.loss
    try:
        mask_loss.install()
        assert v8SegmentationLoss.loss is mask_loss.loss
        mask_loss.install()  # a second call (a second training in one process) is harmless
        assert v8SegmentationLoss.loss is mask_loss.loss
    finally:
        v8SegmentationLoss.loss = before
