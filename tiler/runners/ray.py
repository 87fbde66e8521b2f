"""Ray runner: the same stages as the in-process runner, wired into a Ray Data pipeline.

    window coordinates (driver) -> read (each worker opens the raster URI itself)
        -> predict (actor pool; the model is loaded once per actor, on a GPU when the actor has one)
        -> detections streamed back to the driver -> merge -> writer

Ray Data fuses the read step into the actors' operator (same CPU request), so an actor reads the windows of
its own batches: patches never cross a process boundary, only coordinates and detections do.

The driver never touches pixels: it plans the windows (from raster metadata and a decimated mask) and
ships only their coordinates. Lost actors and workers are retried by Ray; a window that cannot be read is
an error naming the window, raised once, not retried forever.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from ..config import JobConfig
from ..detections import Detections
from ..errors import TilerError, WindowReadError
from ..pipeline import finish, has_data, infer_patches, make_predictor, open_source, read_patches, start_job
from ..raster import RasterSource, gdal_env
from ..result import JobResult, JobStats
from . import _reaper

# Test hook: when this names a file that does not exist yet, the first actor batch creates it and kills
# its own process, so tests can prove a lost actor leaves the job complete and identical.
CRASH_ONCE_ENV = "TILER_TEST_CRASH_ONCE"
WINDOWS_PER_BLOCK = 64  # each read task carries many windows: scheduling cost stays small per window

_SOURCES: dict[tuple, RasterSource] = {}  # per worker process: raster opened once, reused by later tasks


def _worker_source(cfg: JobConfig) -> RasterSource:
    key = (cfg.source, cfg.bands)
    if key not in _SOURCES:
        _SOURCES[key] = open_source(cfg)
    return _SOURCES[key]


def read_windows(batch: dict[str, np.ndarray], cfg: JobConfig) -> dict[str, np.ndarray]:
    """Ray Data task: read the patches of some model batches on the worker.

    A row is one model batch (`cfg.batch_size` windows, padded arrays plus a count), exactly as the local
    runner groups windows, so the model sees identical batches and both runners give identical output."""
    source = _worker_source(cfg)
    with gdal_env(source, cfg.patch_size[1], cfg.gdal_cache_mb):
        packed, failed = [], []
        for count, wid, x0, y0 in zip(batch["count"], batch["window_id"], batch["x0"], batch["y0"]):
            origins = np.stack([x0[:count], y0[:count]], axis=1)
            try:
                packed.append(pickle.dumps(np.stack(read_patches(source, cfg, origins, wid[:count])), protocol=5))
                failed.append(False)
            except WindowReadError as exc:
                # a corrupt window is the user's problem, not a transient one: carry it to the driver as
                # data, so it is reported with its window id once instead of being retried
                packed.append(pickle.dumps(exc))
                failed.append(True)
    return {**batch, "raster_w": np.full(len(packed), source.width), "raster_h": np.full(len(packed), source.height),
            "patches": np.array(packed, dtype=object), "failed": np.array(failed)}


class PredictActor:
    """Ray Data actor: loads the model once, predicts one model batch of patches into global detections."""

    def __init__(self, cfg: JobConfig):
        # A GPU-less node still gets a working actor: resolve_device falls back to CPU.
        threads = cfg.threads or max(1, int(cfg.cpus_per_worker))
        self.cfg = cfg.replace(threads=threads)
        self.predictor = make_predictor(self.cfg)
        import ray

        # reported once, with this actor's first batch, so the driver can count restarts
        self.unreported_restart = bool(ray.get_runtime_context().was_current_actor_reconstructed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        crash_file = os.environ.get(CRASH_ONCE_ENV)
        if crash_file and not os.path.exists(crash_file):
            with open(crash_file, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)  # simulate a lost actor mid-batch
        out = {"detections": [], "windows": [], "empty": []}
        for k in range(len(batch["count"])):
            count = int(batch["count"][k])
            if batch["failed"][k]:
                out["detections"].append(batch["patches"][k])  # the pickled WindowReadError, passed on
                out["windows"].append(count)
                out["empty"].append(0)
                continue
            patches = list(pickle.loads(batch["patches"][k]))
            origins = np.stack([batch["x0"][k][:count], batch["y0"][k][:count]], axis=1)
            raster_size = (int(batch["raster_w"][k]), int(batch["raster_h"][k]))
            dets = infer_patches(self.predictor, self.cfg, raster_size, patches, origins,
                                 batch["window_id"][k][:count])
            out["detections"].append(pickle.dumps(dets, protocol=5))  # columnar detections travel as one object
            out["windows"].append(count)
            out["empty"].append(sum(1 for p in patches if not has_data(p)))
        restarted = np.zeros(len(out["windows"]), dtype=np.int64)
        if self.unreported_restart and len(restarted):
            restarted[0], self.unreported_restart = 1, False
        return {"detections": np.array(out["detections"], dtype=object), "windows": np.array(out["windows"]),
                "empty": np.array(out["empty"]), "restarted": restarted, "failed": batch["failed"]}


def _actor_class(cfg: JobConfig) -> type:
    """PredictActor bound to this job's config. The config travels with the class definition rather than as
    constructor arguments in the object store, which a restarted actor could find gone."""

    class JobPredictActor(PredictActor):
        def __init__(self):
            super().__init__(cfg)

    return JobPredictActor


def _pad(values: np.ndarray, length: int) -> np.ndarray:
    return np.pad(np.asarray(values, np.int64), (0, length - len(values)))


def _batch_rows(window_ids: np.ndarray, origins: np.ndarray, batch_size: int) -> list[dict]:
    """One row per model batch, in window order; fixed-length (padded) arrays so blocks stay columnar."""
    rows = []
    for start in range(0, len(window_ids), batch_size):
        sl = slice(start, start + batch_size)
        count = len(window_ids[sl])
        rows.append({"start": start, "count": count, "window_id": _pad(window_ids[sl], batch_size),
                     "x0": _pad(origins[sl, 0], batch_size), "y0": _pad(origins[sl, 1], batch_size)})
    return rows


class _EmbeddedRay:
    """The local Ray this job started, with its watcher (`_reaper.py`): `stop()` shuts both down."""

    def __init__(self, reaper) -> None:
        self.reaper = reaper

    def stop(self) -> None:
        import ray

        try:
            ray.shutdown()
        finally:
            self.reaper.kill()  # the job ended here, so nothing is left for it to do
            self.reaper.wait()


def _init_ray(cfg: JobConfig) -> _EmbeddedRay | None:
    """Join `cfg.address`, or a head that `ray start --head` runs on this machine, or start an embedded local
    Ray sized to this machine: then returned, for the job to stop when it ends."""
    import ray

    if ray.is_initialized():
        return None
    kwargs = dict(log_to_driver=False, logging_level="ERROR", runtime_env={"env_vars": {"YOLO_OFFLINE": "1"}})
    given = cfg.address or os.environ.get("RAY_ADDRESS")  # `ray job submit` sets RAY_ADDRESS
    head = None if given else _running_local_head()
    if head:
        print(f"tiler: joining the Ray head running on this machine at {head}", file=sys.stderr)
    if given or head:
        ray.init(address=given or head, **kwargs)
        return None
    reaper = _reaper.start()  # before Ray starts: a driver killed during start-up leaves nothing either
    try:
        # "local": a new instance even where Ray's record of an earlier `ray start --head` outlived its head
        # (without it, ray.init would try to join the dead head, and refuse num_cpus for an existing cluster)
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **kwargs)
    except BaseException:
        reaper.kill()
        reaper.wait()
        raise
    return _EmbeddedRay(reaper)


def _running_local_head() -> str | None:
    """The address of a head that `ray start --head` started on this machine and that still runs, else None.

    Ray records the last head it started (in its default temp dir) and keeps the record after the head
    dies; a head is live when a GCS server with that address runs here. Ray internals, guarded: if they
    change, tiler starts its own Ray as before."""
    try:
        from ray._private import services

        recorded = services.find_bootstrap_address(None)
        return recorded if recorded and recorded in set(services.find_gcs_addresses()) else None
    except Exception:  # noqa: BLE001  (private API: any failure means "no head found")
        return None


def _actor_plan(cfg: JobConfig) -> tuple[int, int, float]:
    """(min, max) pool size and GPUs per actor for the resources the cluster really has."""
    import ray

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    gpu_each = cfg.gpus_per_worker
    if gpu_each > 0 and gpus == 0:
        # a GPU stage on a cluster without GPUs would wait forever: run on CPU instead, and say so
        warnings.warn("no GPUs in the Ray cluster: predicting on CPU", RuntimeWarning, stacklevel=3)
        gpu_each = 0.0
    if cfg.workers:
        return cfg.workers, cfg.workers, gpu_each
    if gpu_each > 0:
        n = max(1, int(gpus / gpu_each))
    else:
        # leave a core for the read tasks when there is more than one
        n = max(1, int((cpus - (1 if cpus > 1 else 0)) / cfg.cpus_per_worker))
    return 1, n, gpu_each


def run_ray(cfg: JobConfig, on_progress: Callable[[int, int], None] | None = None) -> JobResult:
    """Run the job on Ray. `on_progress(windows_done, windows_total)` is called as results arrive."""
    import ray

    t_start = time.perf_counter()
    stats = JobStats(runner="ray")
    source, window_plan = start_job(cfg, stats)
    source.close()  # the driver needs only its metadata from here on; workers open their own
    # the driver checks the model once, so a bad file is a one-line error, not a failed actor pool
    from ..model import backends, load_model

    t = time.perf_counter()
    probe = load_model(cfg.model)
    names, task = dict(probe.names), probe.task
    del probe
    stats.backend = backends.model_format(cfg.model) if cfg.backend == "auto" else cfg.backend
    if cfg.backend in ("openvino", "onnx", "torchscript") and backends.model_format(cfg.model) == "torch":
        # exported once here, under the cache's lock, so actors on this machine load it instead of each exporting
        backends.exported_model(cfg.model, cfg.backend, cfg.model_imgsz, cfg.batch_size)
    stats.add_time("check_model", time.perf_counter() - t)
    t = time.perf_counter()
    embedded = _init_ray(cfg)
    try:
        import ray.data

        # our progress bar and summary say enough; Ray Data configures its loggers on import
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_progress = False
        min_actors, max_actors, gpu_each = _actor_plan(cfg)
        n = len(window_plan.window_ids)
        stats.add_time("ray_start", time.perf_counter() - t)
        t = time.perf_counter()
        parts: list[Detections] = []
        if n:
            rows = _batch_rows(window_plan.window_ids, window_plan.origins, cfg.batch_size)
            per_task = max(1, WINDOWS_PER_BLOCK // cfg.batch_size)  # model batches per read task
            # blocks of many windows each, but enough of them to keep every actor busy on small jobs
            n_blocks = min(len(rows), max(-(-len(rows) // per_task), 4 * max_actors))
            ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
            # Ray Data retries read tasks lost with their worker, and restarts lost actors and their batches
            # (its defaults: max_restarts=-1, max_task_retries=-1); exceptions from our code are not retried.
            ds = ds.map_batches(read_windows, fn_kwargs={"cfg": cfg}, batch_size=per_task, num_cpus=1)
            hooks = {k: os.environ[k] for k in (CRASH_ONCE_ENV,) if k in os.environ}
            ds = ds.map_batches(_actor_class(cfg), batch_size=1, num_gpus=gpu_each, num_cpus=cfg.cpus_per_worker,
                                compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
                                runtime_env={"env_vars": hooks} if hooks else None)
            done = 0
            bar = tqdm(total=n, unit="win", desc="tiler", file=sys.stderr, disable=not cfg.progress, leave=False)
            for row in ds.iter_rows():
                if row["failed"]:
                    raise pickle.loads(row["detections"])
                parts.append(pickle.loads(row["detections"]))
                stats.windows_empty += int(row["empty"])
                stats.actor_restarts += int(row["restarted"])
                bar.update(int(row["windows"]))
                done += int(row["windows"])
                if on_progress is not None:
                    on_progress(done, n)
            bar.close()
        stats.add_time("predict", time.perf_counter() - t)
        stats.workers = max_actors
    except TilerError:
        raise
    except Exception as exc:  # Ray wraps errors raised in tasks and actors; report ours as themselves
        inner = _tiler_cause(exc)
        if inner is not None:
            raise inner from None
        raise TilerError(f"ray job failed: {type(exc).__name__}: {_last_line(exc)}") from exc
    finally:
        if embedded is not None:
            embedded.stop()
    stats.windows_run = len(window_plan.window_ids) - stats.windows_empty
    result = finish(cfg, parts, source, window_plan.grid, names, task, stats)
    stats.add_time("total", time.perf_counter() - t_start)
    return result


def _tiler_cause(exc: BaseException) -> TilerError | None:
    """The TilerError behind Ray's wrappers, if there is one."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TilerError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _last_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
