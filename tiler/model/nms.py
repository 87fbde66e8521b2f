"""Ultralytics' per-patch rotated-box NMS, computed only where boxes can overlap.

Ultralytics suppresses rotated boxes with Fast-NMS (`TorchNMS.fast_nms` with `batch_probiou`): sort by
score, compute the probabilistic IoU of *every* pair (an n x n matrix), and drop each box that some
higher-scored box overlaps above the threshold. On dense patches (a harbour: thousands of candidates) that
matrix is most of the predict time. `sparse_rotated_fast_nms` keeps exactly the same boxes, in the same
order, computing probiou only for the pairs that could exceed the threshold (`candidate_pairs`).

Why nothing is lost. probiou = 1 - sqrt(1 - exp(-bd) + eps) exceeds t only where bd < -ln(1 - (1 - t)^2) =: B
(eps only lowers it). bd = (1/8) dmu' S^-1 dmu + (a term >= 0: det S >= sqrt(det S1 det S2)), S the mean of the
two boxes' covariances, and dmu' S^-1 dmu >= dx^2 / S_xx (Cauchy-Schwarz), S_xx = (a1 + a2) / 2 with a a box's
x variance. So a pair above t has dx^2 < 4 B (a1 + a2), hence |dx| < r1 + r2 with r = sqrt(4 B a); likewise
along y with the y variances. The candidates are the pairs whose boxes, grown (or shrunk) to those radii around
their centres, meet: at t = 0.7 the radius of an upright box is 0.18 of its width, against 0.5 for its own extent,
and on dense real patches there are 1.8 candidates per pair above t, against 6.4 from the boxes' extents.

The bound is of the exact values; `batch_probiou` computes in float32, with an eps that dominates for boxes
near a point, and rounding that grows with a box's aspect ratio (its covariance nearly singular). So B is
widened (5 % and 1e-3, far above float32 rounding at the aspects allowed), and the bound is used only between
regular boxes: sides of at least `_MIN_SIDE` px and aspect at most `_MAX_ASPECT` (every candidate on the real
patches tested has sides of 5.5 px or more and aspect under 9). A box that is not regular is paired with every
box of its image, as Ultralytics does. The pairs' probiou values are the same float32 operations as
`batch_probiou`'s, element by element, so the decisions are identical, not merely close (tested against
Ultralytics on random and real patches, thin and tiny boxes included).
"""

from __future__ import annotations

import numpy as np
import torch

from ..merge.overlaps import box_pairs

MIN_SPARSE_IOU = 0.3
"""Below this threshold the candidates' radii approach the boxes' whole extents: Ultralytics' dense NMS is used."""

_MIN_SIDE = 1.0  # px: a box's covariance determinant is then far above batch_probiou's eps
_MAX_ASPECT = 30.0  # float32 rounding of the pair's covariance stays near 1e-4 relative
_MAX_DENSE_PAIRS = 1 << 23  # pairs of irregular boxes beyond this: Ultralytics' own dense NMS instead


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


