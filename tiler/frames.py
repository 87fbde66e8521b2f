"""The frames of a job: each planned (or recorded as failed), and each collected batch by batch until its last
batch is in, then merged across its own seams and checkpointed (`FrameAssembler`)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .checkpoint import WorkDir
from .config import JobConfig
from .detections import Detections
from .errors import RasterError
from .pipeline import (BatchResult, BatchSpec, CoarsePass, WindowPlan, batch_specs, coarse_pass, frame_patch_size,
                       frame_read_size, live_patches, merge, open_source, plan, read_patches)
from .raster import RasterSource, gdal_env
from .result import JobStats, class_counts


@dataclass
class Frame:
    """One raster of a job, and its accounting."""

    index: int
    uri: str
    source: RasterSource | None = None  # metadata (its dataset closed; readers reopen it)
    plan: WindowPlan | None = None
    patch_size: tuple[int, int] | None = None  # its windows in its own pixels
    read_size: tuple[int, int] | None = None  # its windows read decimated to this (see pipeline.frame_read_size)
    coarse: CoarsePass | None = None  # with coarse_factor: the coarse pass's windows
    error: str | None = None
    windows_resumed: int = 0  # taken from checkpoints, not computed again
    windows_run: int = 0
    windows_empty: int = 0
    raw_detections: int = 0
    merged_detections: int = 0  # after the seam merge
    kept_detections: int = 0  # after cross-frame deduplication
    seconds: float = 0.0
    raw_per_class: dict[str, int] = field(default_factory=dict)
    _georef: object = field(default=None, repr=False, compare=False)  # built once, by georeferencer()

    def georeferencer(self, cfg: JobConfig):
        """The frame's pixel -> map mapping (its geotransform, GCPs, or RPCs at `cfg.height` / over `cfg.dem`),
        or None; built once, for the cross-frame dedup and the output alike."""
        if self._georef is None and self.source.georeferenced:
            self._georef = self.source.georeferencer(cfg.height, cfg.dem)
        return self._georef

    @property
    def windows_planned(self) -> int:
        return sum(p.planned for p in self._plans())

    @property
    def windows_skipped(self) -> int:
        return sum(p.skipped for p in self._plans())

    def _plans(self) -> list[WindowPlan]:
        return [p for p in (self.plan, self.coarse.plan if self.coarse else None) if p is not None]

    def batch_specs(self, batch_size: int) -> list[BatchSpec]:
        """The frame's batches: the fine pass's, then the coarse pass's."""
        specs = batch_specs(self.index, self.plan, batch_size, self.patch_size, self.read_size)
        c = self.coarse
        if c is not None:
            specs += batch_specs(self.index, c.plan, batch_size, c.patch_size, c.read_size, c.first_start)
        return specs

    def merge(self, cfg: JobConfig, raw: Detections, task: str) -> Detections:
        """The frame's detections merged across its seams (and its two passes)."""
        boxes = self.plan.grid.clipped_bounds()
        if self.coarse is None:
            return merge(cfg, raw, task, boxes)
        return merge(cfg, raw, task, np.concatenate([boxes, self.coarse.window_boxes()]), self.coarse.first_id)

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, error: str) -> None:
        self.error = error

    def accounting(self) -> dict:
        return {k: getattr(self, k) for k in ("windows_resumed", "windows_run", "windows_empty", "raw_detections",
                                              "merged_detections", "seconds", "raw_per_class")}

    def report(self) -> dict:
        read = self.source.describe() if self.source is not None else {}
        return {"source": self.uri, "status": "ok" if self.ok else "failed", "error": self.error, **read,
                "patch_size": list(self.patch_size) if self.patch_size else None,
                "read_size": list(self.read_size) if self.read_size else None,
                "coarse_patch_size": list(self.coarse.patch_size) if self.coarse else None,
                "windows_planned": self.windows_planned, "windows_skipped": self.windows_skipped,
                "windows_run": self.windows_run, "windows_resumed": self.windows_resumed,
                "windows_empty": self.windows_empty, "raw_detections": self.raw_detections,
                "merged_detections": self.merged_detections, "kept_detections": self.kept_detections,
                "seconds": round(self.seconds, 3)}


