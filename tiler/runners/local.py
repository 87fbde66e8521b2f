"""In-process executor: one model, loaded once for the whole job, fed batches in order, across frame boundaries.

A CPU model that uses every core (the default) has no batch read ahead of it: each batch is read when the model
needs it, by as many threads as the model has, while the model waits, since a reader beside it would take a core
from its parallel loops (`reading`). A CPU model that leaves a core free gets one reader ahead of it. A GPU model
takes batches faster than one thread decodes them (an H200 ran yolov8n-obb at 640 px ~13x faster than one thread
read deflate GeoTIFF windows), so there several threads read ahead (`BatchReader`; GDAL releases the GIL while
decoding), each through its own handle of the frame (a GDAL dataset is not thread-safe), all of them on each batch
in turn: each decodes its share of the blocks the batch needs that no earlier batch decoded (`io.blocks`: each
block once per job, shared), then cuts its run of the batch's windows straight into the batch buffer the model
takes (pinned memory on a GPU: one asynchronous copy to the device, no stacking on the way)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..config import JobConfig
from ..errors import RasterError
from ..io.blocks import BatchCells, FrameBlocks
from ..pipeline import BatchResult, BatchSpec, infer_patches, live_patches, make_predictor, read_patches
from ..raster import gdal_env
from ..result import JobStats


CELLS_GDAL_CACHE_MB = 16


class LocalExecutor:
    """Turns `BatchSpec`s into `BatchResult`s in this process (see `survey.run_job` for the wiring)."""

    def __init__(self, cfg: JobConfig, frames: list, stats: JobStats):
        self.cfg, self.stats = cfg, stats
        self.sources = {f.index: f.source for f in frames}
        t = time.perf_counter()
        self.predictor = make_predictor(cfg)
        stats.backend, stats.precision, stats.workers = self.predictor.backend, self.predictor.precision, 1
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
        threads, ahead = reading(cfg.read_threads, self.predictor.device, self.model_threads)
        self.stats.read_threads, self.stats.read_ahead = threads, ahead
        reader = BatchReader(self.sources, threads, self.predictor.batch_buffer, cfg.batch_size, cfg.gdal_cache_mb,
                             ahead)
        for got in reader.batches(specs, failed):
            spec = got.spec
            self.stats.add_time("read", got.seconds)
            if got.live is None:
                reader.give_back(got.buffer)
                if got.error is not None:  # (else: the frame had failed already, and it was not read)
                    yield BatchResult(spec.frame, spec.start, spec.window_ids, None, seconds=got.seconds,
                                      error=got.error)
                continue
            t = time.perf_counter()
            source = self.sources[spec.frame]
            dets = infer_patches(self.predictor, spec.patch_size, (source.width, source.height),
                                 got.buffer[:len(got.live)], spec.origins, spec.window_ids, got.live)
            reader.give_back(got.buffer)  # the model is done with it: its results are on the host
            predict_s = time.perf_counter() - t
            self.stats.add_time("predict", predict_s)
            yield BatchResult(spec.frame, spec.start, spec.window_ids, dets, empty=int((~got.live).sum()),
                              seconds=got.seconds + predict_s)


@dataclass
class ReadBatch:
    """A batch as the readers leave it: its patches are `buffer[:n]`; `live` says which hold data (None when it
    was not read: its frame had failed, or `error`, the WindowReadError naming a window, or the frame gone)."""

    spec: BatchSpec
    buffer: np.ndarray
    live: np.ndarray | None
    seconds: float  # the read took as long as its slowest reader
    error: RasterError | None = None


class BatchReader:
    """Reads a job's batches, in order, `ahead` of the one its caller is working on (0: each when the caller asks
    for it, while it waits), with `threads` readers (each through its own handle of the frame it reads: a GDAL
    dataset is not thread-safe), all of them on one batch at a time: each decodes its share of the cells the batch
    needs that no earlier batch decoded (`io.blocks`), then cuts its run of the batch's windows into the batch
    buffer (`batch_buffer(n, h, w)`, e.g. the model's pinned memory; a job allocates one per batch in flight and
    reuses them)."""

    def __init__(self, sources: dict, threads: int, batch_buffer: Callable[[int, int, int], np.ndarray],
                 batch_size: int, gdal_cache_mb: int | None = None, ahead: int | None = None):
        self.sources, self.threads, self.gdal_cache_mb = sources, threads, gdal_cache_mb
        self.buffers = _BatchBuffers(batch_buffer, batch_size)
        self.ahead = (2 if threads > 1 else 1) if ahead is None else ahead  # batches read while the caller works

    def give_back(self, buffer: np.ndarray) -> None:
        """The caller is done with a batch's buffer."""
        self.buffers.give_back(buffer)

    def batches(self, specs: list[BatchSpec], failed: Callable[[int], bool] = lambda frame: False
                ) -> Iterator[ReadBatch]:
        if not specs:
            return
        local = threading.local()  # each reader's handle of the frame it reads: one frame open per reader
        handles, lock = set(), threading.Lock()  # the open ones, closed at the end
        blocks = self.blocks = _FrameBlocksOf(specs, self.sources)  # (kept for a look at the cells held)

        def read(spec: BatchSpec, out, lo: int, hi: int, cells: BatchCells | None = None, runs=()):
            """Windows lo:hi of `spec` into out[lo:hi] (from the frame's shared cells when given, decoding `runs`
            of them first): (which hold data, seconds, error); (None, 0, None) for a frame that has failed."""
            if failed(spec.frame):
                if cells is not None:
                    blocks[spec.frame].give_up(runs, cells.cells)
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
                if cells is None:
                    read_patches(local.source, spec.patch_size, spec.origins[lo:hi], spec.window_ids[lo:hi],
                                 spec.read_size, out=out[lo:hi])
                else:
                    frame = blocks[spec.frame]
                    frame.decode(local.source, runs, cells.cells)
                    frame.cut(local.source, spec.origins[lo:hi], spec.window_ids[lo:hi], cells.cells, out[lo:hi])
            except RasterError as exc:  # a corrupt window, or a frame gone since it was planned
                return None, time.perf_counter() - t0, exc
            return live_patches(out[lo:hi]), time.perf_counter() - t0, None

        def submit(spec: BatchSpec) -> tuple[BatchSpec, np.ndarray, list]:
            n = len(spec.origins)
            buffer = self.buffers.take(spec)
            parts = _chunks(n, self.threads)
            if spec.read_size is not None:  # decimated reads average per window: from the raster, one by one
                return spec, buffer, [pool.submit(read, spec, buffer[:n], lo, hi) for lo, hi in parts]
            cells = blocks.claim(spec, parts)
            return spec, buffer, [pool.submit(read, spec, buffer[:n], lo, hi, cells, runs)
                                  for (lo, hi), runs in zip(parts, cells.decode)]

        patch_h = max(s.patch_size[1] for s in specs)
        # blocks read for cells are decoded once and kept as cells: GDAL's own cache then needs to hold only
        # what one read touches (a larger one would hold a second copy of the cells); decimated reads use it more
        cache_mb = self.gdal_cache_mb or (CELLS_GDAL_CACHE_MB if all(s.read_size is None for s in specs) else None)
        with gdal_env(list(self.sources.values()), patch_h, cache_mb):
            pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="tiler-read")
            try:
                pending = deque(submit(spec) for spec in specs[:self.ahead])
                for k in range(len(specs)):
                    if not pending:  # read on demand (ahead 0): this batch, now
                        pending.append(submit(specs[k]))
                    spec, buffer, futures = pending.popleft()
                    parts = [f.result() for f in futures]
                    blocks.release(spec)
                    if self.ahead and k + self.ahead < len(specs):
                        pending.append(submit(specs[k + self.ahead]))
                    read_s = max(p[1] for p in parts)
                    error = next((p[2] for p in parts if p[2] is not None), None)
                    live = None if error is not None or any(p[0] is None for p in parts) else \
                        np.concatenate([p[0] for p in parts])
                    yield ReadBatch(spec, buffer, live, read_s, error)
            finally:  # also when the consumer stops early: reads not started are dropped, the readers joined
                blocks.abandon()  # (a reader waiting for a cell that a dropped read would have decoded goes on)
                pool.shutdown(wait=True, cancel_futures=True)
                for source in handles:
                    source.close()


