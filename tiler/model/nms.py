"""Ultralytics' per-patch rotated-box NMS, computed only where boxes can overlap.

Ultralytics suppresses rotated boxes with Fast-NMS (`TorchNMS.fast_nms` with `batch_probiou`): sort by
score, compute the probabilistic IoU of *every* pair (an n x n matrix), and drop each box that some
higher-scored box overlaps above the threshold. On dense patches (a harbour: thousands of candidates) that
matrix is most of the predict time. `sparse_rotated_fast_nms` keeps exactly the same boxes, in the same
order, computing probiou only for the pairs whose axis-aligned extents intersect.

Why nothing is lost. probiou = 1 - sqrt(1 - exp(-bd) + eps), with bd >= (1/8) dmu' S^-1 dmu (the other term
of the Bhattacharyya distance is >= 0), S the mean of the two boxes' covariances. For boxes apart along x
(dx >= ex1 + ex2, ex the half-extent) the x variance of each box is at most ex^2 / 3, so bd >= 0.75 and
probiou <= 1 - sqrt(1 - e^-0.75) < 0.28; likewise along y. So for thresholds of at least `MIN_SPARSE_IOU`
(Ultralytics' default is 0.7) a pair with disjoint extents never suppresses, and below it the dense matrix
is used. The pairs' probiou values are the same float32 operations as `batch_probiou`'s, element by element,
so the decisions are identical, not merely close (tested against Ultralytics on random and real patches).
"""

from __future__ import annotations

import numpy as np
import torch

from ..merge.overlaps import box_pairs

MIN_SPARSE_IOU = 0.3
"""Below this threshold two boxes with disjoint extents could in principle exceed it (the bound is 0.28)."""