def plan_frames(cfg: JobConfig, uris: list[str]) -> list[Frame]:
    """Open and plan every frame. A frame that cannot be opened is recorded as failed (a single raster, or
    `fail_fast`, raises instead), as is a frame without georeferencing in a survey of georeferenced ones."""
    single = len(uris) == 1
    frames = []
    for i, uri in enumerate(uris):
        frame = Frame(i, uri)
        try:
            source = open_source(cfg.for_frame(uri))
            frame.patch_size = frame_patch_size(cfg, source)
            frame.read_size = frame_read_size(cfg, frame.patch_size)
            with gdal_env(source, frame.patch_size[1], cfg.gdal_cache_mb):
                frame.plan = plan(cfg, source, frame.patch_size)
                frame.coarse = coarse_pass(cfg, source, frame.plan, frame.patch_size, frame.read_size)
            source.close()
            frame.source = source
        except RasterError as exc:
            if single or cfg.fail_fast:
                raise
            frame.fail(str(exc))
        frames.append(frame)
    ok = [f for f in frames if f.ok]
    if any(f.source.georeferenced for f in ok):
        for f in ok:
            if not f.source.georeferenced:
                f.fail(f"{f.uri} has no georeferencing, unlike the other frames of the survey")
                if cfg.fail_fast:
                    raise RasterError(f.error)
    if not any(f.ok for f in frames):
        first = next(f for f in frames if not f.ok)
        raise RasterError(f"none of the {len(frames)} frames could be read (first: {first.error})")
    return frames


def calibration_patches(frames: list[Frame], n: int) -> list[np.ndarray]:
    """Up to `n` patches of the job's fine-pass windows, spread evenly over every window of every readable frame
    (in job order), read as the job reads them: what an int8 model is calibrated on (model/quantize.py). The
    same frames always give the same patches. Patches read back empty (all zero: a black border without a
    nodata value) are left out, as the model never sees them in the job either."""
    ok = [f for f in frames if f.ok]
    counts = np.array([len(f.plan.window_ids) for f in ok], dtype=np.int64)
    if counts.sum() == 0:
        return []
    picks = np.unique(np.linspace(0, counts.sum() - 1, min(n, int(counts.sum()))).round().astype(np.int64))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    patches = []
    for f, start, count in zip(ok, starts, counts):
        local = picks[(picks >= start) & (picks < start + count)] - start
        if len(local):
            source = f.source.reopened()
            try:
                with gdal_env(source, f.patch_size[1]):
                    read = read_patches(source, f.patch_size, f.plan.origins[local], f.plan.window_ids[local],
                                        f.read_size)
                patches += list(read[live_patches(read)])
            finally:
                source.close()
    return patches


def executor_config(cfg: JobConfig, frames: list[Frame], on_build: Callable[[], None] | None = None
                    ) -> JobConfig:
    """The configuration the executors load the model from: `cfg` itself, or, for the `openvino-int8` backend
    with a .pt model, `cfg` with the model replaced by its int8 export, quantised here once on patches of the
    job's own frames (`on_build` is called first when that takes a while), so that every Ray actor loads
    that one file. A job with no window to run loads the .pt as it is (torch): nothing to quantise or predict."""
    from .model import backends

    if cfg.backend != "openvino-int8" or backends.model_format(cfg.model) != "torch":
        return cfg
    from .model import quantize

    patches = calibration_patches(frames, quantize.CALIBRATION_PATCHES)
    if not patches:  # nothing to calibrate on: the .pt runs as it is
        if any(len(f.plan.window_ids) for f in frames if f.ok):  # (else no window to run: nothing to predict)
            warnings.warn("every window sampled to calibrate the int8 model read back empty; the model runs as "
                          "the .pt (torch)", RuntimeWarning, stacklevel=2)
        return cfg.replace(backend="auto")
    model = quantize.quantized_model(cfg.model, cfg.model_imgsz, cfg.batch_size, patches, on_build)
    return cfg.replace(model=str(model), backend="auto")


