"""A survey from one scene: overlapping georeferenced frames cut from it (the scene's truth is theirs), as
aerial strips with forward and side overlap are; optionally one frame reprojected to another CRS."""

from __future__ import annotations

import os
from pathlib import Path


def frame_origins(width: int, height: int, frame: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left pixels of frames of `frame` px overlapping by `overlap` (fraction) that cover the scene."""
    step = max(1, int(round(frame * (1 - overlap))))

    def starts(size: int) -> list[int]:
        s = list(range(0, max(size - frame, 0) + 1, step))
        if s[-1] + frame < size:
            s.append(size - frame)
        return s

    return [(x, y) for y in starts(height) for x in starts(width)]


def write_frames(scene: str | os.PathLike, out_dir: str | os.PathLike, frame: int, overlap: float,
                 reproject: dict[int, str] | None = None) -> list[Path]:
    """Cut `scene` into overlapping frames (tiled GeoTIFFs named frame_000.tif ...), read window by window.
    `reproject` maps a frame number to a CRS (e.g. the neighbouring UTM zone) the frame is warped into."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform
    from rasterio.warp import reproject as warp
    from rasterio.windows import Window

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with rasterio.open(scene) as src:
        for k, (x, y) in enumerate(frame_origins(src.width, src.height, frame, overlap)):
            win = Window(x, y, min(frame, src.width - x), min(frame, src.height - y))
            data = src.read(window=win)
            profile = dict(driver="GTiff", width=int(win.width), height=int(win.height), count=src.count,
                           dtype=src.dtypes[0], crs=src.crs, transform=src.window_transform(win), tiled=True,
                           blockxsize=256, blockysize=256, compress="deflate", nodata=src.nodata)
            path = out_dir / f"frame_{k:03d}.tif"
            crs = (reproject or {}).get(k)
            if crs is not None:
                t, w, h = calculate_default_transform(src.crs, crs, profile["width"], profile["height"],
                                                      *rasterio.windows.bounds(win, src.transform))
                profile.update(crs=crs, transform=t, width=w, height=h, nodata=0)
                with rasterio.open(path, "w", **profile) as dst:
                    for b in range(src.count):
                        warp(data[b], rasterio.band(dst, b + 1), src_transform=src.window_transform(win),
                             src_crs=src.crs, dst_transform=t, dst_crs=crs, resampling=Resampling.bilinear,
                             src_nodata=src.nodata, dst_nodata=0)
            else:
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(data)
            paths.append(path)
    return paths

