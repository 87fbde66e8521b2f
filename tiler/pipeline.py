"""The stages every runner composes: plan windows, infer a batch of windows, merge.

These know nothing of Ray or threads. The in-process runner calls them in a loop; the Ray runner calls the
same objects inside tasks and actors, which is why both produce identical results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .config import JobConfig
from .detections import Detections, to_global
from .grid import WindowGrid, plan_windows, select_windows_with_data
from .merge import nms
from .model import Predictor
from .raster import RasterSource, gdal_env
from .result import JobResult, JobStats


@dataclass(frozen=True)
class WindowPlan:
    grid: WindowGrid
    origins: np.ndarray  # (n_run, 2) int64 x0, y0 of windows to run, row-major
    window_ids: np.ndarray  # (n_run,) int64 ids in the full grid
    skipped: int  # windows holding only nodata

    @property
    def planned(self) -> int:
        return len(self.grid)


def open_source(cfg: JobConfig) -> RasterSource:
    return RasterSource(cfg.source, bands=cfg.bands)


def plan(cfg: JobConfig, source: RasterSource) -> WindowPlan:
    """All windows of the grid, minus those that are entirely nodata (judged on a decimated mask)."""
    grid = plan_windows(source.width, source.height, cfg.patch_size, cfg.overlap)
    origins = grid.origins()
    ids = np.arange(len(grid), dtype=np.int64)
    if source.has_mask:
        mask, sx, sy = source.coarse_valid_mask()
        keep = select_windows_with_data(grid, mask, sx, sy)
        origins, ids = origins[keep], ids[keep]
    return WindowPlan(grid, origins, ids, len(grid) - len(ids))


def start_job(cfg: JobConfig, stats: JobStats) -> tuple[RasterSource, WindowPlan]:
    """Open the source and plan its windows (the driver's share of every runner), recording both in stats."""
    t = time.perf_counter()
    source = open_source(cfg)
    with gdal_env(source, cfg.patch_size[1], cfg.gdal_cache_mb):
        window_plan = plan(cfg, source)
    stats.add_time("plan", time.perf_counter() - t)
    stats.windows_planned, stats.windows_skipped = window_plan.planned, window_plan.skipped
    return source, window_plan


def make_predictor(cfg: JobConfig) -> Predictor:
    return Predictor(cfg.model, conf=cfg.conf, iou=cfg.iou, imgsz=cfg.model_imgsz, classes=cfg.classes,
                     max_det=cfg.max_det, device=cfg.device, threads=cfg.threads, half=cfg.half)


def read_patches(source: RasterSource, cfg: JobConfig, origins: np.ndarray, window_ids: np.ndarray
                 ) -> list[np.ndarray]:
    pw, ph = cfg.patch_size
    return [source.read(int(x), int(y), pw, ph, window_id=int(w)) for (x, y), w in zip(origins, window_ids)]


def has_data(patch: np.ndarray) -> bool:
    return bool(patch.any())


def infer_patches(predictor: Predictor, cfg: JobConfig, raster_size: tuple[int, int], patches: list[np.ndarray],
                  origins: np.ndarray, window_ids: np.ndarray) -> Detections:
    """Predict a batch of patches and return detections in global pixel coordinates.

    Patches that read back entirely empty (nodata the coarse mask could not rule out) skip the model."""
    live = [k for k, p in enumerate(patches) if has_data(p)]
    if not live:
        return Detections.empty()
    local = predictor.predict([patches[k] for k in live])
    return to_global(local, np.asarray(origins)[live], np.asarray(window_ids)[live], cfg.patch_size, raster_size)


def merge(cfg: JobConfig, dets: Detections) -> Detections:
    """Global NMS on the real polygons; detections cut by inner window edges rank last."""
    if not len(dets):
        return dets
    keep = nms(dets.geometries(), dets.score, dets.class_id, threshold=cfg.nms_threshold,
               metric=cfg.match_metric, class_agnostic=cfg.class_agnostic, sorter=cfg.sorter,
               demote=dets.on_seam)
    merged = dets.take(keep)
    return merged.take(merged.sort_key())


def finish(cfg: JobConfig, parts: list[Detections], source: RasterSource, names: dict[int, str], task: str,
           stats: JobStats) -> JobResult:
    """Merge every batch's detections into the job's result. Batches are put in window order first:
    runners may receive them in any order, and the merge must see the same input whatever the runner."""
    raw = Detections.concat(parts)
    raw = raw.take(np.argsort(raw.window, kind="stable"))
    t = time.perf_counter()
    merged = merge(cfg, raw)
    stats.add_time("merge", time.perf_counter() - t)
    stats.raw_detections, stats.kept_detections = len(raw), len(merged)
    georef = source.georeferenced
    return JobResult(merged, names, task, source.transform if georef else None, source.crs if georef else None,
                     stats, cfg)
