"""Window reads: one GDAL read per window against strips of neighbouring windows cut in memory.

    .venv/bin/python bench/bench_reads.py [--size 8192] [--patch 640] [--overlap 0.25] [--reps 3]

Writes a generated `--size`² GeoTIFF (tiler's own writer: 512 px tiles, deflate, pixel-interleaved RGB) and
reads every window of the job's grid in model batches of 16, in the order a job reads them, through
`pipeline.read_patches`: once as per-window reads, once as strips. Two GDAL block caches: the job's own
(`RasterSource.block_cache_bytes`: two rows of windows, so the rows' overlap is decoded once either way) and
a small one (16 MiB, less than one row of windows: every read decodes its blocks again, as on a machine
whose cache is shared by many readers). Times are per megapixel of raster, medians of `--reps` interleaved
rounds; the patches are checked equal both ways.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tiler import pipeline  # noqa: E402
from tiler.config import JobConfig  # noqa: E402
from tiler.raster import RasterSource, gdal_env  # noqa: E402
from tiler.synth import SceneSpec, write_scene  # noqa: E402


def per_window(source, patch, origins, ids, read_size=None):
    pw, ph = patch
    return [source.read(int(x), int(y), pw, ph, window_id=int(w)) for (x, y), w in zip(origins, ids)]


def read_all(tif: str, cfg: JobConfig, strips: bool, cache_mb: int | None) -> tuple[float, int]:
    with RasterSource(tif) as src:
        plan = pipeline.plan(cfg, src)
        patch = tuple(cfg.patch_size)
        read = pipeline.read_patches if strips else per_window
        checksum = 0
        with gdal_env(src, patch[1], cache_mb):
            t = time.perf_counter()
            for start in range(0, len(plan.origins), 16):
                patches = read(src, patch, plan.origins[start:start + 16], plan.window_ids[start:start + 16])
                checksum += int(sum(int(p[::97, ::89].sum()) for p in patches))
            return time.perf_counter() - t, checksum


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--patch", type=int, default=640)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tif, _ = write_scene(SceneSpec(args.size, args.size, seed=5), Path(tmp) / "scene.tif")
        cfg = JobConfig(source=str(tif), model="unused.pt", patch_size=args.patch, overlap=args.overlap)
        mp = args.size * args.size / 1e6
        print(f"{args.size}² scene, {args.patch} px windows, overlap {args.overlap}, batches of 16")
        print("| GDAL cache | per-window reads, ms/MP | strip reads, ms/MP | strips / per-window |")
        print("|---|---|---|---|")
        for label, cache in (("job's (two window rows)", None), ("16 MiB", 16)):
            times: dict[bool, list[float]] = {False: [], True: []}
            sums = set()
            for _ in range(args.reps):
                for strips in (False, True):
                    s, checksum = read_all(str(tif), cfg, strips, cache)
                    times[strips].append(s)
                    sums.add(checksum)
            if len(sums) != 1:
                raise SystemExit("strip reads and per-window reads differ")
            a, b = statistics.median(times[False]) / mp * 1e3, statistics.median(times[True]) / mp * 1e3
            print(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
