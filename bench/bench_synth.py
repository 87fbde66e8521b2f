#!/usr/bin/env python3
"""Time and peak memory of writing a synthetic scene: .venv/bin/python bench/bench_synth.py [--size 8192]

Runs the generator in a fresh process (so peak RSS is its own) and prints wall time, peak RSS, and the
size of the whole image in memory for comparison (the generator never holds it: it writes block by block).
Targets (issue 2): < 60 s and < 500 MB for 8192 x 8192.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scene.tif"
        code = ("import resource, json, time, sys; sys.path.insert(0, %r)\n"
                "from tiler.synth import SceneSpec, write_scene\n"
                "t = time.perf_counter()\n"
                "write_scene(SceneSpec(%d, %d, seed=%d, nodata_margin=256), %r)\n"
                "print(json.dumps({'seconds': time.perf_counter() - t,"
                " 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
                % (str(REPO), args.size, args.size, args.seed, str(out)))
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        full_mb = args.size * args.size * 3 / 2**20
        n_obj = sum(1 for _ in open(out.with_suffix(".truth.geojson"))) - 2
        print(f"scene {args.size}x{args.size}: write {res['seconds']:.1f} s (process {wall:.1f} s), "
              f"peak RSS {res['peak_rss_mb']:.0f} MB (whole RGB image would be {full_mb:.0f} MB), "
              f"file {out.stat().st_size / 2**20:.0f} MB, {n_obj} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
