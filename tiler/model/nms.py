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
import shapely
import torch

from ..merge.overlaps import candidate_pairs

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
    """probiou of the pairs (boxes[i], boxes[j]), xywhr boxes: `batch_probiou`'s formula term for term."""
    a, b, c = _covariance(boxes)
    x1, y1, x2, y2 = boxes[i, 0], boxes[i, 1], boxes[j, 0], boxes[j, 1]
    a1, b1, c1, a2, b2, c2 = a[i], b[i], c[i], a[j], b[j], c[j]
    t1 = (((a1 + a2) * (y1 - y2).pow(2) + (b1 + b2) * (x1 - x2).pow(2))
          / ((a1 + a2) * (b1 + b2) - (c1 + c2).pow(2) + eps)) * 0.25
    t2 = (((c1 + c2) * (x2 - x1) * (y1 - y2)) / ((a1 + a2) * (b1 + b2) - (c1 + c2).pow(2) + eps)) * 0.5
    t3 = (((a1 + a2) * (b1 + b2) - (c1 + c2).pow(2))
          / (4 * ((a1 * b1 - c1.pow(2)).clamp_(0) * (a2 * b2 - c2.pow(2)).clamp_(0)).sqrt() + eps) + eps).log() * 0.5
    bd = (t1 + t2 + t3).clamp(eps, 100.0)
    hd = (1.0 - (-bd).exp() + eps).sqrt()
    return 1 - hd


def extent_pairs(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of xywhr boxes whose axis-aligned extents intersect (touching counts), from an STRtree."""
    x, y, w, h, r = (boxes[:, k].astype(np.float64) for k in range(5))
    cos, sin = np.abs(np.cos(r)), np.abs(np.sin(r))
    ex = (w * cos + h * sin) / 2 * (1 + 1e-6) + 1e-6  # widened a hair against rounding
    ey = (w * sin + h * cos) / 2 * (1 + 1e-6) + 1e-6
    return candidate_pairs(shapely.box(x - ex, y - ey, x + ex, y + ey), predicate=None)  # rectangles: bounds suffice


def sparse_rotated_fast_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """`TorchNMS.fast_nms(boxes, scores, iou_threshold, iou_func=batch_probiou)`'s result (indices of kept
    boxes, by descending score), for ``iou_threshold >= MIN_SPARSE_IOU``."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    sorted_idx = torch.argsort(scores, descending=True)
    b = boxes[sorted_idx]
    i, j = extent_pairs(b.detach().float().cpu().numpy())
    suppressed = torch.zeros(len(b), dtype=torch.bool, device=boxes.device)
    if len(i):
        ti = torch.from_numpy(i).to(boxes.device)
        tj = torch.from_numpy(j).to(boxes.device)
        over = pair_probiou(b, ti, tj) > iou_threshold  # the higher-scored of each pair is ti (i < j)
        suppressed[tj[over]] = True
    pick = torch.nonzero(~suppressed).squeeze_(-1)
    return sorted_idx[pick]