def _covariance(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ultralytics' `_get_covariance_matrix` (floor 0), per box: (a, b, c) of [[a, c], [c, b]], each (n,)."""
    a = boxes[:, 2].pow(2) / 12
    b = boxes[:, 3].pow(2) / 12
    c = boxes[:, 4]
    cos, sin = c.cos(), c.sin()
    cos2, sin2 = cos.pow(2), sin.pow(2)
    return a * cos2 + b * sin2, a * sin2 + b * cos2, (a - b) * cos * sin


def pair_probiou(boxes: torch.Tensor, i: torch.Tensor, j: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """probiou of the pairs (boxes[i], boxes[j]), xywhr boxes: `batch_probiou`'s formula with the same float32
    operation for every term, each shared term computed once (and the per-box ones per box, then gathered), so
    every value is the one `batch_probiou` gives, with about half the element-wise passes over the pairs."""
    a, b, c = _covariance(boxes)
    det = (a * b - c.pow(2)).clamp_(0)  # a1 * b1 - c1^2, per box
    per_box = torch.stack((boxes[:, 0], boxes[:, 1], a, b, c, det))  # (6, n): two gathers, not twelve
    x1, y1, a1, b1, c1, det1 = per_box.index_select(1, i)
    x2, y2, a2, b2, c2, det2 = per_box.index_select(1, j)
    sa, sb, sc = a1 + a2, b1 + b2, c1 + c2
    dx, dy = x1 - x2, y1 - y2
    den = sa * sb - sc.pow(2)
    den_eps = den + eps
    t1 = ((sa * dy.pow(2) + sb * dx.pow(2)) / den_eps) * 0.25
    t2 = ((sc * dx.neg() * dy) / den_eps) * 0.5  # x2 - x1 is -(x1 - x2) exactly
    t3 = (den / (4 * (det1 * det2).sqrt() + eps) + eps).log() * 0.5
    bd = (t1 + t2 + t3).clamp(eps, 100.0)
    hd = (1.0 - (-bd).exp() + eps).sqrt()
    return 1 - hd


def extent_pairs(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of xywhr boxes whose axis-aligned extents intersect (touching counts)."""
    x, y, w, h, r = (boxes[:, k].astype(np.float64) for k in range(5))
    cos, sin = np.abs(np.cos(r)), np.abs(np.sin(r))
    ex = (w * cos + h * sin) / 2 * (1 + 1e-6) + 1e-6  # widened a hair against rounding
    ey = (w * sin + h * cos) / 2 * (1 + 1e-6) + 1e-6
    return box_pairs(np.stack((x - ex, y - ey, x + ex, y + ey), axis=1))


def _suppressed(boxes: torch.Tensor, i: np.ndarray, j: np.ndarray, iou_threshold: float) -> torch.Tensor:
    """Fast-NMS over boxes sorted by descending score: box j is dropped when some pair (i, j), i < j (so i is the
    higher-scored), overlaps above the threshold, whether or not i itself is dropped."""
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if len(i):
        ti, tj = torch.from_numpy(i).to(boxes.device), torch.from_numpy(j).to(boxes.device)
        suppressed[tj[pair_probiou(boxes, ti, tj) > iou_threshold]] = True
    return suppressed


def sparse_rotated_fast_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """`TorchNMS.fast_nms(boxes, scores, iou_threshold, iou_func=batch_probiou)`'s result (indices of kept
    boxes, by descending score), for ``iou_threshold >= MIN_SPARSE_IOU``."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    sorted_idx = torch.argsort(scores, descending=True)
    b = boxes[sorted_idx]
    suppressed = _suppressed(b, *extent_pairs(b.detach().float().cpu().numpy()), iou_threshold)
    pick = torch.nonzero(~suppressed).squeeze_(-1)
    return sorted_idx[pick]


def batched_rotated_nms(prediction: torch.Tensor, conf_thres: float, iou_thres: float, classes=None,
                        agnostic: bool = False, max_det: int = 300, nc: int = 0, max_nms: int = 30000,
                        max_wh: int = 7680) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Ultralytics' `non_max_suppression(..., rotated=True)` for a whole batch at once: the rows it keeps
    (x, y, w, h, conf, class, angle), image by image in its order, and each row's image index.

    Candidate selection, the class offset and the per-image score order are Ultralytics' own operations on the
    same values (each image is sorted by its own `argsort`, which is not stable: a batched sort would order tied
    scores differently); overlaps are computed only for pairs of the same image whose extents intersect, all
    images' pairs found at once, so there is no per-image NMS call, device sync or Python loop over boxes.
    None where Ultralytics would cap an image at `max_nms` candidates, or below `MIN_SPARSE_IOU` (callers then
    use Ultralytics' own)."""
    if iou_thres < MIN_SPARSE_IOU:
        return None
    bs = prediction.shape[0]
    nc = nc or (prediction.shape[1] - 4)
    extra = prediction.shape[1] - nc - 4
    xc = prediction[:, 4:4 + nc].amax(1) > conf_thres
    img, anchor = xc.nonzero(as_tuple=True)  # by image, then anchor: each image's candidates in Ultralytics' order
    x = prediction.transpose(-1, -2)[img, anchor]
    box, cls, rest = x.split((4, nc, extra), 1)
    conf, j = cls.max(1, keepdim=True)
    x = torch.cat((box, conf, j.float(), rest), 1)
    filt = conf.view(-1) > conf_thres
    if classes is not None:
        filt &= (x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)
    x, img = x[filt], img[filt]
    counts = torch.bincount(img, minlength=bs).tolist()  # the batch's one device sync before the pairs
    if max(counts, default=0) > max_nms:
        return None
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # each image's own descending score order (Ultralytics' fast_nms argsort), as positions in the batch
    order = torch.cat([torch.argsort(x[s:e, 4], descending=True) + s for s, e in zip(starts[:-1], starts[1:])
                       if e > s] or [torch.zeros(0, dtype=torch.int64, device=x.device)])
    x, img = x[order], img[order]
    c = x[:, 5:6] * (0 if agnostic else max_wh)
    boxes = torch.cat((x[:, :2] + c, x[:, 2:4], x[:, -1:]), dim=-1)
    # pairs within an image only: images are stacked far apart along y for the extent search
    ext = boxes.detach().float().cpu().numpy().astype(np.float64)
    img_np = np.repeat(np.arange(bs), counts)
    ext[:, 1] += img_np * (4.0 * (np.abs(ext[:, 1:4]).max(initial=0.0) + 1.0))
    kept = (~_suppressed(boxes, *extent_pairs(ext), iou_thres)).long()
    # rank of each kept box within its image; Ultralytics keeps the first max_det
    seen = torch.cumsum(kept, 0)
    first = torch.from_numpy(starts[:-1][img_np]).to(x.device)
    before = torch.where(first > 0, seen[(first - 1).clamp(min=0)], torch.zeros_like(seen))
    keep = (kept > 0) & (seen - before <= max_det)
    return x[keep], img[keep]
