"""In-process runner: read the next batch in a thread while the model predicts the current one."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from tqdm import tqdm

from ..config import JobConfig
from ..detections import Detections
from ..pipeline import finish, has_data, infer_patches, make_predictor, read_patches, start_job
from ..raster import gdal_env
from ..result import JobResult, JobStats


def run_local(cfg: JobConfig, on_progress: Callable[[int, int], None] | None = None) -> JobResult:
    """Run the job in this process. `on_progress(windows_done, windows_total)` is called after each batch."""
    t_start = time.perf_counter()
    stats = JobStats(runner="local")
    source, window_plan = start_job(cfg, stats)
    with gdal_env(source, cfg.patch_size[1], cfg.gdal_cache_mb):
        t = time.perf_counter()
        predictor = make_predictor(cfg)
        stats.backend, stats.workers = predictor.backend, 1
        stats.add_time("load_model", time.perf_counter() - t)
        n = len(window_plan.window_ids)
        starts = list(range(0, n, cfg.batch_size))
        parts: list[Detections] = []
        raster_size = (source.width, source.height)

        def read(start: int):
            t0 = time.perf_counter()
            sl = slice(start, start + cfg.batch_size)
            patches = read_patches(source, cfg, window_plan.origins[sl], window_plan.window_ids[sl])
            return sl, patches, time.perf_counter() - t0

        done = 0
        bar = tqdm(total=n, unit="win", desc="tiler", file=sys.stderr, disable=not cfg.progress, leave=False)
        # GDAL releases the GIL while decoding, so the next read overlaps this batch's forward pass
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(read, starts[0]) if starts else None
            for k in range(len(starts)):
                sl, patches, read_s = pending.result()
                pending = pool.submit(read, starts[k + 1]) if k + 1 < len(starts) else None
                stats.add_time("read", read_s)
                t = time.perf_counter()
                dets = infer_patches(predictor, cfg, raster_size, patches, window_plan.origins[sl],
                                     window_plan.window_ids[sl])
                stats.add_time("predict", time.perf_counter() - t)
                stats.windows_empty += sum(1 for p in patches if not has_data(p))
                parts.append(dets)
                bar.update(len(patches))
                done += len(patches)
                if on_progress is not None:
                    on_progress(done, n)
        bar.close()
        stats.windows_run = n - stats.windows_empty
        result = finish(cfg, parts, source, window_plan.grid, predictor.names, predictor.task, stats)
        source.close()
    stats.add_time("total", time.perf_counter() - t_start)
    return result