class FrameAssembler:
    """Collects each frame's batches; when a frame's last batch is in, merges it across its seams and lets
    its raw detections go (to the checkpoint, or to memory when the job has no work dir)."""

    def __init__(self, cfg: JobConfig, frames: list[Frame], names: dict[int, str], task: str,
                 work: WorkDir | None, stats: JobStats):
        self.cfg, self.frames, self.names, self.task, self.work, self.stats = cfg, frames, names, task, work, stats
        self.parts: dict[int, list[Detections]] = {}
        self.remaining: dict[int, int] = {}
        self.merged: dict[int, Detections] = {}  # when there is no work dir

    def specs(self, resume: bool) -> list[BatchSpec]:
        """The batches still to run, after restoring what the work dir holds when resuming."""
        done_frames = self.work.done_frames() if resume and self.work else set()
        done_batches = self.work.done_batches() if resume and self.work else {}
        todo: list[BatchSpec] = []
        for f in self.frames:
            if not f.ok:
                continue
            if f.index in done_frames:
                _, acct = self.work.load_frame(f.index)
                for k, v in acct.items():
                    setattr(f, k, v)
                f.windows_resumed, f.windows_run = f.windows_resumed + f.windows_run, 0
                continue
            specs = f.batch_specs(self.cfg.batch_size)
            have = set(done_batches.get(f.index, ()))
            self.parts[f.index] = []
            for s in specs:
                if s.start in have:
                    wids, dets, empty = self.work.load_batch(f.index, s.start)
                    self.parts[f.index].append(dets)
                    f.windows_resumed += len(wids) - empty
                    f.windows_empty += empty
                else:
                    todo.append(s)
            self.remaining[f.index] = sum(1 for s in specs if s.start not in have)
            if not self.remaining[f.index]:
                self._complete(f)
        return todo

    def failed(self, frame: int) -> bool:
        return not self.frames[frame].ok

    def add(self, res: BatchResult) -> None:
        f = self.frames[res.frame]
        self.stats.actor_restarts += res.restarted
        if not f.ok:
            return
        if res.error is not None:
            f.fail(str(res.error))
            self.parts.pop(f.index, None)
            if self.cfg.fail_fast or len(self.frames) == 1:
                raise res.error
            return
        f.windows_run += len(res.window_ids) - res.empty
        f.windows_empty += res.empty
        f.seconds += res.seconds
        if self.work is not None and self.work.checkpoints:
            t = time.perf_counter()
            self.work.save_batch(f.index, res.start, res.window_ids, res.detections, res.empty)
            self.stats.add_time("checkpoint", time.perf_counter() - t)
        self.parts[f.index].append(res.detections)
        self.remaining[f.index] -= 1
        if not self.remaining[f.index]:
            self._complete(f)

    def _complete(self, f: Frame) -> None:
        raw = Detections.concat(self.parts.pop(f.index))
        raw = raw.take(np.argsort(raw.window, kind="stable"))  # batches arrive in any order; the merge must not care
        t = time.perf_counter()
        merged = f.merge(self.cfg, raw, self.task)
        dt = time.perf_counter() - t
        self.stats.add_time("merge", dt)
        f.seconds += dt
        f.raw_detections, f.merged_detections = len(raw), len(merged)
        f.raw_per_class = class_counts(raw, self.names)
        if self.work is not None:
            t = time.perf_counter()
            self.work.save_frame(f.index, merged, f.accounting())
            self.stats.add_time("checkpoint", time.perf_counter() - t)
        else:
            self.merged[f.index] = merged

    def merged_of(self, index: int) -> Detections:
        if index in self.merged:
            return self.merged[index]
        return self.work.load_frame(index)[0]

    def final(self, dedup) -> Iterator[tuple[Frame, Detections]]:
        """Every good frame's detections, in frame order, less those a neighbouring frame saw better."""
        for f in self.frames:
            if not f.ok:
                continue
            dets = self.merged_of(f.index)
            if dedup is not None:
                t = time.perf_counter()
                dets = dets.take(np.flatnonzero(dedup.keep(f.index, dets)))
                self.stats.add_time("dedup_frames", time.perf_counter() - t)
            f.kept_detections = len(dets)
            self.merged.pop(f.index, None)
            yield f, dets
