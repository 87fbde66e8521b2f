#!/usr/bin/env python3
"""Surveys: one job over many frames against one `tiler predict` per frame; driver memory against the number
of frames; what checkpoints cost.

    .venv/bin/python bench/bench_survey.py [--frames 20] [--size 4096] [--mem-frames 20,80] [--mem-size 2048]

1. Wall time, each from the shell (`tiler predict` processes, so start-up and model loads count as a user
   pays them): FRAMES frames of SIZE x SIZE (generated scenes, seeds 1..FRAMES, side by side on the ground,
   not overlapping) as one job writing one GeoPackage, against FRAMES runs of `tiler predict`, one per frame,
   each writing its own GeoPackage. Target: one job <= 0.7x.
2. Checkpoint overhead: the same one-job survey with and without checkpoints (`--no-checkpoint`), alternated,
   two runs each, medians of the wall time; and, less noisy, the seconds the job itself spent writing
   checkpoints (its report's `checkpoint` stage) as a share of its total. Target <= 3 %.
3. Driver peak memory (the `tiler predict` process's peak RSS, from getrusage in a wrapper that runs only it)
   for surveys of MEM-FRAMES frames of MEM-SIZE x MEM-SIZE (copies of generated scenes placed side by side).
   Target: the larger survey within +10 % of the smaller.

Default runner (in-process on this machine), model models/tiler-obb.pt, patch 320, overlap 0.25.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TILER = str(Path(sys.executable).parent / "tiler")
MODEL = REPO / "models" / "tiler-obb.pt"
ARGS = ["--model", str(MODEL), "--patch-size", "320", "--overlap", "0.25", "--no-progress"]


def make_frames(folder: Path, n: int, size: int, distinct: int | None = None) -> list[Path]:
    """n frames side by side on the ground; the first `distinct` are generated (seeds 1..), the rest copies."""
    import rasterio
    from rasterio.transform import Affine

    from tiler.synth import SceneSpec, write_scene

    folder.mkdir(parents=True, exist_ok=True)
    distinct = min(n, distinct or n)
    paths = []
    for k in range(n):
        path = folder / f"frame_{k:03d}.tif"
        origin = (500_000.0 + k * (size * 0.3 + 300), 5_000_000.0)
        if k < distinct:
            write_scene(SceneSpec(size, size, seed=k + 1, origin=origin), path)
        else:
            shutil.copy(paths[k % distinct], path)
            with rasterio.open(path, "r+") as ds:
                ds.transform = Affine(0.3, 0.0, origin[0], 0.0, -0.3, origin[1])
        paths.append(path)
    return paths


def run(args: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run([TILER, "predict", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return time.perf_counter() - t


def checkpoint_share(report: Path) -> tuple[float, float]:
    """(seconds writing checkpoints, the job's total seconds) from a run report."""
    s = json.loads(report.read_text())["stats"]["seconds"]
    return s.get("checkpoint", 0.0), s["total"]


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS of one `tiler predict` process (a wrapper that starts only it reads its children's peak)."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
            "sys.exit(r.returncode) if r.returncode else "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code, TILER, "predict", *map(str, args)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory run failed: {proc.stderr[-2000:]}")
    return int(proc.stdout.strip()) / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--mem-frames", default="20,80")
    ap.add_argument("--mem-size", type=int, default=2048)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--parts", default="wall,checkpoint,memory", help="which measurements, comma-separated")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    root = Path(tempfile.mkdtemp(prefix="bench_survey_"))
    results: dict = {"frames": a.frames, "size": a.size}
    try:
        t = time.perf_counter()
        frames = make_frames(root / "frames", a.frames, a.size)
        print(f"made {a.frames} frames of {a.size}^2 in {time.perf_counter() - t:.0f} s", flush=True)

        with_ckpt, without, shares = [], [], []
        if "wall" in parts:
            one = run([root / "frames", "--out", root / "survey.gpkg", "--report", root / "r_one.json", *ARGS])
            with_ckpt.append(one)
            shares.append(checkpoint_share(root / "r_one.json"))
            t = time.perf_counter()
            for k, f in enumerate(frames):
                run([f, "--out", root / f"single_{k:03d}.gpkg", *ARGS])
            separate = time.perf_counter() - t
            results.update(one_job_s=round(one, 1), separate_s=round(separate, 1), ratio=round(one / separate, 3))
            print(f"one job {one:.1f} s, {a.frames} separate runs {separate:.1f} s: {one / separate:.3f}x", flush=True)

        if "checkpoint" in parts:
            for k in range(2):
                without.append(run([root / "frames", "--out", root / f"nock{k}.gpkg", "--no-checkpoint", *ARGS]))
                if len(with_ckpt) < 2:
                    with_ckpt.append(run([root / "frames", "--out", root / f"ck{k}.gpkg",
                                          "--report", root / f"r_ck{k}.json", *ARGS]))
                    shares.append(checkpoint_share(root / f"r_ck{k}.json"))
            ck, nock = statistics.median(with_ckpt), statistics.median(without)
            share = sum(c for c, _ in shares) / sum(t for _, t in shares)
            results.update(checkpoint_s=[round(v, 1) for v in with_ckpt],
                           no_checkpoint_s=[round(v, 1) for v in without],
                           checkpoint_overhead=round(ck / nock - 1, 4),
                           checkpoint_stage_s=[round(c, 2) for c, _ in shares], checkpoint_share=round(share, 4))
            print(f"checkpoints on {with_ckpt}, off {without}: wall {100 * (ck / nock - 1):+.1f} %; writing "
                  f"checkpoints {[round(c, 2) for c, _ in shares]} s = {100 * share:.2f} % of the job", flush=True)

        mem = {}
        if "memory" not in parts:
            print(json.dumps(results))
            return 0
        counts = [int(v) for v in a.mem_frames.split(",")]
        make_frames(root / "mem", max(counts), a.mem_size, distinct=min(counts))
        for n in counts:
            folder = root / f"mem{n}"
            folder.mkdir()
            for k in range(n):
                (folder / f"frame_{k:03d}.tif").symlink_to(root / "mem" / f"frame_{k:03d}.tif")
            mem[n] = peak_rss_mb([folder, "--out", root / f"mem{n}.gpkg", *ARGS])
            print(f"{n} frames of {a.mem_size}^2: driver peak RSS {mem[n]:.0f} MB", flush=True)
        results["peak_rss_mb"] = {str(k): round(v) for k, v in mem.items()}
        results["memory_ratio"] = round(mem[counts[-1]] / mem[counts[0]], 3)
        print(json.dumps(results))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