class _FrameBlocksOf:
    """The job's frames' shared cells (`FrameBlocks`), each made when its frame's first batch is claimed, for the
    batches of that frame read from the raster at full resolution, in the job's order."""

    def __init__(self, specs: list[BatchSpec], sources: dict):
        self.sources = sources
        self.batches: dict[int, list[BatchSpec]] = {}
        for spec in specs:
            if spec.read_size is None:
                self.batches.setdefault(spec.frame, []).append(spec)
        self.index = {(s.frame, s.start): k for batches in self.batches.values() for k, s in enumerate(batches)}
        self.frames: dict[int, FrameBlocks] = {}

    def __getitem__(self, frame: int) -> FrameBlocks:
        return self.frames[frame]

    def claim(self, spec: BatchSpec, parts: list[tuple[int, int]]) -> BatchCells:
        frame = self.frames.get(spec.frame)
        if frame is None:
            src, batches = self.sources[spec.frame], self.batches[spec.frame]
            frame = self.frames[spec.frame] = FrameBlocks(src.width, src.height, (src.block_width, src.block_height),
                                                          spec.patch_size, [s.origins for s in batches])
        return frame.claim(self.index[spec.frame, spec.start], parts, spec.origins)

    def release(self, spec: BatchSpec) -> None:
        if spec.read_size is None:
            k = self.index[spec.frame, spec.start]
            self.frames[spec.frame].release(k)
            if k == len(self.batches[spec.frame]) - 1:  # the frame's last batch (a survey has thousands)
                del self.frames[spec.frame]

    def abandon(self) -> None:
        for frame in self.frames.values():
            frame.abandon()


