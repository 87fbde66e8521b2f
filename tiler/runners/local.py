"""In-process executor: one model, loaded once for the whole job; batches are read ahead in threads while the
model predicts the current one (GDAL releases the GIL while decoding), across frame boundaries too.

On a CPU one reader is enough (the model needs the cores). A GPU model takes batches faster than one thread
decodes them (an H200 ran yolov8n-obb at 640 px ~13x faster than one thread read deflate GeoTIFF windows), so
there several threads read, each through its own handle of the frame (a GDAL dataset is not thread-safe), all of
them on each batch in turn (a run of its windows each), straight into the batch buffer the model takes (pinned
memory on a GPU: one asynchronous copy to the device, no stacking on the way)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from ..config import JobConfig
from ..errors import RasterError
from ..pipeline import BatchResult, BatchSpec, infer_patches, live_patches, make_predictor, read_patches
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
        buffers = _BatchBuffers(self.predictor, cfg.batch_size)

        def read(spec: BatchSpec, out, lo: int, hi: int):
            """Windows lo:hi of `spec` into out[lo:hi]: (which hold data, seconds, error); (None, 0, None)
            for a frame that has failed."""
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
                read_patches(local.source, spec.patch_size, spec.origins[lo:hi], spec.window_ids[lo:hi],
                             spec.read_size, out=out[lo:hi])
            except RasterError as exc:  # a corrupt window, or a frame gone since it was planned
                return None, time.perf_counter() - t0, exc
            return live_patches(out[lo:hi]), time.perf_counter() - t0, None

        def submit(spec: BatchSpec) -> tuple[BatchSpec, np.ndarray, list]:
            n = len(spec.origins)
            buffer = buffers.take(spec)
            return spec, buffer, [pool.submit(read, spec, buffer[:n], lo, hi) for lo, hi in _chunks(n, threads)]

        patch_h = max(s.patch_size[1] for s in specs)
        ahead = 2 if threads > 1 else 1  # batches being read while the model predicts one
        with gdal_env(list(self.sources.values()), patch_h, cfg.gdal_cache_mb):
            pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tiler-read")
            try:
                pending = deque(submit(spec) for spec in specs[:ahead])
                for k in range(len(specs)):
                    spec, buffer, futures = pending.popleft()
                    parts = [f.result() for f in futures]
                    if k + ahead < len(specs):
                        pending.append(submit(specs[k + ahead]))
                    # the readers share a batch and run at once: its read took as long as the slowest one
                    read_s = max(p[1] for p in parts)
                    self.stats.add_time("read", read_s)
                    error = next((p[2] for p in parts if p[2] is not None), None)
                    if error is not None or any(p[0] is None for p in parts):
                        buffers.give_back(buffer)
                        if error is not None:  # (else: the frame had failed already, and it was not read)
                            yield BatchResult(spec.frame, spec.start, spec.window_ids, None, seconds=read_s,
                                              error=error)
                        continue
                    live = np.concatenate([p[0] for p in parts])
                    t = time.perf_counter()
                    source = self.sources[spec.frame]
                    dets = infer_patches(self.predictor, spec.patch_size, (source.width, source.height),
                                         buffer[:len(live)], spec.origins, spec.window_ids, live)
                    buffers.give_back(buffer)  # the model is done with it: its results are on the host
                    predict_s = time.perf_counter() - t
                    self.stats.add_time("predict", predict_s)
                    yield BatchResult(spec.frame, spec.start, spec.window_ids, dets, empty=int((~live).sum()),
                                      seconds=read_s + predict_s)
            finally:  # also when the consumer stops early: reads not started are dropped, the readers joined
                pool.shutdown(wait=True, cancel_futures=True)
                for source in handles:
                    source.close()


class _BatchBuffers:
    """Batch arrays the readers fill and the model takes (`Predictor.batch_buffer`: pinned host memory for a
    GPU), reused: a job allocates only as many as batches are in flight, per patch shape."""

    def __init__(self, predictor, batch_size: int):
        self.predictor, self.batch_size = predictor, batch_size
        self.free: dict[tuple[int, int], list[np.ndarray]] = {}

    def take(self, spec: BatchSpec) -> np.ndarray:
        """A free buffer with room for `spec`'s windows at its read size (its first n rows are the batch)."""
        w, h = spec.read_size or spec.patch_size
        n = len(spec.origins)
        free = self.free.setdefault((h, w), [])
        while free:
            buffer = free.pop()
            if len(buffer) >= n:
                return buffer
        return self.predictor.batch_buffer(max(n, self.batch_size), h, w)

    def give_back(self, buffer: np.ndarray) -> None:
        self.free.setdefault(buffer.shape[1:3], []).append(buffer)


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges splitting n windows into up to `parts` runs of about equal length (one per reader, so a
    batch is read by all the readers at once and the model waits for one batch's read, not one reader's)."""
    edges = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def read_threads(asked: int | None, device: str) -> int:
    """Threads reading windows: as asked, else 1 for a CPU model and three quarters of the cores (at most 16) for a
    GPU one. On a 16-core H200 machine (bench/README.md, "One GPU") reads scaled to 12 threads (1372 windows/s of
    640 px, 1064 with 8, 1432 with 16); the other cores run the model's host side."""
    if asked:
        return asked
    return min(16, max(1, (os.cpu_count() or 1) * 3 // 4)) if device.startswith("cuda") else 1
