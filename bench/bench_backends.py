"""Inference backends side by side: torch (.pt, fp32 and bf16) against its OpenVINO (fp32 and int8) and ONNX Runtime
exports.

    .venv/bin/python bench/bench_backends.py [--reps 5] [--backends torch,torch-bf16,openvino,openvino-int8,onnx]

`torch` is the .pt in fp32 (`precision="fp32"`), `torch-bf16` the .pt in bf16 (the default on a CPU with native
bfloat16; skipped on others); the exports run at their runtime's own precision.

1. Predict time per patch through tiler's Predictor (letterbox, forward, NMS, results), model loaded and
   warmed up, the backends interleaved `--reps` rounds, medians: the project's three models on 32 patches of
   320 px of a generated scene (batch 16), and yolov8n-obb on 8 patches of 640 px of DOTA P0706 (batch 4,
   needs ../shared). Detections per backend on the same patches, against torch's.
2. Ship F1 on P0706 (531 ships, IoU 0.3) of a whole tiler job per backend (640 px, 25 % overlap, local runner).
3. A whole job per backend (export already cached): a 4096 x 4096 generated scene, tiler-obb at 320 px, local
   runner, interleaved `--reps` rounds, medians of the job's own seconds (imports and start-up excluded).
4. The one-time export, per backend and model (into an empty cache), in the first table's last column.
Exports go to a temporary cache ($TILER_CACHE_DIR), so every run measures them afresh. openvino-int8 is
calibrated on the very patches it is timed on in (1), and on the job's own windows in (2) and (3), as jobs do.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def job_args(b: str) -> dict:
    """The Predictor / TileJob arguments that run backend name `b` of this bench."""
    if b in ("torch", "torch-bf16"):
        return {"backend": "auto", "precision": "bf16" if b == "torch-bf16" else "fp32"}
    return {"backend": b}
SHARED = ROOT.parent / "shared"
P0706 = SHARED / "data" / "dota" / "P0706.png"
DOTA_MODEL = SHARED / "models" / "yolov8n-obb.pt"


def scene_patches(n: int, size: int) -> list[np.ndarray]:
    import rasterio

    from tiler.synth import SceneSpec, write_scene

    with tempfile.TemporaryDirectory() as tmp:
        tif, _ = write_scene(SceneSpec(2048, 2048, seed=11), Path(tmp) / "scene.tif")
        with rasterio.open(tif) as src:
            img = src.read().transpose(1, 2, 0)
    step = 2048 // size
    assert n <= step * step, f"the scene holds {step * step} patches of {size} px"
    return [np.ascontiguousarray(img[(k // step) * size:(k // step + 1) * size, (k % step) * size:(k % step + 1) * size])
            for k in range(n)]


def dota_patches(n: int, size: int) -> list[np.ndarray]:
    import cv2

    img = cv2.cvtColor(cv2.imread(str(P0706)), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    xs, ys = np.linspace(0, w - size, 4).astype(int), np.linspace(0, h - size, 2).astype(int)
    return [np.ascontiguousarray(img[y:y + size, x:x + size]) for y in ys for x in xs][:n]


def per_patch(cases, backends: list[str], reps: int) -> list[dict]:
    from tiler.model import Predictor

    rows = []
    for name, model, imgsz, batch, patches in cases:
        predictors, export_s = {}, {}
        for b in backends:
            t = time.perf_counter()
            predictors[b] = Predictor(str(model), imgsz=imgsz, **job_args(b), batch=batch,
                                      calibration=patches if b == "openvino-int8" else None)
            export_s[b] = time.perf_counter() - t
            predictors[b].predict(patches[:batch])  # warm-up
        times = {b: [] for b in backends}
        counts = {}
        for _ in range(reps):
            for b, p in predictors.items():
                t = time.perf_counter()
                n = sum(len(p.predict(patches[i:i + batch])) for i in range(0, len(patches), batch))
                times[b].append((time.perf_counter() - t) / len(patches) * 1000)
                counts[b] = n
        for b in backends:
            rows.append({"case": name, "backend": b, "ms_per_patch": float(np.median(times[b])),
                         "detections": counts[b], "vs_torch": counts[b] - counts[backends[0]],
                         "load_or_export_s": export_s[b]})
            print(rows[-1], flush=True)
        del predictors
    return rows


def ship_f1(backends: list[str]) -> list[dict]:
    from tiler.evaluate import match, read_dota_labels
    from tiler.job import TileJob

    names, truth, _ = read_dota_labels(P0706.with_suffix(".txt"))
    ships_true = truth[names == "ship"]
    rows = []
    for b in backends:
        t = time.perf_counter()
        result = TileJob(P0706, DOTA_MODEL, patch_size=640, overlap=0.25, progress=False, runner="local",
                         **job_args(b)).run()
        seconds = time.perf_counter() - t
        d = result.detections
        ship = np.asarray([result.names[int(c)] == "ship" for c in d.class_id], dtype=bool)
        s = match(d.geometries()[ship], d.score[ship], ships_true, iou_threshold=0.3)
        rows.append({"backend": b, "ships": int(ship.sum()), "precision": s.precision, "recall": s.recall,
                     "f1": 2 * s.precision * s.recall / max(s.precision + s.recall, 1e-9), "job_s": seconds})
        print(rows[-1], flush=True)
    return rows


def whole_jobs(backends: list[str], reps: int) -> list[dict]:
    from tiler.job import TileJob
    from tiler.synth import SceneSpec, write_scene

    rows = {b: [] for b in backends}
    with tempfile.TemporaryDirectory() as tmp:
        tif, _ = write_scene(SceneSpec(4096, 4096, seed=3), Path(tmp) / "scene.tif")
        for r in range(reps + 1):  # round 0 warms the caches (file, exports) and is not counted
            for b in backends:
                t = time.perf_counter()
                result = TileJob(tif, ROOT / "models" / "tiler-obb.pt", patch_size=320, overlap=0.25, progress=False,
                                 runner="local", **job_args(b)).run()
                if r:
                    rows[b].append((time.perf_counter() - t, len(result)))
    out = [{"backend": b, "job_s": float(np.median([s for s, _ in v])), "objects": v[0][1]} for b, v in rows.items()]
    for r in out:
        print(r, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--backends", default="torch,torch-bf16,openvino,openvino-int8,onnx")
    args = ap.parse_args()
    backends = args.backends.split(",")
    from tiler.model.predictor import cpu_has_native_bf16

    if "torch-bf16" in backends and not cpu_has_native_bf16():
        print("skipping torch-bf16: this CPU has no native bfloat16")
        backends.remove("torch-bf16")
    os.environ["TILER_CACHE_DIR"] = tempfile.mkdtemp(prefix="tiler-bench-cache-")
    cases = [(f"tiler-{t} 320 px", ROOT / "models" / f"tiler-{t}.pt", 320, 16, scene_patches(32, 320))
             for t in ("obb", "detect", "segment")]
    if P0706.exists() and DOTA_MODEL.exists():
        cases.append(("yolov8n-obb 640 px, P0706", DOTA_MODEL, 640, 4, dota_patches(8, 640)))
    rows = per_patch(cases, backends, args.reps)
    print("\n| model, patches | backend | ms / patch | vs torch | detections (vs torch) | load + export s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = next(x for x in rows if x["case"] == r["case"] and x["backend"] == backends[0])
        print(f"| {r['case']} | {r['backend']} | {r['ms_per_patch']:.1f} | {r['ms_per_patch'] / base['ms_per_patch']:.2f}x "
              f"| {r['detections']} ({r['vs_torch']:+d}) | {r['load_or_export_s']:.1f} |")
    jobs = whole_jobs(backends, args.reps)
    print("\n| backend | whole job s (4096 x 4096, tiler-obb 320 px) | vs torch | objects |")
    print("|---|---|---|---|")
    for r in jobs:
        print(f"| {r['backend']} | {r['job_s']:.2f} | {r['job_s'] / jobs[0]['job_s']:.2f}x | {r['objects']} |")
    if P0706.exists() and DOTA_MODEL.exists():
        f1 = ship_f1(backends)
        print("\n| backend | ships kept | precision | recall | F1 | job s |")
        print("|---|---|---|---|---|---|")
        for r in f1:
            print(f"| {r['backend']} | {r['ships']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.4f} "
                  f"| {r['job_s']:.1f} |")


if __name__ == "__main__":
    main()
