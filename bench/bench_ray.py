#!/usr/bin/env python3
"""Ray runner overhead: end-to-end Ray wall time vs the pure model time for the same patches.

    .venv/bin/python bench/bench_ray.py [--size 16384] [--workers 1]

Both sides use the same model, patch size, batch size and parallelism (`--workers` predictor actors of
`--threads` torch threads each, against the same number of processes predicting alone). The pure side reads
its patches first and times only `Predictor.predict`; the Ray side is the whole job from a cold start:
embedded Ray start-up, planning, reading on workers, predicting in actors, merge. Printed: both times,
their ratio (target <= 1.15), and the per-window scheduling overhead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pure_forward(scene: str, model: str, patch: int, overlap: float, batch: int, threads: int, part: int,
                 parts: int) -> dict:
    """Model time alone for every `parts`-th batch starting at `part` (one process of the pure side)."""
    import warnings

    warnings.filterwarnings("ignore")
    from tiler.config import JobConfig
    from tiler.pipeline import make_predictor, open_source, plan, read_patches

    cfg = JobConfig(source=scene, model=model, patch_size=patch, overlap=overlap, batch_size=batch, threads=threads)
    source = open_source(cfg)
    wp = plan(cfg, source)
    predictor = make_predictor(cfg)
    predictor.predict(read_patches(source, cfg.patch_size, wp.origins[:batch], wp.window_ids[:batch]))  # warm-up
    model_s, windows = 0.0, 0
    for start in range(part * batch, len(wp.window_ids), batch * parts):
        sl = slice(start, start + batch)
        patches = read_patches(source, cfg.patch_size, wp.origins[sl], wp.window_ids[sl])
        t = time.perf_counter()
        predictor.predict(patches)
        model_s += time.perf_counter() - t
        windows += len(patches)
    return {"model_seconds": model_s, "windows": windows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--patch", type=int, default=320)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=None, help="patches per forward pass (default: the job's)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=str(REPO / "models" / "tiler-obb.pt"))
    ap.add_argument("--work", default=str(REPO / "out" / "bench"))
    ap.add_argument("--pure-part", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch is None:
        from tiler.config import auto_batch_size

        args.batch = auto_batch_size(args.patch)
    scene = Path(args.work) / f"scene-{args.size}.tif"
    if args.pure_part is not None:
        res = pure_forward(str(scene), args.model, args.patch, args.overlap, args.batch, args.threads,
                           args.pure_part, args.workers)
        print("RESULT " + json.dumps(res))
        return 0
    scene.parent.mkdir(parents=True, exist_ok=True)
    if not scene.exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tiler.cli", "synth", str(scene), "--size", f"{args.size}x{args.size}",
                        "--seed", "16"], check=True, cwd=REPO)
        print(f"scene written in {time.perf_counter() - t:.0f} s")

    # pure side: `workers` processes, each predicting its share of the batches
    procs = [subprocess.Popen([sys.executable, __file__, "--pure-part", str(k), "--size", str(args.size),
                               "--patch", str(args.patch), "--overlap", str(args.overlap), "--batch",
                               str(args.batch), "--workers", str(args.workers), "--threads", str(args.threads),
                               "--model", args.model, "--work", args.work], stdout=subprocess.PIPE, text=True)
             for k in range(args.workers)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        results.append(json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:]))
    pure_s = max(r["model_seconds"] for r in results)  # the parallel pure side ends with its slowest process
    n = sum(r["windows"] for r in results)

    # Ray side: the whole job, cold, in a fresh process (embedded Ray start-up included)
    code = (f"import json, time, warnings; warnings.filterwarnings('ignore')\n"
            f"t = time.perf_counter()\n"
            f"from tiler import TileJob\n"
            f"r = TileJob({str(scene)!r}, {args.model!r}, runner='ray', patch_size={args.patch}, "
            f"overlap={args.overlap}, batch_size={args.batch}, workers={args.workers}, threads={args.threads}, "
            f"cpus_per_worker={args.threads}, progress=False).run()\n"
            f"print('RESULT ' + json.dumps({{'seconds': time.perf_counter() - t, 'stats': r.stats.to_dict()}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        print(out.stderr[-3000:])
        return 1
    ray_res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    ray_s = ray_res["seconds"]
    st = ray_res["stats"]
    print(f"scene {args.size}x{args.size}, {n} windows of {args.patch} px, batch {args.batch}, "
          f"{args.workers} worker(s) x {args.threads} thread(s)")
    print(f"pure model time      {pure_s:8.1f} s")
    print(f"ray end-to-end       {ray_s:8.1f} s   stages: {st['seconds']}")
    print(f"ratio ray / pure     {ray_s / pure_s:8.2f}x   (target <= 1.15)")
    print(f"overhead per window  {1000 * (ray_s - pure_s) / n:8.2f} ms  "
          f"({1000 * (st['seconds'].get('predict', ray_s) - pure_s) / n:.2f} ms excluding Ray start-up, plan, merge)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
