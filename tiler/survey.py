"""The wiring of a job: its frames planned, every frame's batches through one executor, each frame merged as
soon as its last batch is in, checkpoints as work arrives, duplicates across overlapping frames dropped,
outputs written.

One raster is a survey of one frame, and gives what it always gave: a `JobResult` with its detections. A
survey of several frames gives a `SurveyResult`: its features are written frame by frame, never all held at
once, and a frame that cannot be read is recorded and the survey goes on. The executors (`runners/`) only
turn `BatchSpec`s into `BatchResult`s, in this process or on Ray; everything here is the same for both.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from . import process
from .checkpoint import WorkDir, default_work_dir, frame_identity
from .config import JobConfig
from .detections import Detections
from .errors import ConfigError, TilerError
from .frames import Frame, FrameAssembler, executor_config, plan_frames
from .io.survey import expand_inputs
from .result import JobResult, JobStats, SurveyResult, class_counts


def make_dedup(cfg: JobConfig, frames: list[Frame], load: Callable[[int], Detections]):
    """The cross-frame deduplication this job uses, or None: on when asked, or (unset) when georeferenced
    frames overlap on the ground."""
    if cfg.dedup_frames is False:
        return None
    geo = [f for f in frames if f.ok and f.source.georeferenced]
    if not geo:  # (asking for it without georeferencing was refused before the job: _check_dedup)
        return None
    from .merge.frames import FrameDedup, FrameGeo

    dedup = FrameDedup([FrameGeo(f.index, f.source.width, f.source.height, f.georeferencer(cfg))
                        for f in geo], load, cfg.match_metric, cfg.nms_threshold, cfg.class_agnostic)
    return dedup if (cfg.dedup_frames or dedup.any_overlap) else None


def _check_dedup(cfg: JobConfig, frames: list[Frame]) -> None:
    if cfg.dedup_frames and not any(f.ok and f.source.georeferenced for f in frames):
        raise ConfigError("dedup_frames needs georeferenced frames (these have pixel coordinates only)")


def _native_crs(frames: list[Frame]):
    """The CRS `auto`/`native` outputs of a survey are written in: its first georeferenced frame's."""
    return next((f.source.crs for f in frames if f.ok and f.source.georeferenced), None)


def run_job(cfg: JobConfig, runner: str, on_progress: Callable[[int, int], None] | None = None
            ) -> JobResult | SurveyResult:
    """Run the job (see the module docstring) and write its outputs."""
    with process.objects_frozen() as freeze_model, process.heap_kept():
        return _run_job(cfg, runner, on_progress, freeze_model)


def _run_job(cfg: JobConfig, runner: str, on_progress: Callable[[int, int], None] | None,
             freeze_model: Callable[[], None]) -> JobResult | SurveyResult:
    from .writers import check_output_path, output_crs, output_format

    t_start = time.perf_counter()
    stats = JobStats(runner=runner)
    uris = expand_inputs(cfg.sources, cfg.stac_asset)
    single = len(uris) == 1
    if single and not isinstance(cfg.source, str):
        cfg = cfg.replace(source=uris[0])
    t = time.perf_counter()
    frames = plan_frames(cfg, uris)
    stats.add_time("plan", time.perf_counter() - t)
    _check_dedup(cfg, frames)
    if cfg.out:  # a CRS the output cannot have is found now, not after the job
        check_output_path(cfg.out, cfg.crs)
        output_crs(output_format(cfg.out), cfg.crs, _native_crs(frames))
    if cfg.out_dir:
        _make_out_dir(cfg.out_dir)
    if runner == "ray":
        from .runners.ray import RayExecutor as Executor
    else:
        from .runners.local import LocalExecutor as Executor

    def quantising() -> None:
        if cfg.progress:
            print("tiler: quantising the model to int8 on patches of this job (once: the result is cached)",
                  file=sys.stderr)

    t = time.perf_counter()
    exec_cfg = executor_config(cfg, frames, on_build=quantising)  # the model file every executor loads
    if exec_cfg is not cfg:
        stats.add_time("quantize", time.perf_counter() - t)
    work: WorkDir | None = None
    try:
        with Executor(exec_cfg, [f for f in frames if f.ok], stats) as executor:
            freeze_model()
            names, task = executor.names, executor.task
            work = _open_work_dir(cfg, uris, single, executor.model_threads)
            assembler = FrameAssembler(cfg, frames, names, task, work, stats)
            todo = assembler.specs(cfg.resume)
            total = sum(len(s.window_ids) for s in todo)
            bar = tqdm(total=total, unit="win", desc="tiler", file=sys.stderr, disable=not cfg.progress, leave=False)
            done = 0
            # closed here even when the loop stops on an error: the executor's reader threads and handles end
            # with the job, not whenever the garbage collector reaches the abandoned generator
            with contextlib.closing(executor.run(todo, assembler.failed)) as results:
                for res in results:
                    assembler.add(res)
                    n = len(res.window_ids)
                    bar.update(n)
                    done += n
                    if on_progress is not None:
                        on_progress(done, total)
            bar.close()
        if single:
            result = _single_result(cfg, frames[0], assembler, names, task, stats)
        else:
            result = _survey_result(cfg, frames, assembler, make_dedup(cfg, frames, assembler.merged_of), names,
                                    task, stats)
        _account(stats, frames)
        result.frames = [f.report() for f in frames]
        stats.add_time("total", time.perf_counter() - t_start)
        if cfg.report:
            result.write_report(cfg.report)
    except TilerError:
        # the input or the configuration is at fault: checkpoints this run made would only block a rerun
        # (a resumed run's are kept: they hold earlier work)
        if work is not None and not (work.checkpoints and cfg.resume):
            work.remove()
        raise
    except BaseException:  # interrupted or crashed: the checkpoints are what --resume continues from
        if work is not None and not work.checkpoints:
            work.remove()
        raise
    if work is not None and not (cfg.keep_work and work.checkpoints):
        work.remove()
    return result


