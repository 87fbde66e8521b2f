"""In-process executor: one model, loaded once for the whole job; batches are read ahead in threads while the
model predicts the current one (GDAL releases the GIL while decoding), across frame boundaries too.

On a CPU one reader is enough (the model needs the cores). A GPU model takes batches faster than one thread
decodes them (an H100 ran yolov8n-obb at 640 px ~10x faster than one thread read deflate GeoTIFF windows), so
there several threads read, each through its own handle of the frame (a GDAL dataset is not thread-safe)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from ..config import JobConfig
from ..errors import RasterError
from ..pipeline import BatchResult, BatchSpec, has_data, infer_patches, make_predictor, read_patches
from ..raster import gdal_env
from ..result import JobStats


class LocalExecutor:
    """Turns `BatchSpec`s into `BatchResult`s in this process (see `survey.run_job` for the wiring)."""

    def __init__(self, cfg: JobConfig, frames: list, stats: JobStats):
        self.cfg, self.stats = cfg, stats
        self.sources = {f.index: f.source for f in frames}
        t = time.perf_counter()
        self.predictor = make_predictor(cfg)
        stats.backend, stats.workers = self.predictor.backend, 1
        stats.add_time("load_model", time.perf_counter() - t)
        self.names, self.task = self.predictor.names, self.predictor.task
        self.model_threads = self.predictor.threads

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        for source in self.sources.values():
            source.close()

    def run(self, specs: list[BatchSpec], failed: Callable[[int], bool]) -> Iterator[BatchResult]:
        """Results in the order of `specs`. A frame that `failed` says has failed is not read any further."""
        if not specs:
            return
        cfg = self.cfg
        threads = read_threads(cfg.read_threads, self.predictor.device)
        self.stats.read_threads = threads
        local = threading.local()  # each reader's handle of the frame it reads: one frame open per reader
        handles, lock = set(), threading.Lock()  # the open ones, closed at the end

        def read(spec: BatchSpec):
            if failed(spec.frame):
                return None, 0.0, None
            if getattr(local, "frame", None) != spec.frame:  # surveys have thousands of frames: close the last
                with lock:
                    if getattr(local, "source", None) is not None:
                        local.source.close()
                        handles.discard(local.source)
                    local.frame, local.source = spec.frame, self.sources[spec.frame].reopened()
                    handles.add(local.source)
            t0 = time.perf_counter()
            try:
                patches = read_patches(local.source, spec.patch_size, spec.origins, spec.window_ids, spec.read_size)
            except RasterError as exc:  # a corrupt window, or a frame gone since it was planned
                return None, time.perf_counter() - t0, exc
            return patches, time.perf_counter() - t0, None

        patch_h = max(s.patch_size[1] for s in specs)
        with gdal_env(list(self.sources.values()), patch_h, cfg.gdal_cache_mb):
            pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tiler-read")
            try:
                pending = deque(pool.submit(read, spec) for spec in specs[:threads])  # `threads` batches ahead
                for k, spec in enumerate(specs):
                    patches, read_s, error = pending.popleft().result()
                    if k + threads < len(specs):
                        pending.append(pool.submit(read, specs[k + threads]))
                    self.stats.add_time("read", read_s)
                    if patches is None:
                        if error is not None:  # (else: the frame had failed already, and it was not read)
                            yield BatchResult(spec.frame, spec.start, spec.window_ids, None, seconds=read_s,
                                              error=error)
                        continue
                    t = time.perf_counter()
                    source = self.sources[spec.frame]
                    dets = infer_patches(self.predictor, spec.patch_size, (source.width, source.height), patches,
                                         spec.origins, spec.window_ids)
                    predict_s = time.perf_counter() - t
                    self.stats.add_time("predict", predict_s)
                    yield BatchResult(spec.frame, spec.start, spec.window_ids, dets,
                                      empty=sum(1 for p in patches if not has_data(p)), seconds=read_s + predict_s)
            finally:  # also when the consumer stops early: reads not started are dropped, the readers joined
                pool.shutdown(wait=True, cancel_futures=True)
                for source in handles:
                    source.close()


def read_threads(asked: int | None, device: str) -> int:
    """Threads reading windows: as asked, else 1 for a CPU model and half the cores (at most 8) for a GPU one."""
    if asked:
        return asked
    return min(8, max(1, (os.cpu_count() or 1) // 2)) if device.startswith("cuda") else 1