class _BatchBuffers:
    """Batch arrays the readers fill and the model takes (`Predictor.batch_buffer`: pinned host memory for a
    GPU), reused: a job allocates only as many as batches are in flight, per patch shape."""

    def __init__(self, batch_buffer: Callable[[int, int, int], np.ndarray], batch_size: int):
        self.batch_buffer, self.batch_size = batch_buffer, batch_size
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
        return self.batch_buffer(max(n, self.batch_size), h, w)

    def give_back(self, buffer: np.ndarray) -> None:
        self.free.setdefault(buffer.shape[1:3], []).append(buffer)


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges splitting n windows into up to `parts` runs of about equal length (one per reader, so a
    batch is read by all the readers at once and the model waits for one batch's read, not one reader's)."""
    edges = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def reading(asked: int | None, device: str, model_threads: int | None = None) -> tuple[int, int]:
    """(threads reading windows, batches read ahead of the model): `asked` threads ahead of it; else for a GPU
    model three quarters of the cores (at most 16), two batches ahead; for a CPU model that leaves a core free, one
    thread, one batch ahead; for a CPU model that uses every core (the default), as many threads as the model has,
    each batch read when the model needs it, while it waits.

    On a 16-core H200 machine (bench/README.md, "One GPU") reads scaled to 12 threads (1372 windows/s of 640 px,
    1064 with 8, 1432 with 16); the other cores run the model's host side. On a CPU, a reader beside a model that
    uses every core takes a core from it in the middle of its parallel loops, and the model's other threads wait
    for it: the 8192 x 8192 generated scene took 9.16 s with one reader ahead, 8.39 s with each batch read on
    demand by the model's two threads (medians of three; bench/README.md, "Job over forward on a CPU")."""
    if asked:
        return asked, 2 if asked > 1 else 1
    if device.startswith("cuda"):
        return min(16, max(1, (os.cpu_count() or 1) * 3 // 4)), 2
    cores = os.cpu_count() or 1
    if model_threads and model_threads < cores:
        return 1, 1
    return min(16, max(1, model_threads or cores)), 0
