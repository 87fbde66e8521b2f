#!/usr/bin/env python3
"""tiler vs SAHI sliced prediction, side by side in one run: wall time, peak RSS and their ratios.

    .venv/bin/pip install --no-deps 'sahi==0.12.8' fire termcolor   # not its GUI opencv-python
    .venv/bin/python bench/bench_vs_sahi.py [--size 8192] [--repeat 3] [--skip-dota]

Each engine runs in its own fresh process (so peak RSS is its own), with the same model, patch size,
overlap, confidence and torch threads; both merge with IoS 0.5. Cases:
  * a generated 8192x8192 GeoTIFF scene with the project's OBB model (320 px patches);
  * DOTA P0706 (../shared) with YOLOv8n-OBB (640 px patches), also scored against its ship labels.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def run_tiler(image: str, model: str, patch: int, overlap: float, conf: float, out: str) -> dict:
    from tiler import TileJob

    t = time.perf_counter()
    result = TileJob(image, model, patch_size=patch, overlap=overlap, conf=conf, progress=False, out=out,
                     runner="local").run()  # in-process, like SAHI
    return {"seconds": time.perf_counter() - t, "objects": len(result)}


def run_sahi(image: str, model: str, patch: int, overlap: float, conf: float, out: str) -> dict:
    import numpy as np
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction

    from tiler.model import set_torch_threads

    t = time.perf_counter()
    det_model = AutoDetectionModel.from_pretrained(model_type="ultralytics", model_path=model,
                                                   confidence_threshold=conf, device="cpu")
    set_torch_threads(None)  # same threads as tiler
    # SAHI reads the whole image into memory: that is how it works
    import rasterio

    with rasterio.open(image) as ds:
        img = np.moveaxis(ds.read([1, 2, 3]), 0, -1)
    res = get_sliced_prediction(img, det_model, slice_height=patch, slice_width=patch, overlap_height_ratio=overlap,
                                overlap_width_ratio=overlap, perform_standard_pred=False,
                                postprocess_type="NMS", postprocess_match_metric="IOS",
                                postprocess_match_threshold=0.5, postprocess_class_agnostic=False, verbose=0)
    preds = res.object_prediction_list
    polys = []
    for p in preds:
        seg = p.mask.segmentation if p.mask is not None else None
        if seg:
            polys.append({"cls": int(p.category.id), "score": float(p.score.value),
                          "xy": [float(v) for v in seg[0]]})
        else:
            b = p.bbox
            polys.append({"cls": int(p.category.id), "score": float(p.score.value),
                          "xy": [float(v) for v in (b.minx, b.miny, b.maxx, b.miny, b.maxx, b.maxy, b.minx, b.maxy)]})
    Path(out).write_text(json.dumps(polys))
    return {"seconds": time.perf_counter() - t, "objects": len(preds)}


def child(args) -> None:
    os.environ["YOLO_OFFLINE"] = "1"
    sys.path.insert(0, str(REPO))
    fn = run_tiler if args.engine == "tiler" else run_sahi
    res = fn(args.image, args.model, args.patch, args.overlap, args.conf, args.out)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res), flush=True)


def spawn(engine: str, image: str, model: str, patch: int, overlap: float, conf: float, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--image", str(image), "--model", str(model),
           "--patch", str(patch), "--overlap", str(overlap), "--conf", str(conf), "--out", str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[7:])
    res["process_seconds"] = wall  # including interpreter, imports and model load
    return res


def ship_scores(tiler_out: Path, sahi_out: Path) -> tuple[str, str]:
    import numpy as np
    import shapely

    sys.path.insert(0, str(REPO))
    from tiler.evaluate import match, read_dota_labels

    names, truth, _ = read_dota_labels(SHARED / "data/dota/P0706.txt")
    gt = truth[names == "ship"]
    fc = json.loads(tiler_out.read_text())["features"]
    t_pred = [(shapely.Polygon(f["geometry"]["coordinates"][0]), f["properties"]["score"]) for f in fc
              if f["properties"]["class_name"] == "ship"]
    s_pred = [(shapely.Polygon(np.reshape(p["xy"], (-1, 2))), p["score"]) for p in json.loads(sahi_out.read_text())
              if p["cls"] == 1]
    out = []
    for pred in (t_pred, s_pred):
        g = np.array([p for p, _ in pred], dtype=object)
        s = np.array([sc for _, sc in pred])
        out.append(str(match(g, s, gt, 0.3)))
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", default=None)
    ap.add_argument("--image"), ap.add_argument("--model"), ap.add_argument("--out")
    ap.add_argument("--patch", type=int, default=640)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine, interleaved; medians are compared")
    ap.add_argument("--skip-dota", action="store_true")
    ap.add_argument("--skip-scene", action="store_true")
    ap.add_argument("--work", default=str(REPO / "out" / "bench"))
    args = ap.parse_args()
    if args.child:
        args.engine = args.child
        child(args)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cases = []
    if not args.skip_scene:
        scene = work / f"scene-{args.size}.tif"
        if not scene.exists():
            subprocess.run([sys.executable, "-m", "tiler.cli", "synth", str(scene), "--size",
                            f"{args.size}x{args.size}", "--seed", "77"], check=True, cwd=REPO)
        cases.append(("scene", scene, REPO / "models/tiler-obb.pt", 320))
    if not args.skip_dota and (SHARED / "data/dota/P0706.png").exists():
        cases.append(("P0706", SHARED / "data/dota/P0706.png", SHARED / "models/yolov8n-obb.pt", 640))
    print(f"{'case':<8} {'engine':<6} {'run':>3} {'job s':>8} {'process s':>10} {'peak RSS MB':>12} {'objects':>8}")
    for name, image, model, patch in cases:
        runs: dict[str, list[dict]] = {"tiler": [], "sahi": []}
        for k in range(args.repeat):  # interleaved, so a slow spell of a shared machine hits both engines
            for engine in ("tiler", "sahi"):
                out = work / f"{name}-{engine}.json"
                r = spawn(engine, image, model, patch, args.overlap, args.conf, out)
                runs[engine].append(r)
                print(f"{name:<8} {engine:<6} {k + 1:>3} {r['seconds']:>8.1f} {r['process_seconds']:>10.1f} "
                      f"{r['peak_rss_mb']:>12.0f} {r['objects']:>8}", flush=True)
        med = {e: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "process_seconds", "peak_rss_mb")}
               for e, rs in runs.items()}
        t, s = med["tiler"], med["sahi"]
        print(f"{name:<8} median of {args.repeat}: tiler {t['seconds']:.1f} s, sahi {s['seconds']:.1f} s; "
              f"ratio tiler/sahi: wall {t['seconds'] / s['seconds']:.2f}x "
              f"(process {t['process_seconds'] / s['process_seconds']:.2f}x), "
              f"peak RSS {t['peak_rss_mb'] / s['peak_rss_mb']:.2f}x", flush=True)
        if name == "P0706":
            ts, ss = ship_scores(work / "P0706-tiler.json", work / "P0706-sahi.json")
            print(f"P0706    ships @IoU0.3  tiler {ts}   sahi {ss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
