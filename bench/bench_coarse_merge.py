#!/usr/bin/env python3
"""The coarse pass's step of the merge (`pipeline._coarse`, merge/coarse.py) on 1 M fine detections.

    .venv/bin/python bench/bench_coarse_merge.py [--fine 1000000] [--coarse 20000] [--repeat 3]

Fine detections: axis-aligned boxes of 8-40 px at random over a 100 000 px square, from a grid of 174 k windows
of 320 px (240 px stride); coarse ones: boxes of 10-60 px (dropped where a fine window holds them whole, nearly
all) and, for 5 % of them, of 400-900 px (kept, each taking in the fine boxes at least half inside it), from
7 000 windows of 1280 px.
Prints the median time of the step, from the detections to the detections the merge goes on with.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiler import pipeline  # noqa: E402
from tiler.config import JobConfig  # noqa: E402
from tiler.detections import Detections  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fine", type=int, default=1_000_000)
    ap.add_argument("--coarse", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    side, n_coarse_windows = 100_000, 7_000
    # the fine windows: 320 px at a 240 px stride over the whole side (whether one holds a coarse detection whole
    # decides whether that detection is kept)
    starts = np.arange(0, side, 240, dtype=np.float64)
    gx, gy = np.meshgrid(starts, starts)
    fine_boxes = np.column_stack([gx.ravel(), gy.ravel(), gx.ravel() + 320, gy.ravel() + 320])
    n_fine_windows = len(fine_boxes)
    xy, size = rng.uniform(0, side, (args.fine, 2)), rng.uniform(8, 40, (args.fine, 2))
    cxy = rng.uniform(0, side, (args.coarse, 2))
    csize = np.where(rng.random((args.coarse, 1)) < 0.05, rng.uniform(400, 900, (args.coarse, 2)),
                     rng.uniform(10, 60, (args.coarse, 2)))
    lo = np.concatenate([xy, cxy])
    hi = lo + np.concatenate([size, csize])
    n = len(lo)
    windows = np.concatenate([rng.integers(0, n_fine_windows, args.fine),
                              n_fine_windows + rng.integers(0, n_coarse_windows, args.coarse)])
    dets = Detections.from_geometries(shapely.box(lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]), rng.integers(0, 3, n),
                                      rng.uniform(0.3, 1, n), windows)
    boxes = np.zeros((n_fine_windows + n_coarse_windows, 4))
    boxes[:n_fine_windows] = fine_boxes
    boxes[n_fine_windows:, 2:] = 1280
    cfg = JobConfig(source="scene.tif", model="model.pt", patch_size=320, coarse_factor=4)
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        out, _ = pipeline._coarse(cfg, dets, "segment", boxes, n_fine_windows)
        times.append(time.perf_counter() - t)
    print(f"{n} detections ({args.fine} fine, {args.coarse} coarse) -> {len(out)}: "
          f"median {statistics.median(times):.2f} s of {args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