def candidate_pairs(boxes: np.ndarray, iou_threshold: float, starts: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Pairs (i < j) of xywhr boxes (n, 5) of one image that can overlap above `iou_threshold` (see the module
    docstring): regular boxes grown to their radii whose extents meet, and every pair with a box that is not
    regular. With `starts` (k + 1 offsets), boxes[starts[m]:starts[m + 1]] are image m's and pairs are within an
    image. None where the pairs of irregular boxes would exceed `_MAX_DENSE_PAIRS` (the caller goes dense)."""
    if iou_threshold >= 1:  # probiou never exceeds 1: nothing is suppressed
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy()
    starts = np.array([0, len(boxes)], dtype=np.int64) if starts is None else np.asarray(starts, dtype=np.int64)
    x, y, w, h, r = (boxes[:, k].astype(np.float64) for k in range(5))
    cos2, sin2 = np.cos(r) ** 2, np.sin(r) ** 2
    w2, h2 = w * w, h * h
    var_x, var_y = (w2 * cos2 + h2 * sin2) / 12, (w2 * sin2 + h2 * cos2) / 12
    bd_max = -np.log1p(-(1 - iou_threshold) ** 2) * 1.05 + 1e-3
    grow = np.sqrt(4 * bd_max) * 1.001
    rx, ry = grow * np.sqrt(var_x) + 1e-4, grow * np.sqrt(var_y) + 1e-4
    side, long_side = np.minimum(w, h), np.maximum(w, h)
    with np.errstate(invalid="ignore", divide="ignore"):
        regular = (side >= _MIN_SIDE) & (long_side <= _MAX_ASPECT * side) & np.isfinite(rx) & np.isfinite(ry)
    image = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    # images far apart along y, so no pair crosses them; an irregular box is out of the sweep (NaN)
    span = float(y[regular].max() - y[regular].min() + 2 * ry[regular].max()) if regular.any() else 0.0
    y = y + image * (2 * span + 1)
    nan = np.where(regular, 0.0, np.nan)
    i, j = box_pairs(np.stack((x - rx + nan, y - ry, x + rx, y + ry), axis=1))
    odd = np.flatnonzero(~regular)
    if len(odd) == 0:
        return i, j
    # each irregular box with every other box of its image; a pair of two irregular ones listed once
    size = np.diff(starts)[image[odd]]
    if int(size.sum()) > _MAX_DENSE_PAIRS:
        return None
    k = np.repeat(odd, size)
    m = np.arange(len(k)) - np.repeat(np.cumsum(size) - size, size) + np.repeat(starts[image[odd]], size)
    keep = (m != k) & (regular[m] | (m > k))
    k, m = k[keep], m[keep]
    lo = np.minimum(k, m)
    return np.concatenate([i, lo]), np.concatenate([j, k + m - lo])


def _suppressed(boxes: torch.Tensor, i: np.ndarray, j: np.ndarray, iou_threshold: float) -> torch.Tensor:
    """Fast-NMS over boxes sorted by descending score: box j is dropped when some pair (i, j), i < j (so i is the
    higher-scored), overlaps above the threshold, whether or not i itself is dropped."""
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if len(i):
        ti, tj = torch.from_numpy(i).to(boxes.device), torch.from_numpy(j).to(boxes.device)
        suppressed[tj[pair_probiou(boxes, ti, tj) > iou_threshold]] = True
    return suppressed


def sparse_rotated_fast_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float
                            ) -> torch.Tensor | None:
    """`TorchNMS.fast_nms(boxes, scores, iou_threshold, iou_func=batch_probiou)`'s result (indices of kept
    boxes, by descending score), for ``iou_threshold >= MIN_SPARSE_IOU``; None where `candidate_pairs` gives up
    (many irregular boxes: use the dense one)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    sorted_idx = torch.argsort(scores, descending=True)
    b = boxes[sorted_idx]
    pairs = candidate_pairs(b.detach().float().cpu().numpy(), iou_threshold)
    if pairs is None:
        return None
    pick = torch.nonzero(~_suppressed(b, *pairs, iou_threshold)).squeeze_(-1)
    return sorted_idx[pick]


def batched_rotated_nms(prediction: torch.Tensor, conf_thres: float, iou_thres: float, classes=None,
                        agnostic: bool = False, max_det: int = 300, nc: int = 0, max_nms: int = 30000,
                        max_wh: int = 7680) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Ultralytics' `non_max_suppression(..., rotated=True)` for a whole batch at once: the rows it keeps
    (x, y, w, h, conf, class, angle), image by image in its order, and each row's image index.

    Candidate selection, the class offset and the per-image score order are Ultralytics' own operations on the
    same values (each image is sorted by its own `argsort`, which is not stable: a batched sort would order tied
    scores differently); overlaps are computed only for pairs of one image that can overlap above the threshold, all
    images' pairs found at once, so there is no per-image NMS call, device sync or Python loop over boxes.
    None where Ultralytics would cap an image at `max_nms` candidates, below `MIN_SPARSE_IOU`, or where
    `candidate_pairs` gives up (callers then use Ultralytics' own)."""
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
    pairs = candidate_pairs(boxes.detach().float().cpu().numpy(), iou_thres, starts)  # within each image
    if pairs is None:
        return None
    kept = (~_suppressed(boxes, *pairs, iou_thres)).long()
    img_np = np.repeat(np.arange(bs), counts)
    # rank of each kept box within its image; Ultralytics keeps the first max_det
    seen = torch.cumsum(kept, 0)
    first = torch.from_numpy(starts[:-1][img_np]).to(x.device)
    before = torch.where(first > 0, seen[(first - 1).clamp(min=0)], torch.zeros_like(seen))
    keep = (kept > 0) & (seen - before <= max_det)
    return x[keep], img[keep]
