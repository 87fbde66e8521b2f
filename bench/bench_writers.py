"""Writing 1 M features in each output format: seconds and peak RSS.

    .venv/bin/python bench/bench_writers.py [--n 1000000] [--formats geojson,gpkg,fgb,parquet]

Each format runs in a fresh process: it builds the same `--n` detections (rotated boxes of 8-40 px, as an OBB
job gives, over a 32768 x 32768 raster in EPSG:32633 at 0.3 m, with class ids and scores), then writes them
with `tiler.writers.write_detections` in the format's default CRS (GeoJSON: WGS84; others: the raster's own)
with provenance columns (`--outlines`: 12-vertex outlines, as segmentation gives); `geojson-gdal` writes the same GeoJSON through GDAL's driver (pyogrio), to compare. Time covers the write call only; peak RSS is the process's VmHWM, reset after the
detections are built, so it is what the write added on top of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def detections(n: int, outlines: bool = False):
    from tiler.detections import Detections

    rng = np.random.default_rng(0)
    if outlines:  # segmentation-like outlines: 12-vertex rings, the general (shapely / GDAL) path
        cx, cy, r = rng.uniform(20, 32748, n), rng.uniform(20, 32748, n), rng.uniform(4, 20, n)
        t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        rings = np.stack([cx[:, None] + r[:, None] * np.cos(t), cy[:, None] + r[:, None] * np.sin(t)], axis=-1)
        return Detections.from_polygons(rings, rng.integers(0, 3, n), rng.uniform(0.25, 1, n).astype(np.float32),
                                        window=0)
    cx, cy = rng.uniform(20, 32748, n), rng.uniform(20, 32748, n)
    w, h, a = rng.uniform(8, 40, n), rng.uniform(8, 40, n), rng.uniform(0, np.pi, n)
    ux, uy = np.cos(a), np.sin(a)
    corners = np.stack([np.column_stack([cx + sx * w / 2 * ux - sy * h / 2 * uy, cy + sx * w / 2 * uy + sy * h / 2 * ux])
                        for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))], axis=1)
    return Detections.from_polygons(corners, rng.integers(0, 3, n), rng.uniform(0.25, 1, n).astype(np.float32),
                                    window=0)


def worker(fmt: str, n: int, out_dir: str, outlines: bool = False) -> None:
    from rasterio.transform import from_origin

    from tiler.georef import Georeferencer
    from tiler.writers import write_detections

    dets = detections(n, outlines)
    dets.window[:] = np.arange(n) // 50
    geo = Georeferencer(from_origin(500000, 5000000, 0.3, 0.3), "EPSG:32633")
    names = {0: "vehicle", 1: "building", 2: "boat"}
    prov = {"source": "/data/scene.tif", "model": "tiler-obb.pt", "model_sha256": "0123456789ab",
            "tiler_version": "0.1.0"}
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: measure what the write adds
    before = _status("VmRSS")
    suffix = {"geojson": ".geojson", "geojson-gdal": ".geojson", "gpkg": ".gpkg", "fgb": ".fgb",
              "parquet": ".parquet"}[fmt]
    path = Path(out_dir) / f"out{suffix}"
    t = time.perf_counter()
    if fmt == "geojson-gdal":  # the same features through GDAL's GeoJSON driver, for comparison
        from pyogrio import write_arrow

        from tiler.writers import FeatureSet, output_crs
        from tiler.writers.arrow import feature_table

        fs = FeatureSet.build(dets, names, geo, output_crs("geojson", "auto", geo.crs), prov)
        write_arrow(feature_table(fs), str(path), driver="GeoJSON", geometry_name="geometry",
                    geometry_type="Polygon", crs="EPSG:4326", layer_options={"COORDINATE_PRECISION": "7"})
    else:
        write_detections(path, dets, names, geo, crs="auto", provenance=prov)
    seconds = time.perf_counter() - t
    hwm = _status("VmHWM")
    print(json.dumps({"format": fmt, "features": n, "seconds": round(seconds, 2), "peak_rss_mb": round(hwm / 1024),
                      "added_mb": round((hwm - before) / 1024),
                      "file_mb": round(path.stat().st_size / 2**20, 1)}))


def _status(key: str) -> int:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(key))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--formats", default="geojson,geojson-gdal,gpkg,fgb,parquet")
    ap.add_argument("--outlines", action="store_true",
                    help="12-vertex outlines (as segmentation gives) instead of rotated boxes")
    ap.add_argument("--worker", nargs=3)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.worker[2], args.outlines)
        return
    rows = []
    for fmt in args.formats.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, __file__, "--worker", fmt, str(args.n), tmp,
                                  *(["--outlines"] if args.outlines else [])],
                                 capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print("\n| format | features | write s | peak RSS MB | of which the write added MB | file MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['features']} | {r['seconds']} | {r['peak_rss_mb']} | {r['added_mb']} "
              f"| {r['file_mb']} |")


if __name__ == "__main__":
    main()
