"""Ultralytics' per-patch rotated NMS, dense (its own) vs tiler's sparse one, on dense real patches.

    .venv/bin/python bench/bench_patch_nms.py [--reps 3]

Needs ../shared (yolov8n-obb.pt and DOTA P0706, 531 ships). The four 640 x 640 corner patches of P0706 go
through `YOLO.predict` one at a time (imgsz 640, conf 0.25, iou 0.7, max_det 3000), with Ultralytics'
`TorchNMS.fast_nms` swapped between its own dense version and `tiler.model.nms`'s, interleaved, `--reps`
rounds; the time inside `non_max_suppression` is measured separately. Prints medians per patch.

Then tiler's own `Predictor.predict` on the same four patches as one batch (the job's batch at 640 px),
its postprocess done two ways, interleaved: as Ultralytics does it (per image: NMS, then a Results object) and
batched (`_ultralytics.box_outputs`: one NMS over the batch, detections as arrays), next to the forward pass
alone on the same batch; detections are checked equal.
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
    ul_nms.non_max_suppression = original
    print(f"torch threads {threads}; 4 patches of 640 px, medians of {args.reps} interleaved rounds")
    for name, v in runs.items():
        a = np.array(v)
        print(f"{name:6s}: predict {np.median(a[:, 0]):6.1f} ms/patch, NMS {np.median(a[:, 1]):6.1f} ms/patch "
              f"({np.median(a[:, 1]) / np.median(a[:, 0]):.1%} of predict), kept {int(a[0, 2])}")
    predictor_postprocess([cv2.cvtColor(p, cv2.COLOR_BGR2RGB) for p in patches], max(args.reps, 5))


def predictor_postprocess(patches: list[np.ndarray], reps: int) -> None:
    import torch

    from tiler.model import _ultralytics
    from tiler.model.predictor import Predictor

    pred = Predictor(str(SHARED / "models" / "yolov8n-obb.pt"), imgsz=640, conf=0.25, iou=0.7)
    ul = pred._ul
    batched = _ultralytics.box_outputs
    x = _ultralytics.network_input(ul, torch.from_numpy(np.stack(patches)))  # as run_stages feeds the network
    out: dict[str, list[float]] = {"per image": [], "batched": [], "forward": []}
    dets = {}
    try:
        for _ in range(reps):
            for name in ("per image", "batched", "forward"):
                _ultralytics.box_outputs = batched if name == "batched" else (lambda *a, **k: None)
                t = time.perf_counter()
                if name == "forward":
                    with torch.inference_mode():
                        ul.model(x)
                else:
                    dets[name] = pred.predict(patches)
                out[name].append((time.perf_counter() - t) * 1000 / len(patches))
    finally:
        _ultralytics.box_outputs = batched
    a, b = dets["per image"], dets["batched"]
    same = len(a) == len(b) and np.array_equal(a.coords, b.coords) and np.array_equal(a.score, b.score)
    fwd = np.median(out["forward"])
    print(f"tiler Predictor ({pred.precision}), one batch of {len(patches)}, medians of {reps} interleaved rounds "
          f"({len(b)} detections, equal: {same}):")
    for name, v in out.items():
        m = np.median(v)
        print(f"{name:9s}: {m:6.1f} ms/patch" + ("" if name == "forward" else f", {m - fwd:5.1f} over the forward"))


if __name__ == "__main__":
    main()
