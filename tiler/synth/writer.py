"""Writing a scene: a tiled GeoTIFF rendered block by block, and its ground truth."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .render import NODATA
from .truth import write_truth


def write_scene(spec, path: str | os.PathLike, truth_path: str | os.PathLike | None = None,
                block: int = 512) -> tuple[Path, Path]:
    """Write a tiled, deflate-compressed, georeferenced GeoTIFF block by block, and its ground truth.

    Ground truth is a GeoJSON FeatureCollection in the raster's CRS (`crs` member, as GDAL writes it), one
    feature per object (see `write_truth`).
    Both files are written to temporary names and renamed, so a failure leaves nothing half-written.
    """
    import rasterio
    from rasterio.windows import Window

    path = Path(path)
    truth_path = Path(truth_path) if truth_path else path.with_suffix(".truth.geojson")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    profile = dict(driver="GTiff", width=spec.width, height=spec.height, count=3, dtype="uint8", crs=spec.crs,
                   transform=spec.transform, tiled=True, blockxsize=block, blockysize=block, compress="deflate",
                   predictor=2, nodata=NODATA if spec.nodata_margin else None, photometric="RGB",
                   BIGTIFF="IF_SAFER")
    try:
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(tmp, "w", **profile) as dst:
            for by in range(0, spec.height, block):
                for bx in range(0, spec.width, block):
                    w, h = min(block, spec.width - bx), min(block, spec.height - by)
                    tile = spec.render(bx, by, w, h)
                    dst.write(np.moveaxis(tile, -1, 0), window=Window(bx, by, w, h))
        write_truth(spec, truth_path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path, truth_path
