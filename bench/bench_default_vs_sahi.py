#!/usr/bin/env python3
"""Plain `tiler predict` (every default: runner, backend, batch, threads) against SAHI sliced prediction,
and the job's time over the model's pure forward pass on the same patches (issue 10, part 7).

    .venv/bin/pip install --no-deps 'sahi==0.12.8' fire termcolor   # not its GUI opencv-python
    .venv/bin/python bench/bench_default_vs_sahi.py [--repeat 3] [--size 8192] [--also-backend openvino-int8]

Cases (same model, patch, overlap 0.25 and conf 0.25 for both engines; SAHI merges with IoS 0.5 per class,
as tiler does):
  * mosaic: a 3 x 3 mosaic of DOTA P0706 (3333 x 3546, 531 x 9 ships; ../shared), yolov8n-obb at 640 px;
  * scene: a generated 8192 x 8192 GeoTIFF, the project's tiler-obb at 320 px.
Each run is a fresh process: tiler is the `tiler predict` command itself, SAHI the same child as in
bench_vs_sahi.py. Peak memory is the largest resident set among the run's processes (`ru_maxrss` of the
children of a small wrapper process that only starts the run). The engines alternate and medians of
`--repeat` runs are compared. "forward" is the model's forward pass alone (no letterbox, NMS, reads, merge or
writing) over the job's own patches in the job's own batches, timed in a separate process with tiler's
default threads and memory format, and the job's allocator settings (`tiler.process.heap_kept`: without them the
forward pass alone is 5-10 % slower, so the job would be measured against a slower reference); the job time is
the one `tiler predict` reports (start-up excluded), the process time everything from exec to exit.
`--also-backend B` adds `tiler predict --backend B` (and its own forward pass) to the rounds, after one run not
counted that fills the export cache (its time is printed); `--also-precision P` adds `tiler predict --precision
P` and its forward pass likewise (e.g. fp32 beside the default, which is bf16 on a CPU with native bfloat16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
P0706 = SHARED / "data" / "dota" / "P0706.png"
DOTA_MODEL = SHARED / "models" / "yolov8n-obb.pt"
TILER = Path(sys.executable).parent / "tiler"


def mosaic(path: Path, n: int = 3) -> Path:
    """An n x n mosaic of P0706 as a tiled GeoTIFF (pixel coordinates), and its ship labels beside it."""
    import cv2
    import numpy as np
    import rasterio

    if path.exists():
        return path
    img = cv2.cvtColor(cv2.imread(str(P0706)), cv2.COLOR_BGR2RGB)
    big = np.tile(img, (n, n, 1))
    with rasterio.open(path, "w", driver="GTiff", width=big.shape[1], height=big.shape[0], count=3, dtype="uint8",
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate") as dst:
        dst.write(np.moveaxis(big, -1, 0))
    return path


def ship_f1(out: Path, image_hw: tuple[int, int], n: int = 3) -> str:
    """Ships in a tiler GeoJSON (pixel coordinates) against P0706's labels repeated over the mosaic."""
    import numpy as np
    import shapely

    sys.path.insert(0, str(REPO))
    from tiler.evaluate import match, read_dota_labels

    names, truth, _ = read_dota_labels(P0706.with_suffix(".txt"))
    gt = truth[names == "ship"]
    h, w = image_hw[0] // n, image_hw[1] // n
    gt = np.array([shapely.transform(g, lambda xy, dx=dx, dy=dy: xy + (dx, dy)) for dy in range(0, n * h, h)
                   for dx in range(0, n * w, w) for g in gt], dtype=object)
    fc = json.loads(out.read_text())["features"]
    ships = [f for f in fc if f["properties"]["class_name"] == "ship"]
    pred = np.array([shapely.Polygon(f["geometry"]["coordinates"][0]) for f in ships], dtype=object)
    return str(match(pred, np.array([f["properties"]["score"] for f in ships]), gt, 0.3))


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB among the children, stdout) of a command, from a fresh wrapper process."""
    wrapper = ("import resource, subprocess, sys, time, json\n"
               "t = time.perf_counter()\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "wall = time.perf_counter() - t\n"
               "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
               "print(json.dumps({'rc': p.returncode, 'wall': wall, 'rss': rss, 'out': p.stdout, 'err': p.stderr}))\n")
    res = json.loads(subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True,
                                    check=True).stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{res['err'][-3000:]}")
    return res["wall"], res["rss"], res["out"]


def tiler_run(image: Path, model: Path, patch: int, out: Path, backend: str | None = None,
              precision: str | None = None) -> dict:
    cmd = [str(TILER), "predict", str(image), "--model", str(model), "--patch-size", str(patch), "--overlap", "0.25",
           "--conf", "0.25", "--out", str(out), "--no-progress", "--report", str(out.with_suffix(".report.json"))]
    if backend:
        cmd += ["--backend", backend]
    if precision:
        cmd += ["--precision", precision]
    wall, rss, stdout = run_measured(cmd)
    stats = json.loads(out.with_suffix(".report.json").read_text())["stats"]
    sec = stats["seconds"]
    return {"seconds": float(sec["total"]), "runner": stats["runner"], "backend": stats["backend"],
            "precision": stats.get("precision", ""),
            "load_model_seconds": float(sec["load_model"]), "predict_seconds": float(sec["predict"]),
            "process_seconds": wall, "peak_rss_mb": rss, "objects": stats["kept_detections"]}


def sahi_run(image: Path, model: Path, patch: int, out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / "bench_vs_sahi.py"), "--child", "sahi", "--image", str(image),
           "--model", str(model), "--patch", str(patch), "--overlap", "0.25", "--conf", "0.25", "--out", str(out)]
    wall, rss, stdout = run_measured(cmd)
    res = json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    return {"seconds": res["seconds"], "process_seconds": wall, "peak_rss_mb": rss, "objects": res["objects"]}


def forward_child(image: str, model: str, patch: int, backend: str = "auto", precision: str = "auto") -> None:
    """The forward pass alone over the job's patches, in the job's batches (tiler's defaults; the model as a
    job with `backend` and `precision` loads it)."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from tiler import pipeline, process
    from tiler.model import _ultralytics
    from tiler.config import JobConfig
    from tiler.frames import executor_config, plan_frames

    cfg = JobConfig(source=image, model=model, patch_size=patch, overlap=0.25, conf=0.25, backend=backend,
                    precision=precision)
    cfg = executor_config(cfg, plan_frames(cfg, [image]))
    predictor = pipeline.make_predictor(cfg)
    ul = predictor._ul
    with pipeline.open_source(cfg) as src:
        plan = pipeline.plan(cfg, src)
        batches = []
        for start in range(0, len(plan.origins), cfg.batch_size):
            patches = pipeline.read_patches(src, tuple(cfg.patch_size), plan.origins[start:start + cfg.batch_size],
                                            plan.window_ids[start:start + cfg.batch_size])
            # as run_stages feeds the network: its memory format and arithmetic (bf16 where precision auto chose it)
            batches.append(_ultralytics.network_input(ul, torch.from_numpy(np.stack(patches))))
    with torch.inference_mode(), process.heap_kept():
        ul.model(batches[0][:1])  # first-call allocations, as the job's first batch pays them too
        t = time.perf_counter()
        for x in batches:
            ul.model(x)
        seconds = time.perf_counter() - t
    print("RESULT " + json.dumps({"forward_seconds": seconds, "patches": int(sum(len(b) for b in batches)),
                                  "batch": cfg.batch_size, "threads": predictor.threads,
                                  "precision": predictor.precision}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--skip-mosaic", action="store_true")
    ap.add_argument("--skip-scene", action="store_true")
    ap.add_argument("--work", default=str(REPO / "out" / "bench"))
    ap.add_argument("--also-backend", metavar="B", help="also time `tiler predict --backend B`, and its forward pass")
    ap.add_argument("--also-precision", metavar="P",
                    help="also time `tiler predict --precision P` (e.g. fp32), and its forward pass")
    ap.add_argument("--forward-child", nargs=5, metavar=("IMAGE", "MODEL", "PATCH", "BACKEND", "PRECISION"))
    args = ap.parse_args()
    if args.forward_child:
        image, model, patch, backend, precision = args.forward_child
        forward_child(image, model, int(patch), backend, precision)
        return 0
    os.environ["YOLO_OFFLINE"] = "1"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cases = []
    if not args.skip_mosaic and P0706.exists():
        cases.append(("mosaic", mosaic(work / "P0706-3x3.tif"), DOTA_MODEL, 640))
    if not args.skip_scene:
        scene = work / f"scene-{args.size}.tif"
        if not scene.exists():
            subprocess.run([str(TILER), "synth", str(scene), "--size", f"{args.size}x{args.size}", "--seed", "77"],
                           check=True, capture_output=True)
        cases.append(("scene", scene, REPO / "models" / "tiler-obb.pt", 640 // 2))
    # (flag, engine-name suffix) of each variant of `tiler predict` timed beside the default
    variants = [(f"--backend {args.also_backend}", "-" + args.also_backend)] if args.also_backend else []
    variants += [(f"--precision {args.also_precision}", "@" + args.also_precision)] if args.also_precision else []
    engines = ["tiler", "sahi", "forward"] + [e + suffix for _, suffix in variants for e in ("tiler", "forward")]
    for name, image, model, patch in cases:
        runs: dict[str, list[dict]] = {e: [] for e in engines}
        if args.also_backend:  # fills the export cache, as a user's first job with that backend does
            r = tiler_run(image, model, patch, work / f"default-{name}-first.json", args.also_backend)
            print(name, f"first run with --backend {args.also_backend} (export cache filled)", json.dumps(r),
                  flush=True)
        for k in range(args.repeat):
            for engine in engines:
                out = work / f"default-{name}-{engine}.json"
                base, _, precision = engine.partition("@")
                backend = base.partition("-")[2] or None
                if engine.startswith("tiler"):
                    r = tiler_run(image, model, patch, out, backend, precision or None)
                elif engine == "sahi":
                    r = sahi_run(image, model, patch, out)
                else:
                    _, _, stdout = run_measured([sys.executable, __file__, "--forward-child", str(image), str(model),
                                                 str(patch), backend or "auto", precision or "auto"])
                    r = json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
                runs[engine].append(r)
                print(name, engine, k + 1, json.dumps(r), flush=True)
        med = {e: {key: statistics.median(r[key] for r in rs) for key in rs[0] if isinstance(rs[0][key], float)}
               for e, rs in runs.items()}
        t, s, f = med["tiler"], med["sahi"], med["forward"]
        print(f"{name}: tiler ({runs['tiler'][0]['runner']}, {runs['tiler'][0]['backend']}, "
              f"{runs['tiler'][0]['precision']}) job {t['seconds']:.2f} s, process "
              f"{t['process_seconds']:.2f} s, peak {t['peak_rss_mb']:.0f} MB; SAHI job {s['seconds']:.2f} s, process "
              f"{s['process_seconds']:.2f} s, peak {s['peak_rss_mb']:.0f} MB; forward alone "
              f"{f['forward_seconds']:.2f} s")
        print(f"{name}: tiler / SAHI: job {t['seconds'] / s['seconds']:.2f}x, process "
              f"{t['process_seconds'] / s['process_seconds']:.2f}x, peak RSS "
              f"{t['peak_rss_mb'] / s['peak_rss_mb']:.2f}x; tiler job / forward "
              f"{t['seconds'] / f['forward_seconds']:.2f} "
              f"(model load excluded {(t['seconds'] - t['load_model_seconds']) / f['forward_seconds']:.2f})",
              flush=True)
        for flag, suffix in variants:
            v, fv = med["tiler" + suffix], med["forward" + suffix]
            print(f"{name}: tiler {flag} job {v['seconds']:.2f} s, process {v['process_seconds']:.2f} s, peak "
                  f"{v['peak_rss_mb']:.0f} MB, forward alone {fv['forward_seconds']:.2f} s; / SAHI: job "
                  f"{v['seconds'] / s['seconds']:.2f}x, peak RSS {v['peak_rss_mb'] / s['peak_rss_mb']:.2f}x; default "
                  f"tiler job / this {t['seconds'] / v['seconds']:.2f}x; job / forward "
                  f"{v['seconds'] / fv['forward_seconds']:.2f}", flush=True)
        if name == "mosaic":
            import rasterio

            with rasterio.open(image) as ds:
                hw = (ds.height, ds.width)
            for engine in engines:
                if engine.startswith("tiler"):
                    print(f"mosaic ships @IoU0.3: {engine} {ship_f1(work / f'default-mosaic-{engine}.json', hw)}",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
