"""In-process executor: one model, loaded once for the whole job; the next batch is read in a thread while the
model predicts the current one (GDAL releases the GIL while decoding), across frame boundaries too."""

from __future__ import annotations

import time
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
        cfg = self.cfg
        open_frame = [None]

        def read(spec: BatchSpec):
            if failed(spec.frame):
                return None, 0.0, None
            source = self.sources[spec.frame]
            if open_frame[0] not in (None, spec.frame):  # one frame open at a time: surveys have thousands
                self.sources[open_frame[0]].close()
            open_frame[0] = spec.frame
            t0 = time.perf_counter()
            try:
                patches = read_patches(source, spec.patch_size, spec.origins, spec.window_ids, spec.read_size)
            except RasterError as exc:  # a corrupt window, or a frame gone since it was planned
                return None, time.perf_counter() - t0, exc
            return patches, time.perf_counter() - t0, None

        if not specs:
            return
        patch_h = max(s.patch_size[1] for s in specs)
        with gdal_env(list(self.sources.values()), patch_h, cfg.gdal_cache_mb), \
                ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(read, specs[0])
            for k, spec in enumerate(specs):
                patches, read_s, error = pending.result()
                pending = pool.submit(read, specs[k + 1]) if k + 1 < len(specs) else None
                self.stats.add_time("read", read_s)
                if patches is None:
                    if error is not None:  # (else: the frame had failed already, and it was not read)
                        yield BatchResult(spec.frame, spec.start, spec.window_ids, None, seconds=read_s, error=error)
                    continue
                t = time.perf_counter()
                source = self.sources[spec.frame]
                dets = infer_patches(self.predictor, spec.patch_size, (source.width, source.height), patches,
                                     spec.origins,
                                     spec.window_ids)
                predict_s = time.perf_counter() - t
                self.stats.add_time("predict", predict_s)
                yield BatchResult(spec.frame, spec.start, spec.window_ids, dets,
                                  empty=sum(1 for p in patches if not has_data(p)), seconds=read_s + predict_s)
