"""Ultralytics' per-patch rotated NMS, dense (its own) vs tiler's sparse one, on dense real patches.

    .venv/bin/python bench/bench_patch_nms.py [--reps 3]

Needs ../shared (yolov8n-obb.pt and DOTA P0706, 531 ships). The four 640 x 640 corner patches of P0706 go
through `YOLO.predict` one at a time (imgsz 640, conf 0.25, iou 0.7, max_det 3000), with Ultralytics'
`TorchNMS.fast_nms` swapped between its own dense version and `tiler.model.nms`'s, interleaved, `--reps`
rounds; the time inside `non_max_suppression` is measured separately. Prints medians per patch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from ultralytics import YOLO
    from ultralytics.utils import nms as ul_nms
    from ultralytics.utils.nms import TorchNMS

    from tiler.model import _ultralytics

    _ultralytics.disable_nms_time_limit()
    _ultralytics.sparse_rotated_nms()
    threads = _ultralytics.set_torch_threads(None)
    sparse, dense = TorchNMS.__dict__["fast_nms"], staticmethod(TorchNMS.fast_nms._tiler_original)

    img = cv2.imread(str(SHARED / "data" / "dota" / "P0706.png"))
    h, w = img.shape[:2]
    patches = [np.ascontiguousarray(img[y:y + 640, x:x + 640]) for y in (0, h - 640) for x in (0, w - 640)]
    model = YOLO(str(SHARED / "models" / "yolov8n-obb.pt"))
    model.predict(patches[:1], imgsz=640, verbose=False)  # warm-up

    in_nms = [0.0]
    original = ul_nms.non_max_suppression

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            in_nms[0] += time.perf_counter() - t

    ul_nms.non_max_suppression = timed
    runs: dict[str, list[tuple[float, float, int]]] = {"dense": [], "sparse": []}
    for _ in range(args.reps):
        for name, impl in (("dense", dense), ("sparse", sparse)):
            TorchNMS.fast_nms = impl
            in_nms[0] = 0.0
            kept = 0
            t = time.perf_counter()
            for p in patches:
                kept += len(model.predict([p], imgsz=640, conf=0.25, iou=0.7, max_det=3000, verbose=False)[0].obb)
            total = time.perf_counter() - t
            runs[name].append((total / len(patches) * 1000, in_nms[0] / len(patches) * 1000, kept))
    TorchNMS.fast_nms = sparse
    print(f"torch threads {threads}; 4 patches of 640 px, medians of {args.reps} interleaved rounds")
    for name, v in runs.items():
        a = np.array(v)
        print(f"{name:6s}: predict {np.median(a[:, 0]):6.1f} ms/patch, NMS {np.median(a[:, 1]):6.1f} ms/patch "
              f"({np.median(a[:, 1]) / np.median(a[:, 0]):.1%} of predict), kept {int(a[0, 2])}")


if __name__ == "__main__":
    main()
