"""tiler.compat against patched_yolo_infer 1.3.10 on the same 4000 x 4000 image: wall time and peak RSS.

    .venv/bin/python bench/bench_compat.py [--size 4000] [--seed 4000] [--dense 1200] [--repeats 3] [--tasks detect,segment]
    .venv/bin/python bench/bench_compat.py --tasks frames [--frames 20] [--frame-size 960]

Each run is its own process (peak RSS is per process, and both libraries set torch's thread count
process-wide), running the guide's two calls, MakeCropsDetectThem then CombineDetections, with the same
arguments: 320 px crops, 25 % overlap, imgsz 320, conf 0.25, the project's models, default NMS settings,
sequential crops (batch_inference=False, both libraries' default).

- detect: the whole generated scene.
- segment, memory_optimize=False: the reference keeps a full-frame uint8 mask per *raw* detection (16 MB
  each at 4000 x 4000), which on the whole scene (~1000 objects, ~2000 raw detections) needs ~30 GB, more
  than this machine has. So the image stays 4000 x 4000 but only its central `--dense` square keeps the
  scene; the rest is black (no objects). tiler.compat keeps per-object masks and makes full frames only for
  the kept objects at the end.
- frames (asked for by name): one model object loaded once, then the two calls on each of `--frames` images of
  `--frame-size` px cut from the scene along its diagonal, as a video or a folder of images is processed with
  the guide's API; the time is the whole loop (the reference reuses Ultralytics' predictor between calls).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def frames_worker(lib: str, image_path: str, frames: int, size: int) -> None:
    img = np.load(image_path)
    t_import = time.perf_counter()
    if lib == "tiler":
        import tiler.compat as api
    else:
        import patched_yolo_infer as api
    from ultralytics import YOLO

    model = YOLO(str(MODELS / "tiler-detect.pt"))
    step = (len(img) - size) // max(1, frames - 1)
    t = time.perf_counter()
    kept = 0
    for k in range(frames):
        frame = np.ascontiguousarray(img[k * step:k * step + size, k * step:k * step + size])
        crops = api.MakeCropsDetectThem(image=frame, model=model, shape_x=320, shape_y=320, overlap_x=25,
                                        overlap_y=25, imgsz=320, conf=0.25, show_processing_status=False)
        kept += len(api.CombineDetections(crops).filtered_boxes)
    end = time.perf_counter()
    print(json.dumps({"lib": lib, "task": "frames", "seconds": round(end - t_import, 2),
                      "calls_seconds": round(end - t, 2), "per_frame_ms": round((end - t) / frames * 1000),
                      "raw": 0, "kept": kept,
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def worker(lib: str, task: str, image_path: str) -> None:
    img = np.load(image_path)
    t_import = time.perf_counter()
    # the reference imports Ultralytics (and torch) when it is imported, tiler when it loads the model:
    # the script's time from the import on is the fair comparison; the calls' time alone is printed beside it
    if lib == "tiler":
        import tiler.compat as api
    else:
        import patched_yolo_infer as api
    segment = task == "segment"
    t = time.perf_counter()
    crops = api.MakeCropsDetectThem(image=img, model_path=str(MODELS / f"tiler-{task}.pt"), segment=segment,
                                    shape_x=320, shape_y=320, overlap_x=25, overlap_y=25, imgsz=320, conf=0.25,
                                    memory_optimize=False)
    result = api.CombineDetections(crops)
    end = time.perf_counter()
    raw = sum(len(c.detected_xyxy) for c in crops.crops)
    print(json.dumps({"lib": lib, "task": task, "seconds": round(end - t_import, 2),
                      "calls_seconds": round(end - t, 2), "raw": raw,
                      "kept": len(result.filtered_boxes), "masks": len(result.filtered_masks),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=4000)
    ap.add_argument("--dense", type=int, default=1200)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per library; medians are reported")
    ap.add_argument("--tasks", default="detect,segment", help="of detect, segment, frames")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--frame-size", type=int, default=960)
    ap.add_argument("--worker", nargs=3, metavar=("LIB", "TASK", "NPY"))
    args = ap.parse_args()
    if args.worker:
        if args.worker[1] == "frames":
            frames_worker(args.worker[0], args.worker[2], args.frames, args.frame_size)
        else:
            worker(*args.worker)
        return
    import rasterio

    from tiler.synth import SceneSpec, write_scene

    with tempfile.TemporaryDirectory() as tmp:
        tif, _ = write_scene(SceneSpec(args.size, args.size, seed=args.seed), Path(tmp) / "scene.tif")
        with rasterio.open(tif) as src:
            img = np.ascontiguousarray(src.read([3, 2, 1]).transpose(1, 2, 0))  # BGR, as cv2.imread gives
        whole = Path(tmp) / "whole.npy"
        np.save(whole, img)
        sparse = np.zeros_like(img)
        a = (args.size - args.dense) // 2
        sparse[a:a + args.dense, a:a + args.dense] = img[a:a + args.dense, a:a + args.dense]
        dense = Path(tmp) / "sparse.npy"
        np.save(dense, sparse)
        rows = []
        for task, path in (("detect", whole), ("segment", dense), ("frames", whole)):
            if task not in args.tasks.split(","):
                continue
            for _ in range(args.repeats):
                for lib in ("tiler", "reference"):
                    out = subprocess.run([sys.executable, __file__, "--worker", lib, task, str(path), "--frames",
                                          str(args.frames), "--frame-size", str(args.frame_size)],
                                         capture_output=True, text=True, check=True)
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(rows[-1], flush=True)
    print("\n| task | library | wall s (import + calls) | calls alone s | peak RSS MB | raw detections | kept "
          "| tiler / reference |")
    print("|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        med = {}
        for lib in ("tiler", "reference"):
            runs = [x for x in rows if x["task"] == task and x["lib"] == lib]
            med[lib] = {k: float(np.median([x[k] for x in runs])) for k in ("seconds", "calls_seconds", "peak_rss_mb")}
            med[lib].update(raw=runs[0]["raw"], kept=runs[0]["kept"])
        t, r = med["tiler"], med["reference"]
        for lib, x in med.items():
            ratio = (f"wall {t['seconds'] / r['seconds']:.2f}x, calls {t['calls_seconds'] / r['calls_seconds']:.2f}x, "
                     f"RSS {t['peak_rss_mb'] / r['peak_rss_mb']:.2f}x") if lib == "tiler" else ""
            print(f"| {task} | {lib} | {x['seconds']:.1f} | {x['calls_seconds']:.1f} | {x['peak_rss_mb']:.0f} "
                  f"| {x['raw']} | {x['kept']} | {ratio} |")


if __name__ == "__main__":
    main()
