#!/usr/bin/env python3
"""GPU throughput of the default path (issue 10, part 5): the model's raw batched throughput on one GPU against
images/s of a whole `tiler predict` job on the same GPU, the same model and patch size.

    python bench/bench_gpu.py --model M.pt [--size 16384] [--patch 640] [--batch 32,64] [--out DIR]

Needs a CUDA GPU. The scene is a generated 4096 x 4096 scene (`tiler synth`) tiled 4 x 4 times into one
tiled, deflate-compressed GeoTIFF of `--size` pixels (so it is quick to write; the model's work per patch does
not depend on what it finds much). Measured, each in this one process unless said:
  * raw: the network alone (Ultralytics' AutoBackend, fused, as tiler loads it) on a batch already on the
    GPU, fp32 and fp16, CUDA-synchronised, images/s;
  * model: tiler's `Predictor.predict` on batches already in memory, in its own (pinned) batch buffers as the
    job's readers fill them (host-to-device copy of the uint8 batch, forward, NMS, detections out), images/s;
  * read: `read_patches` alone over the job's batches, images/s;
  * read_scaling: windows/s over the whole grid with 1, 4, 8, 16 (`--read-threads`) reader threads, each with its
    own handle: the job's `BatchReader` (each block decoded once, shared), and runs of 8 windows per thread read
    straight from the raster as the readers did before;
  * job: `tiler predict --runner auto` in a fresh process (the default on a one-GPU machine is in-process),
    with its report: windows / wall time of the job (model load excluded) and seconds per stage; with
    `--baseline DIR` the same job of earlier code too, alternating.
Everything is printed as one JSON line per measurement and collected in DIR/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS: list[dict] = []


def emit(**row) -> None:
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def scene(path: Path, size: int) -> Path:
    """A `size` x `size` tiled deflate GeoTIFF made of one generated 4096 x 4096 scene repeated."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from tiler.synth import SceneSpec, write_scene

    if path.exists():
        return path
    t = time.perf_counter()
    base = path.with_name("base.tif")
    write_scene(SceneSpec(width=4096, height=4096, seed=7), base)
    with rasterio.open(base) as src:
        tile, profile = src.read(), src.profile
    profile.update(width=size, height=size, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   num_threads="all_cpus", BIGTIFF="IF_SAFER")
    rows = np.tile(tile, (1, 1, -(-size // 4096)))[:, :, :size]  # one band of 4096 rows, the full width
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, 4096):
            dst.write(rows[:, :min(4096, size - y)], window=Window(0, y, size, min(4096, size - y)))
    emit(step="scene", size=size, seconds=round(time.perf_counter() - t, 1))
    return path


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def raw(model: str, imgsz: int, batch: int, half: bool, device: str, iters: int = 30) -> None:
    import torch
    from ultralytics.nn.autobackend import AutoBackend

    dev = torch.device(device)
    net = AutoBackend(model, device=dev, fp16=half, fuse=True, verbose=False)
    net.eval()
    x = torch.rand(batch, 3, imgsz, imgsz, device=dev, dtype=torch.half if half else torch.float)
    with torch.inference_mode():
        for _ in range(5):
            net(x)
        sync()
        t = time.perf_counter()
        for _ in range(iters):
            net(x)
        sync()
    dt = time.perf_counter() - t
    emit(step="raw", batch=batch, half=half, images_per_s=round(batch * iters / dt, 1))


def grid_origins(size: int, patch: int):
    """Top-left corners of the windows of `patch` px at 25 % overlap lying wholly in the square scene, row by row."""
    import numpy as np

    xs = np.arange(0, size - patch + 1, int(patch * 0.75))
    return np.array([(x, y) for y in xs for x in xs])


def patches_of(src_path: Path, patch: int, batch: int, n_batches: int):
    import numpy as np

    from tiler.pipeline import read_patches
    from tiler.raster import RasterSource

    with RasterSource(str(src_path)) as src:
        origins = grid_origins(src.width, patch)[: batch * n_batches]
        t = time.perf_counter()
        out = []
        for b in range(n_batches):
            o = origins[b * batch:(b + 1) * batch]
            out.append(read_patches(src, (patch, patch), o, np.arange(len(o))))
        dt = time.perf_counter() - t
    emit(step="read", batch=batch, threads=1, images_per_s=round(batch * n_batches / dt, 1))
    return out


def read_scaling(src_path: Path, patch: int, threads_list: list[int], batch: int, chunk: int = 8) -> None:
    """Windows/s over the whole scene's grid with several reader threads, each through its own handle, two ways:
    "cells", the in-process runner's `BatchReader` (batches of `batch`, each block decoded once and shared), and
    "runs", `read_patches` on runs of `chunk` windows of a row per thread as the readers did before (each handle
    decodes what it reads, again where another thread read it). GDAL settings from the environment."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from tiler.pipeline import BatchSpec, read_patches
    from tiler.raster import RasterSource, gdal_env
    from tiler.runners.local import BatchReader

    with RasterSource(str(src_path)) as src:
        origins = grid_origins(src.width, patch)
        for threads in threads_list:
            specs = [BatchSpec(0, k, np.arange(k, min(k + batch, len(origins))), origins[k:k + batch],
                               (patch, patch)) for k in range(0, len(origins), batch)]
            reader = BatchReader({0: src}, threads, lambda n, h, w: np.empty((n, h, w, 3), np.uint8), batch)
            t = time.perf_counter()
            for got in reader.batches(specs):
                reader.give_back(got.buffer)
            dt = time.perf_counter() - t
            emit(step="read_scaling", how="cells", threads=threads, windows=len(origins),
                 gdal_num_threads=os.environ.get("GDAL_NUM_THREADS"), images_per_s=round(len(origins) / dt, 1))

            runs = [(lo, min(lo + chunk, len(origins))) for lo in range(0, len(origins), chunk)]
            local = threading.local()
            handles = []

            def read(lo: int, hi: int) -> None:
                if getattr(local, "src", None) is None:
                    local.src = src.reopened()
                    handles.append(local.src)
                read_patches(local.src, (patch, patch), origins[lo:hi], np.arange(lo, hi))

            with gdal_env(src, patch), ThreadPoolExecutor(threads) as pool:
                t = time.perf_counter()
                list(pool.map(lambda r: read(*r), runs))
                dt = time.perf_counter() - t
            for h in handles:
                h.close()
            emit(step="read_scaling", how="runs", threads=threads, windows=len(origins),
                 gdal_num_threads=os.environ.get("GDAL_NUM_THREADS"), images_per_s=round(len(origins) / dt, 1))


def model_level(model: str, batches, imgsz: int, half: bool, device: str, profile: Path | None = None,
                passes: int = 5):
    """images/s of `Predictor.predict` over `batches` (`passes` times), after two warm-up batches. Returns the
    detections of the last pass."""
    from tiler.model.predictor import Predictor

    pred = Predictor(model, imgsz=imgsz, device=device, half=half, batch=len(batches[0]))
    # in the model's own batch buffers (pinned host memory on a GPU), as the job's readers fill them
    pinned = []
    for b in batches:
        pinned.append(pred.batch_buffer(*b.shape[:3]))
        pinned[-1][:] = b
    batches = pinned
    pred.predict(batches[0])
    pred.predict(batches[0])
    sync()
    t = time.perf_counter()
    for _ in range(passes):
        found = [pred.predict(b) for b in batches]
    sync()
    dt = time.perf_counter() - t
    if profile is not None:  # where the time of `Predictor.predict` goes, a second pass under cProfile
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for b in batches:
            pred.predict(b)
        sync()
        prof.disable()
        with open(profile, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(30)
    emit(step="model", batch=len(batches[0]), half=half,
         images_per_s=round(passes * len(batches) * len(batches[0]) / dt, 1), detections=sum(map(len, found)))
    return found


# `tiler predict` under a GIL switch interval of argv[1] s (Python's default 0.005), profiled (cProfile: on
# Python 3.12 every thread) into argv[2] unless it is "-"
_LAUNCH = """import cProfile, pstats, runpy, sys
sys.setswitchinterval(float(sys.argv[1]))
path, prof = sys.argv[2], cProfile.Profile()
sys.argv = ["tiler", *sys.argv[3:]]
if path != "-":
    prof.enable()
try:
    runpy.run_module("tiler.cli", run_name="__main__")
finally:
    if path != "-":
        prof.disable()
        with open(path, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(40)
"""


def job(model: str, tif: Path, patch: int, batch: int, half: bool, out: Path, extra: list[str],
        repo: Path = REPO, switch: float = 0.005, profile: Path | None = None) -> None:
    cfg = out / f"job-b{batch}-{'fp16' if half else 'fp32'}.yaml"
    cfg.write_text(f"half: {str(half).lower()}\n")
    rep = out / "report.json"
    geo = out / "job.geojson"
    cmd = [sys.executable, "-c", _LAUNCH, str(switch), str(profile or "-"), "predict", str(tif), "--model", model,
           "--patch-size", str(patch), "--batch-size", str(batch), "--config", str(cfg), "--report", str(rep),
           "--out", str(geo), "--no-progress", *extra]
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t
    if p.returncode:
        emit(step="job", code=str(repo), switch=switch, batch=batch, half=half, extra=extra,
             error=(p.stderr or p.stdout)[-800:])
        return
    r = json.loads(rep.read_text())
    stats = r.get("stats", r)
    seconds = stats.get("seconds", {})
    windows = stats.get("windows_run")
    job_s = seconds.get("total")
    emit(step="job", code=str(repo), switch=switch, batch=batch, half=half, extra=extra, process_s=round(wall, 2),
         job_s=job_s, windows=windows, seconds=seconds, runner=stats.get("runner"), backend=stats.get("backend"),
         read_threads=stats.get("read_threads"),
         images_per_s=round(windows / (job_s - seconds.get("load_model", 0)), 1) if windows and job_s else None)
    geo.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--patch", type=int, default=640)
    ap.add_argument("--batch", default="32,64")
    ap.add_argument("--out", default="/tmp/bench_gpu")
    ap.add_argument("--steps", default="raw,read,model,job")
    ap.add_argument("--read-threads", default="1,4,8,16", help="read_scaling: reader thread counts")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--profile", action="store_true", help="model: also a cProfile of Predictor.predict")
    ap.add_argument("--precisions", default="fp32,fp16", help="model and job: fp32, fp16 or both (on CUDA)")
    ap.add_argument("--baseline", type=Path, help="a copy of earlier code (a folder holding its tiler package): "
                    "its job runs too, alternating with this code's, --repeat times each")
    ap.add_argument("--repeat", type=int, default=1, help="job: runs of each code")
    ap.add_argument("--switch-intervals", default="0.005",
                    help="job: Python's GIL switch intervals (s) to run this code's job under, each")
    ap.add_argument("--profile-job", action="store_true", help="job: one more run, its main thread profiled")
    ap.add_argument("--iters", type=int, default=30, help="raw: timed forward passes per case")
    ap.add_argument("--job-extra", action="append", default=[],
                    help="extra `tiler predict` arguments for one more job run (repeatable)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    emit(step="env", torch=torch.__version__, cuda=torch.version.cuda,
         gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
         cpus=os.cpu_count(), python=sys.version.split()[0])
    steps = args.steps.split(",")
    batches = [int(b) for b in args.batch.split(",")]
    halves = tuple(p == "fp16" for p in args.precisions.split(",") if args.device.startswith("cuda") or p == "fp32")
    needs_scene = bool({"read", "read_scaling", "model", "job"} & set(steps))
    tif = scene(Path(f"/tmp/bench_gpu_scene{args.size}.tif"), args.size) if needs_scene else None
    if "read_scaling" in steps:
        read_scaling(tif, args.patch, [int(t) for t in args.read_threads.split(",")], batches[-1])
    for b in batches:
        for half in halves:
            if "raw" in steps:
                try:
                    raw(args.model, args.patch, b, half, args.device, args.iters)
                except Exception:
                    emit(step="raw", batch=b, half=half, error=traceback.format_exc()[-800:])
        if {"read", "model"} & set(steps):
            try:
                pats = patches_of(tif, args.patch, b, max(4, 256 // b))
                if "model" in steps:
                    for half in halves:
                        tag = f"b{b}-{'fp16' if half else 'fp32'}"
                        model_level(args.model, pats, args.patch, half, args.device,
                                    out / f"profile-{tag}.txt" if args.profile else None)
            except Exception:
                emit(step="model", batch=b, error=traceback.format_exc()[-800:])
        if "job" in steps:
            for _ in range(args.repeat):
                for repo in ([args.baseline.resolve()] if args.baseline else []) + [REPO]:
                    switches = [float(v) for v in args.switch_intervals.split(",")] if repo == REPO else [0.005]
                    for half in halves:
                        for switch in switches:
                            job(args.model, tif, args.patch, b, half, out, ["--device", args.device], repo, switch)
            if args.profile_job:
                job(args.model, tif, args.patch, b, False, out, ["--device", args.device],
                    profile=out / f"profile-job-b{b}.txt")
            for extra in args.job_extra:
                job(args.model, tif, args.patch, b, False, out, ["--device", args.device, *extra.split()])
    (out / "gpu.json").write_text(json.dumps(RESULTS, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
