"""The YOLOv8 segment mask loss at full label resolution, at the cost of the objects rather than the image.

Ultralytics (v8SegmentationLoss.loss, mask_ratio < 4) upsamples every image's prototypes to the label masks'
size and then builds every positive anchor's mask over the whole image, zeroed outside the anchor's box: at
mask_ratio 1 (320 x 320 labels) its loss costs about 6x what it does at mask_ratio 2. Here each anchor's mask
logits are made only in a window of prototype cells around its box (coefficients times prototypes) and
upsampled there by the same bilinear rule (F.interpolate, align_corners=False; edge cells replicated as its
clamp does); upsampling is linear, so that is the same mask. The loss is summed only inside the box: the same
loss and gradients (tests/test_mask_loss.py checks both against Ultralytics').

Training only (scripts/train_models.py); tiler itself never imports this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def install() -> None:
    """Make v8SegmentationLoss use `loss` below. Fails loudly if the Ultralytics method it replaces changed."""
    import inspect

    from ultralytics.utils.loss import v8SegmentationLoss

    if v8SegmentationLoss.loss is loss:
        return
    source = inspect.getsource(v8SegmentationLoss.loss)
    for needed in ('preds["mask_coefficient"]', 'preds["proto"]', "get_assigned_targets_and_loss",
                   "calculate_segmentation_loss", "self.hyp.box", "F.interpolate(proto"):
        if needed not in source:
            raise RuntimeError(f"Ultralytics' v8SegmentationLoss.loss changed (no {needed!r}): review mask_loss.py")
    v8SegmentationLoss.loss = loss


def loss(self, preds: dict, batch: dict) -> tuple[torch.Tensor, dict]:
    """v8SegmentationLoss.loss for YOLOv8 segment heads (no semantic branch), prototypes left at their size."""
    pred_masks, proto = preds["mask_coefficient"].permute(0, 2, 1).contiguous(), preds["proto"]
    if isinstance(proto, tuple):
        raise RuntimeError("mask_loss: semantic prototype branches (YOLO26) are not supported")
    out = torch.zeros(5, device=self.device)  # box, seg, cls, dfl, semantic
    (fg_mask, target_gt_idx, target_bboxes, _, _), det_loss, _ = self.get_assigned_targets_and_loss(preds, batch)
    out[0], out[2], out[3] = det_loss[0], det_loss[1], det_loss[2]
    if fg_mask.sum():
        masks = batch["masks"].to(self.device).float()
        imgsz = torch.tensor(preds["feats"][0].shape[2:], device=self.device, dtype=pred_masks.dtype) * self.stride[0]
        out[1] = segmentation_loss(fg_mask, masks, target_gt_idx, target_bboxes, batch["batch_idx"].view(-1),
                                   proto, pred_masks, imgsz, self.overlap)
    else:  # as Ultralytics: keeps every parameter in the graph
        out[1] += (proto * 0).sum() + (pred_masks * 0).sum()
    out[1] *= self.hyp.box  # seg gain
    return out * proto.shape[0], dict(zip(self.loss_names, out.detach()))


def segmentation_loss(fg_mask: torch.Tensor, masks: torch.Tensor, target_gt_idx: torch.Tensor,
                      target_bboxes: torch.Tensor, batch_idx: torch.Tensor, proto: torch.Tensor,
                      pred_masks: torch.Tensor, imgsz: torch.Tensor, overlap: bool) -> torch.Tensor:
    """v8SegmentationLoss.calculate_segmentation_loss of the prototypes upsampled to the label size, computed
    from `proto` (bs, 32, h, w) at its own size; `masks` are at label size (H, W), an integer multiple."""
    _, _, h, w = proto.shape
    H, W = masks.shape[-2:]
    scale = H // h
    if scale * h != H or scale * w != W:
        raise ValueError(f"label masks {H}x{W} are not an integer multiple of the prototypes {h}x{w}")
    # replicate padding reproduces F.interpolate's clamp at the image edges; the far side is padded so that
    # every window fits (cells beyond the image lie outside every box and are masked out)
    padded = F.pad(proto, (1, w + 3, 1, h + 3), mode="replicate")
    normalized = target_bboxes / imgsz[[1, 0, 1, 0]]
    area = (normalized[..., 2] - normalized[..., 0]) * (normalized[..., 3] - normalized[..., 1])
    boxes = normalized * torch.tensor([W, H, W, H], device=proto.device, dtype=normalized.dtype)
    total = proto.new_zeros(())
    for i in range(len(fg_mask)):
        fg = fg_mask[i]
        if fg.any():
            image_masks = masks[i] if overlap else masks[batch_idx == i]
            total = total + _image_loss(image_masks, target_gt_idx[i][fg], pred_masks[i][fg], padded[i], scale,
                                        (H, W), boxes[i][fg], area[i][fg], overlap)
        else:
            total = total + (proto * 0).sum() + (pred_masks * 0).sum()
    return total / fg_mask.sum()


def _image_loss(masks: torch.Tensor, gt_ids: torch.Tensor, coefs: torch.Tensor, padded: torch.Tensor, scale: int,
                label_hw: tuple[int, int], boxes: torch.Tensor, area: torch.Tensor, overlap: bool) -> torch.Tensor:
    """One image: the sum over its positive anchors of the BCE inside the anchor's box / (H * W) / box area.

    Bilinear upsampling is linear, so each anchor's mask is its coefficients times the prototypes at their own
    size, upsampled: only in a window of prototype cells around its object's box. Objects are batched by box
    size (powers of two); the labels and the box test are gathered for the window, never the prediction."""
    H, W = label_hw
    objs, inv = gt_ids.unique(return_inverse=True)
    dev = gt_ids.device
    first = torch.full((len(objs),), len(gt_ids), dtype=torch.long, device=dev)
    first.scatter_reduce_(0, inv, torch.arange(len(gt_ids), device=dev), "amin")
    box = boxes[first]
    # Ultralytics' crop_mask keeps columns c with x1 <= c < x2 (rows likewise): c from ceil(x1) to ceil(x2) - 1
    lo = box[:, :2].ceil().clamp(min=0)
    hi = torch.minimum(box[:, 2:].ceil(), torch.tensor([W, H], dtype=box.dtype, device=dev))
    x0, y0 = lo.long().unbind(1)
    x1, y1 = hi.long().unbind(1)
    side = (2 ** torch.ceil(torch.log2((hi - lo).clamp(min=1).max(1).values))).long().clamp(min=8)
    # each anchor's slot among its object's anchors, for one batched matrix product per box size
    order = torch.argsort(inv, stable=True)
    counts = torch.bincount(inv, minlength=len(objs))
    slot = torch.empty_like(inv)
    slot[order] = torch.arange(len(inv), device=dev) - (counts.cumsum(0) - counts)[inv[order]]
    total = padded.new_zeros(())
    for s in side.unique().tolist():
        g = (side == s).nonzero().squeeze(1)  # objects of this box size
        pos = torch.full((len(objs),), -1, dtype=torch.long, device=dev)
        pos[g] = torch.arange(len(g), device=dev)
        a = (pos[inv] >= 0).nonzero().squeeze(1)  # their anchors
        ga, sa = pos[inv[a]], slot[a]
        # a window of padded cells [c0, c0 + k) (padded cell j is prototype cell j - 1) upsampled by `scale`:
        # its row q is label row scale * (c0 - 1) + q, and agrees with the whole-image upsampling on the box
        ky, kx = -(-min(s, H) // scale) + 3, -(-min(s, W) // scale) + 3
        cy0, cx0 = y0[g] // scale, x0[g] // scale
        ar_ky, ar_kx = torch.arange(ky, device=dev), torch.arange(kx, device=dev)
        window = padded[:, (cy0[:, None] + ar_ky)[:, :, None], (cx0[:, None] + ar_kx)[:, None, :]]  # (32, G, ky, kx)
        window = window.transpose(0, 1).reshape(len(g), padded.shape[0], ky * kx)
        coef = coefs.new_zeros(len(g), int(counts[g].max()), coefs.shape[1])
        coef[ga, sa] = coefs[a]
        low = torch.bmm(coef, window)[ga, sa].view(len(a), 1, ky, kx)
        logits = F.interpolate(low, size=(ky * scale, kx * scale), mode="bilinear", align_corners=False).flatten(1)
        rows = scale * (cy0 - 1)[:, None] + torch.arange(ky * scale, device=dev)  # label rows of the window
        cols = scale * (cx0 - 1)[:, None] + torch.arange(kx * scale, device=dev)
        inside = (((rows >= y0[g, None]) & (rows < y1[g, None]))[:, :, None]
                  & ((cols >= x0[g, None]) & (cols < x1[g, None]))[:, None, :])
        r, c = rows.clamp(0, H - 1)[:, :, None], cols.clamp(0, W - 1)[:, None, :]
        if overlap:  # one index image: object k is value k + 1
            gt = masks[r, c] == (objs[g] + 1)[:, None, None]
        else:
            gt = masks[objs[g][:, None, None], r, c]
        gt = gt.flatten(1)[ga].to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none") * inside.flatten(1)[ga]
        total = total + (bce.sum(1) / (H * W) / area[a]).sum()
    return total
