#!/usr/bin/env python3
"""Time and peak memory of `tiler quicklook` on a huge scene: .venv/bin/python bench/bench_quicklook.py [--size 32768]

Writes a SIZE x SIZE tiled (512 px blocks), deflate-compressed, georeferenced 3-band uint8 GeoTIFF block by
block (a cheap pattern, never the whole image in memory), a copy of it with internal overviews
(`build_overviews`, average), and a GeoJSON of synthetic rotated boxes in lon/lat through tiler's own writer.
Then runs `tiler quicklook` on each raster in a fresh process and prints its wall time and peak RSS: the
`ru_maxrss` of `getrusage(RUSAGE_CHILDREN)`, read in a small wrapper process whose only child is the
quicklook, so each case's figure is its own. Target (issue 9): a 32768 x 32768 scene within a few hundred MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BLOCK = 512


def write_pattern_tif(path: Path, size: int) -> float:
    """A georeferenced size x size RGB GeoTIFF written one 512 x 512 block at a time; returns seconds."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    t = time.perf_counter()
    yy, xx = np.mgrid[0:BLOCK, 0:BLOCK]
    # grain (4 random bits per pixel: deflate gets ~1.4:1, near real imagery, not the 80:1 of a flat pattern)
    grain = np.random.default_rng(0).integers(0, 16, (3, BLOCK, BLOCK), dtype=np.int16)
    texture = grain + (((xx // 64 + yy // 64) % 2) * 24).astype(np.int16)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(0.3, 0.0, 500_000.0, 0.0, -0.3, 5_000_000.0), tiled=True, blockxsize=BLOCK,
                   blockysize=BLOCK, compress="deflate", photometric="RGB", BIGTIFF="IF_SAFER")
    block = np.empty((3, BLOCK, BLOCK), np.uint8)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(path, "w", **profile) as dst:
        for by in range(0, size, BLOCK):
            for bx in range(0, size, BLOCK):
                # a colour ramp across the scene, so the quicklook shows where it is
                base = (bx * 180 // size, by * 180 // size, ((bx + by) // BLOCK) % 7 * 25)
                for b in range(3):
                    block[b] = np.clip(np.roll(texture[b], (bx * 7 + by * 3) % BLOCK, axis=1) + base[b] + 20, 0, 255)
                w, h = min(BLOCK, size - bx), min(BLOCK, size - by)
                dst.write(block[:, :h, :w], window=Window(bx, by, w, h))
    return time.perf_counter() - t


def add_overviews(src: Path, dst: Path) -> float:
    import rasterio
    from rasterio.enums import Resampling

    t = time.perf_counter()
    shutil.copy(src, dst)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", COMPRESS_OVERVIEW="DEFLATE"), rasterio.open(dst, "r+") as ds:
        levels = [2 ** k for k in range(1, 16) if ds.width / 2 ** k >= 256]
        ds.build_overviews(levels, Resampling.average)
    return time.perf_counter() - t


def write_features(path: Path, size: int, n: int, seed: int = 0) -> None:
    """n rotated boxes, 8-60 px, three classes, anywhere in the scene, as tiler writes them (lon/lat)."""
    from rasterio.transform import Affine

    from tiler.detections import Detections
    from tiler.georef import Georeferencer
    from tiler.writers import write_detections

    rng = np.random.default_rng(seed)
    centre = rng.uniform(64, size - 64, (n, 2))
    half = rng.uniform(4, 30, (n, 2))
    angle = rng.uniform(0, np.pi, n)
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    rot = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)],
                   -2)
    polys = centre[:, None, :] + np.einsum("nij,nkj->nki", rot, corners[None] * half[:, None, :])
    dets = Detections.from_polygons(polys, rng.integers(0, 3, n), rng.uniform(0.3, 1.0, n))
    geo = Georeferencer(Affine(0.3, 0.0, 500_000.0, 0.0, -0.3, 5_000_000.0), "EPSG:32633")
    write_detections(path, dets, {0: "vehicle", 1: "building", 2: "boat"}, geo)


def measure(cmd: list[str]) -> dict:
    """Run `cmd` as the only child of a fresh wrapper process: its wall time and peak RSS (RUSAGE_CHILDREN)."""
    code = ("import json, resource, subprocess, sys, time\n"
            "t = time.perf_counter(); rc = subprocess.run(sys.argv[1:], capture_output=True).returncode\n"
            "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t,"
            " 'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    proc = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"quicklook failed: {' '.join(cmd)}")
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32768)
    ap.add_argument("--features", type=int, default=5000)
    ap.add_argument("--max-size", type=int, default=4096)
    ap.add_argument("--workdir", help="keep the files here (default: a temporary folder, removed afterwards)")
    args = ap.parse_args()
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    size = args.size
    try:
        plain, ovr, feats = work / "scene.tif", work / "scene-ovr.tif", work / "scene.geojson"
        if not plain.exists():
            print(f"writing {size}x{size} GeoTIFF: {write_pattern_tif(plain, size):.1f} s, "
                  f"{plain.stat().st_size / 2**20:.0f} MB", flush=True)
        if not ovr.exists():
            print(f"copy + overviews: {add_overviews(plain, ovr):.1f} s, {ovr.stat().st_size / 2**20:.0f} MB",
                  flush=True)
        write_features(feats, size, args.features)
        whole_mb = size * size * 3 / 2**20
        q = size // 4
        cases = [("runtime floor: 512 x 512 window", plain, ["--window", "0,0,512,512"]),
                 ("whole scene, no overviews", plain, []),
                 ("whole scene, overviews", ovr, []),
                 (f"window {2 * q} x {2 * q}, no overviews", plain, ["--window", f"{q},{q},{3 * q},{3 * q}"]),
                 (f"window {2 * q} x {2 * q}, overviews", ovr, ["--window", f"{q},{q},{3 * q},{3 * q}"])]
        print(f"{args.features} features; the whole RGB image would take {whole_mb:.0f} MB in memory")
        print("| case | PNG | wall | peak RSS |\n|---|---|---|---|")
        for name, raster, extra in cases:
            png = work / "ql.png"
            res = measure([sys.executable, "-m", "tiler.cli", "quicklook", str(feats), "--raster", str(raster),
                           "--out", str(png), "--max-size", str(args.max_size), *extra])
            import cv2

            h, w = cv2.imread(str(png)).shape[:2]
            print(f"| {name} | {w} x {h} | {res['seconds']:.1f} s | {res['peak_rss_mb']:.0f} MB |", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