def _open_work_dir(cfg: JobConfig, uris: list[str], single: bool, model_threads: int | None) -> WorkDir | None:
    """The run's checkpoints (new, or found again with `resume`); without them, a survey's spool of merged
    frames; or None (one raster and nothing to put a work dir beside)."""
    path = (cfg.work_dir or default_work_dir(cfg.out, cfg.out_dir)) if cfg.checkpoint else None
    if path is not None:
        work = WorkDir(path)
        work.start(_fingerprint(cfg, uris, model_threads), cfg.resume)
        return work
    if cfg.resume:
        raise ConfigError("resume needs the work dir: give out, out_dir or work_dir")
    if not single and (cfg.out or cfg.out_dir):
        return WorkDir.spool(cfg.out or cfg.out_dir.rstrip("/\\"))
    return None


def _fingerprint(cfg: JobConfig, uris: list[str], model_threads: int | None) -> dict:
    """What a resumed run must share with the run it continues. The model's CPU threads count: torch's sums
    run in another order with another number of threads, and a detection can come out a hair different."""
    from . import __version__
    from .model.backends import model_digest

    return {"config": {**cfg.fingerprint(), "threads per model": model_threads},
            "model_sha256": model_digest(cfg.model),
            "frames": [frame_identity(u) for u in uris], "tiler_version": __version__}


def _account(stats: JobStats, frames: list[Frame]) -> None:
    """The job's totals from its frames'."""
    ok = [f for f in frames if f.ok]
    stats.frames, stats.frames_failed = len(frames), len(frames) - len(ok)
    stats.windows_planned = sum(f.windows_planned for f in frames)
    stats.windows_skipped = sum(f.windows_skipped for f in frames)
    stats.windows_empty = sum(f.windows_empty for f in ok)
    stats.windows_run = sum(f.windows_run for f in ok)
    stats.windows_resumed = sum(f.windows_resumed for f in ok)
    stats.raw_detections = sum(f.raw_detections for f in ok)
    stats.kept_detections = sum(f.kept_detections for f in ok)
    raw: dict[str, int] = {}
    for f in ok:
        for k, v in f.raw_per_class.items():
            raw[k] = raw.get(k, 0) + v
    stats.raw_per_class = raw


def _single_result(cfg, frame: Frame, assembler: FrameAssembler, names, task, stats) -> JobResult:
    (_, dets), = assembler.final(None)
    result = _frame_result(cfg, frame, dets, names, task, stats)
    stats.kept_per_class = class_counts(dets, names)
    if cfg.out:
        result.to_file(cfg.out)
    elif cfg.out_dir:
        result.to_file(_frame_paths(cfg, [frame])[frame.index])
    return result


def _make_out_dir(path: str) -> None:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"out_dir exists and is not a folder: {p}")
    try:
        p.mkdir(exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create out_dir {p}: {exc.strerror}") from None


def _frame_paths(cfg: JobConfig, frames: list[Frame]) -> dict[int, Path]:
    """One output per frame, named after it (its index added where two frames share a name)."""
    stems = [Path(f.uri.rstrip("/")).stem or f"frame{f.index}" for f in frames]
    out = {}
    for f, stem in zip(frames, stems):
        name = stem if stems.count(stem) == 1 else f"{stem}-{f.index}"
        out[f.index] = Path(cfg.out_dir) / f"{name}.{cfg.out_format}"
    return out


def _survey_result(cfg, frames, assembler, dedup, names, task, stats) -> SurveyResult:
    from .result import frame_provenance, write_meta
    from .writers import open_sink

    from .model.backends import model_digest

    ok = [f for f in frames if f.ok]
    model_sha256 = model_digest(cfg.model)
    results = [] if not (cfg.out or cfg.out_dir) else None
    kept_counts: dict[str, int] = {}
    t = time.perf_counter()
    sink = open_sink(cfg.out, cfg.crs, _native_crs(frames), write_meta(cfg, task, len(frames))) if cfg.out else None
    paths = _frame_paths(cfg, ok) if cfg.out_dir else {}
    try:
        for f, dets in assembler.final(dedup):
            for k, v in class_counts(dets, names).items():
                kept_counts[k] = kept_counts.get(k, 0) + v
            frame_cfg = cfg.for_frame(f.uri)
            if results is not None:
                results.append(_frame_result(frame_cfg, f, dets, names, task, JobStats(runner=stats.runner)))
                continue
            prov = frame_provenance(frame_cfg, model_sha256) if cfg.provenance else None
            geo = f.georeferencer(cfg)
            if sink is not None:
                sink.write(dets, names, geo, prov)
            else:
                from .writers import write_detections

                write_detections(paths[f.index], dets, names, geo, write_meta(frame_cfg, task, 1), crs=cfg.crs,
                                 provenance=prov)
        if sink is not None:
            sink.commit()
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    stats.add_time("write", time.perf_counter() - t)
    stats.kept_per_class = kept_counts
    return SurveyResult(frames, names, task, stats, cfg, results, Path(cfg.out) if cfg.out else None, model_sha256)


def _frame_result(cfg: JobConfig, frame: Frame, dets, names, task, stats: JobStats) -> JobResult:
    geo = frame.georeferencer(cfg)
    src = frame.source
    return JobResult(dets, names, task, src.transform if src.affine else None, geo.crs if geo else None, stats, cfg,
                     georef=geo)
