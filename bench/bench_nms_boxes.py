"""Global merge (suppression) of 1 M rotated boxes and of 1 M axis-aligned boxes.

    .venv/bin/python bench/bench_nms_boxes.py [--objects 500000] [--reps 3]

A job's detections after a tiling run, reduced to what the merge sees: `--objects` objects on a 40 px grid
(boxes 8-30 x 4-14 px, random angle for the rotated case, 3 classes), each seen by two windows, so 2 x
`--objects` detections jittered by 0.4 px with random scores. `tiler.merge.nms` (per class, ios 0.5, the job's
default) runs on shapely polygons built beforehand; the time is the merge call only, median of `--reps`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import shapely

from tiler.merge import nms


def detections(n_obj: int, rotated: bool, rng: np.random.Generator):
    side = int(np.ceil(np.sqrt(n_obj)))
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    centres = np.stack([gx.ravel(), gy.ravel()], 1)[:n_obj] * 40.0 + 20
    views = np.repeat(np.arange(n_obj), 2)
    ctr = centres[views] + rng.normal(0, 0.4, (len(views), 2))
    w, h = rng.uniform(8, 30, n_obj)[views], rng.uniform(4, 14, n_obj)[views]
    if rotated:
        a = rng.uniform(0, np.pi, n_obj)[views]
        dx = np.stack([w / 2 * np.cos(a), w / 2 * np.sin(a)], 1)
        dy = np.stack([-h / 2 * np.sin(a), h / 2 * np.cos(a)], 1)
        geoms = shapely.polygons(np.stack([ctr - dx - dy, ctr + dx - dy, ctr + dx + dy, ctr - dx + dy], 1))
    else:
        geoms = shapely.box(ctr[:, 0] - w / 2, ctr[:, 1] - h / 2, ctr[:, 0] + w / 2, ctr[:, 1] + h / 2)
    return geoms, rng.random(len(views)).astype(np.float32), rng.integers(0, 3, n_obj)[views]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=500_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    for rotated in (True, False):
        geoms, scores, classes = detections(args.objects, rotated, np.random.default_rng(0))
        times, kept = [], 0
        for _ in range(args.reps):
            t = time.perf_counter()
            kept = len(nms(geoms, scores, classes, threshold=0.5, metric="ios", class_agnostic=False))
            times.append(time.perf_counter() - t)
        print(f"{'rotated' if rotated else 'axis-aligned':12s} {len(geoms)} detections -> {kept} kept: "
              f"median {np.median(times):.2f} s ({', '.join(f'{x:.2f}' for x in times)})", flush=True)


if __name__ == "__main__":
    main()
