#!/usr/bin/env python3
"""Segmentation next to OBB on one big generated scene: wall time and peak RSS of the whole job.

    .venv/bin/python bench/bench_segment.py [--size 16384] [--repeat 1] [--large-objects]

Writes the scene once, then runs `tiler predict` for the project's OBB model and its segment model
alternately (obb, segment, obb, segment, ...), each in a fresh process (in-process runner, 320 px patches,
overlap 0.25, default merge for the task), and prints each run's wall time, the job's own stage times, and the
process's peak RSS (ru_maxrss). Target (issue 8): segmentation peak RSS <= 1.2x the OBB job's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUN = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
t = time.perf_counter()
from tiler import TileJob
r = TileJob({tif!r}, {model!r}, patch_size=320, overlap=0.25, runner="local", progress=False, out={out!r}).run()
print("RESULT " + json.dumps({{"seconds": time.perf_counter() - t, "objects": len(r), "stages": r.stats.seconds,
      "merge": r.config.merge_method(r.task), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run(tif: Path, task: str, out: Path) -> dict:
    code = RUN.format(repo=str(REPO), tif=str(tif), model=str(REPO / "models" / f"tiler-{task}.pt"), out=str(out))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    res["process_seconds"] = time.perf_counter() - t
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--large-objects", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from tiler.synth import SceneSpec, write_scene

    with tempfile.TemporaryDirectory() as tmp:
        tif = Path(tmp) / "scene.tif"
        t = time.perf_counter()
        write_scene(SceneSpec(args.size, args.size, seed=args.seed, large_objects=args.large_objects), tif)
        print(f"scene {args.size} x {args.size} written in {time.perf_counter() - t:.0f} s", flush=True)
        runs: dict[str, list[dict]] = {"obb": [], "segment": []}
        for k in range(args.repeat):
            for task in runs:
                res = run(tif, task, Path(tmp) / f"{task}.geojson")
                runs[task].append(res)
                stages = ", ".join(f"{s} {v:.1f}" for s, v in res["stages"].items())
                print(f"{task:8s} run {k + 1}: {res['seconds']:.1f} s job, {res['process_seconds']:.1f} s process, "
                      f"peak RSS {res['peak_rss_mb']:.0f} MB, {res['objects']} objects, merge {res['merge']} "
                      f"({stages})", flush=True)
        med = {t: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_rss_mb")} for t, rs in runs.items()}
        print(f"segment / obb: wall {med['segment']['seconds'] / med['obb']['seconds']:.2f}x, "
              f"peak RSS {med['segment']['peak_rss_mb'] / med['obb']['peak_rss_mb']:.2f}x (target <= 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
