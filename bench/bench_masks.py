#!/usr/bin/env python3
"""Per-object masks at full resolution: Ultralytics' native-resolution path against tiler's per-object crops.

    .venv/bin/python bench/bench_masks.py [--reps 5]

Issue 8 asks for each object's mask at the patch's full resolution, either by Ultralytics' native-resolution
path (`ops.process_mask_native`: every object's mask upsampled over the whole patch, then cropped to its box)
or by upsampling the prototypes only inside each object's box (tiler's `model.masks.instance_masks`), and to
keep the faster at equal quality. Both run here on the same prototypes, coefficients and boxes (random, with
box sizes like the project's scenes: mostly 6-40 px, some up to 200 px), for a 320 px patch (80 x 80
prototypes) and a 640 px one (160 x 160), timed as medians of interleaved repeats. Quality: the share of
in-box pixels on which the two bitmaps agree. tiler's time includes its sub-pixel outlines, which the native
path does not make at all (it returns bitmaps only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tiler.model.masks import MARGIN, Letterbox, instance_masks, mask_logits  # noqa: E402


def case(rng, size: int, n: int):
    protos = rng.normal(0, 1, (32, size // 4, size // 4)).astype(np.float32)
    side = np.where(rng.random(n) < 0.9, rng.uniform(6, 40, n), rng.uniform(40, 200, n))
    x0, y0 = rng.uniform(0, size - side), rng.uniform(0, size - side)
    aspect = rng.uniform(0.4, 1.0, n)
    boxes = np.column_stack([x0, y0, x0 + side, y0 + side * aspect])
    coefs = rng.normal(0, 0.6, (n, 32)).astype(np.float32)
    return protos, coefs, boxes


def bitmaps_only(protos, coefs, boxes, lb) -> list[np.ndarray]:
    """tiler's per-object bitmaps without the outlines: logits inside each box (plus the margin), > 0."""
    out = []
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        xs = np.arange(int(np.floor(x0)) - MARGIN, int(np.ceil(x1)) + MARGIN, dtype=np.float64)
        ys = np.arange(int(np.floor(y0)) - MARGIN, int(np.ceil(y1)) + MARGIN, dtype=np.float64)
        out.append(mask_logits(protos, coefs[k], xs, ys, lb) > 0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import torch
    from ultralytics.utils import ops

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    print("| patch | objects | native path ms | tiler bitmaps only ms | tiler bitmaps + outlines ms | "
          "bitmaps only / native | bitmaps agree |")
    print("|---|---|---|---|---|---|---|")
    for size in (320, 640):
        for n in (10, 50, 200):
            protos, coefs, boxes = case(rng, size, n)
            lb = Letterbox.between((size, size), (size, size))
            tp, tc, tb = torch.from_numpy(protos), torch.from_numpy(coefs), torch.from_numpy(boxes).float()
            native_t, bits_t, ours_t = [], [], []
            for _ in range(args.reps):
                t = time.perf_counter()
                ref = ops.process_mask_native(tp, tc, tb, (size, size)).numpy()
                native_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                bitmaps_only(protos, coefs, boxes, lb)
                bits_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                ours = instance_masks(protos, coefs, boxes, (size, size), lb)
                ours_t.append(time.perf_counter() - t)
            agree = total = 0
            for crop, (cx, cy), k in zip(ours.crops, ours.origins, np.flatnonzero(ours.keep)):
                h, w = crop.shape
                agree += int((ref[k, cy:cy + h, cx:cx + w].astype(bool) == crop).sum())
                total += crop.size
            a, c, b = (np.median(t) * 1e3 for t in (native_t, bits_t, ours_t))
            print(f"| {size} | {n} | {a:.1f} | {c:.1f} | {b:.1f} | {c / a:.2f}x | {agree / max(total, 1):.5f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
