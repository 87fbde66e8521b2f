"""Ray executor: the same stages as the in-process one, wired into a Ray Data pipeline over every frame.

    batches of window coordinates, all frames (driver) -> read (each worker opens the frames itself)
        -> predict (actor pool; the model is loaded once per actor, on a GPU when the actor has one)
        -> detections streamed back to the driver -> merge -> writer

Ray Data fuses the read step into the actors' operator (same CPU request), so an actor reads the windows of
its own batches: patches never cross a process boundary, only coordinates and detections do.

The driver never touches pixels: it plans the windows (from raster metadata and a decimated mask) and
ships only their coordinates. Lost actors and workers are retried by Ray. A window that cannot be read is
not retried: its batch comes back with the error as data (the `error` column), so the survey records
its frame as failed, naming the window, and goes on.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
import warnings
from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np

from .. import process
from ..config import JobConfig
from ..errors import RasterError, TilerError
from ..pipeline import BatchResult, BatchSpec, infer_patches, live_patches, make_predictor, read_patches
from ..raster import RasterSource, gdal_env
from ..result import JobStats
from . import _reaper
from ._ray_log import StderrFilter

# Test hook: when this names a file that does not exist yet, the first actor batch creates it and kills
# its own process, so tests can prove a lost actor leaves the job complete and identical.
CRASH_ONCE_ENV = "TILER_TEST_CRASH_ONCE"
# The same while an actor starts (in its __init__, before it loads the model).
CRASH_INIT_ONCE_ENV = "TILER_TEST_CRASH_INIT_ONCE"
# Actor deaths during start-up that Ray Data replaces before failing the job. Its default, 0, fails on the first:
# once, on a loaded machine, the test suite lost a job to an actor "cancelled before it started running" that Ray
# Data counted as such a death (a process dying in its constructor is restarted by Ray either way: tested). The
# driver has checked the model already, so such deaths are the cluster's; a model that cannot load still fails.
ACTOR_INIT_DEATHS = 3
WINDOWS_PER_BLOCK = 64  # each read task carries many windows: scheduling cost stays small per window

OPEN_FRAMES = 8  # rasters a worker keeps open: surveys have thousands of frames
_SOURCES: OrderedDict[int, RasterSource] = OrderedDict()  # per worker process: frames opened, reused by later tasks


def _worker_source(frame: int, sources: dict[int, RasterSource]) -> RasterSource:
    if frame in _SOURCES:
        _SOURCES.move_to_end(frame)
    else:
        _SOURCES[frame] = sources[frame]  # its metadata and stretch from the driver; the dataset opens on read
        if len(_SOURCES) > OPEN_FRAMES:
            _SOURCES.popitem(last=False)[1].close()
    return _SOURCES[frame]


def read_windows(batch: dict[str, np.ndarray], cfg: JobConfig, sources: dict[int, RasterSource]
                 ) -> dict[str, np.ndarray]:
    """Ray Data task: read the patches of some model batches on the worker.

    A row is one model batch (`cfg.batch_size` windows of one frame, padded arrays plus a count), exactly as
    the local executor groups windows, so the model sees identical batches and both give identical output."""
    packed, errors, widths, heights, read_s = [], [], [], [], []
    for frame, count, wid, x0, y0, pw, ph, rw, rh in zip(batch["frame"], batch["count"], batch["window_id"],
                                                         batch["x0"], batch["y0"], batch["pw"], batch["ph"],
                                                         batch["rw"], batch["rh"]):
        source = _worker_source(int(frame), sources)
        widths.append(source.width), heights.append(source.height)
        origins = np.stack([x0[:count], y0[:count]], axis=1)
        t = time.perf_counter()
        try:
            with gdal_env(source, int(ph), cfg.gdal_cache_mb):
                patches = read_patches(source, (int(pw), int(ph)), origins, wid[:count],
                                       (int(rw), int(rh)) if rw else None)
                packed.append(pickle.dumps(patches, protocol=5))
            errors.append(b"")
        except RasterError as exc:
            # a corrupt window (or a frame gone since it was planned) is the user's problem, not a transient
            # one: it travels to the driver as data, which records its frame as failed, instead of a retry
            packed.append(b"")
            errors.append(pickle.dumps(exc))
        read_s.append(time.perf_counter() - t)
    return {**batch, "raster_w": np.array(widths, np.int64), "raster_h": np.array(heights, np.int64),
            "read_s": np.array(read_s), "patches": np.array(packed, dtype=object),
            "error": np.array(errors, dtype=object), "read_pid": np.full(len(read_s), os.getpid(), np.int64)}


class PredictActor:
    """Ray Data actor: loads the model once, predicts one model batch of patches into global detections."""

    def __init__(self, cfg: JobConfig, packed_model: tuple | None = None):
        _crash_once(CRASH_INIT_ONCE_ENV)
        changes = {"threads": _actor_threads(cfg)}
        if packed_model is not None:  # the driver's int8 model: into this node's export cache, and loaded from there
            from ..model import backends

            changes["model"] = str(backends.unpacked_export(packed_model))
        # A GPU-less node still gets a working actor: device "auto" (the default) falls back to CPU.
        self.cfg = cfg.replace(**changes)
        self.predictor = make_predictor(self.cfg)
        # this process lives for the job: its modules and model stay out of the garbage collector's full passes
        # (0.1 s each with torch loaded, several per job), and what it frees stays for its next batch
        process.settle_for_life()
        import ray

        # reported once, with this actor's first batch, so the driver can count restarts
        self.unreported_restart = bool(ray.get_runtime_context().was_current_actor_reconstructed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        _crash_once(CRASH_ONCE_ENV)  # test hook: a lost actor mid-batch
        out = {"detections": [], "empty": [], "seconds": []}
        for k in range(len(batch["count"])):
            count = int(batch["count"][k])
            if batch["error"][k]:
                out["detections"].append(b""), out["empty"].append(0), out["seconds"].append(batch["read_s"][k])
                continue
            t = time.perf_counter()
            patches = pickle.loads(batch["patches"][k])  # (n, h, w, 3)
            origins = np.stack([batch["x0"][k][:count], batch["y0"][k][:count]], axis=1)
            raster_size = (int(batch["raster_w"][k]), int(batch["raster_h"][k]))
            patch_size = (int(batch["pw"][k]), int(batch["ph"][k]))
            live = live_patches(patches)
            dets = infer_patches(self.predictor, patch_size, raster_size, patches, origins,
                                 batch["window_id"][k][:count], live)
            out["detections"].append(pickle.dumps(dets, protocol=5))  # columnar detections travel as one object
            out["empty"].append(int((~live).sum()))
            out["seconds"].append(batch["read_s"][k] + time.perf_counter() - t)
        restarted = np.zeros(len(out["empty"]), dtype=np.int64)
        # Ray Data fuses the read tasks into CPU actors; with GPU actors they run apart (reported, and tested)
        read_here = (np.asarray(batch["read_pid"]) == os.getpid()).astype(np.int64)
        if self.unreported_restart and len(restarted):
            restarted[0], self.unreported_restart = 1, False
        return {"frame": batch["frame"], "start": batch["start"], "count": batch["count"],
                "window_id": batch["window_id"], "detections": np.array(out["detections"], dtype=object),
                "empty": np.array(out["empty"]), "seconds": np.array(out["seconds"]), "restarted": restarted,
                "error": batch["error"], "read_here": read_here,
                "precision": np.full(len(restarted), self.predictor.precision)}


def _crash_once(env: str) -> None:
    """Test hook: if `env` names a file that does not exist yet, create it and kill this process."""
    crash_file = os.environ.get(env)
    if crash_file and not os.path.exists(crash_file):
        with open(crash_file, "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)


def _actor_threads(cfg: JobConfig) -> int:
    """Torch threads of each actor's model: as asked, else the CPUs the actor reserves."""
    return cfg.threads or max(1, int(cfg.cpus_per_worker))


def _actor_class(cfg: JobConfig, packed_model: tuple | None = None) -> type:
    """PredictActor bound to this job's config (and model files, where the driver made them: see
    `backends.packed_export`). They travel with the class definition rather than as constructor arguments in
    the object store, which a restarted actor could find gone."""

    class JobPredictActor(PredictActor):
        def __init__(self):
            super().__init__(cfg, packed_model)

    return JobPredictActor


def _pad(values: np.ndarray, length: int) -> np.ndarray:
    return np.pad(np.asarray(values, np.int64), (0, length - len(values)))


def _batch_rows(specs: list[BatchSpec], batch_size: int) -> list[dict]:
    """One row per model batch; fixed-length (padded) arrays so blocks stay columnar."""
    return [{"frame": s.frame, "start": s.start, "count": len(s.window_ids), "pw": s.patch_size[0],
             "ph": s.patch_size[1], "rw": s.read_size[0] if s.read_size else 0,
             "rh": s.read_size[1] if s.read_size else 0,
             "window_id": _pad(s.window_ids, batch_size), "x0": _pad(s.origins[:, 0], batch_size),
             "y0": _pad(s.origins[:, 1], batch_size)} for s in specs]


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


class RayExecutor:
    """Turns `BatchSpec`s into `BatchResult`s on Ray (see `survey.run_job` for the wiring): joins the cluster
    (or starts an embedded one, stopped on exit), one actor pool for the whole job."""

    def __init__(self, cfg: JobConfig, frames: list, stats: JobStats):
        self.cfg, self.stats = cfg, stats
        self.sources = {f.index: f.source for f in frames}
        # the driver checks the model once, so a bad file is a one-line error, not a failed actor pool
        from ..model import backends, load_model

        t = time.perf_counter()
        probe = load_model(cfg.model)
        self.names, self.task = dict(probe.names), probe.task
        del probe
        stats.backend = backends.model_backend(cfg.model) if cfg.backend == "auto" else cfg.backend
        # an export the driver made that a node cannot make itself (int8: quantised on the driver's patches)
        self.packed_model = backends.packed_export(cfg.model) if cfg.backend == "auto" else None
        if cfg.backend in ("openvino", "onnx", "torchscript") and backends.model_format(cfg.model) == "torch":
            # exported once here, under the cache's lock, so actors on this machine load it instead of each
            backends.exported_model(cfg.model, cfg.backend, cfg.model_imgsz, cfg.batch_size)
        stats.add_time("check_model", time.perf_counter() - t)
        t = time.perf_counter()
        self.stderr_filter = StderrFilter()  # keeps Ray's one routine error-level line quiet (see _ray_log.py)
        self.embedded = _init_ray(cfg)
        try:
            self.stderr_filter.start()  # after Ray is up: its own processes keep the real stderr
            import ray.data

            # our progress bar and summary say enough; Ray Data configures its loggers on import
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.verbose_progress = False
            ctx.max_consecutive_actor_init_deaths = ACTOR_INIT_DEATHS
            self.min_actors, self.max_actors, self.gpu_each = _actor_plan(cfg)
        except BaseException:
            self.__exit__()
            raise
        stats.workers = self.max_actors
        self.model_threads = _actor_threads(cfg) if not self.gpu_each else None
        stats.add_time("ray_start", time.perf_counter() - t)

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.embedded is not None:
                self.embedded.stop()
                self.embedded = None
        finally:
            self.stderr_filter.stop()

    def run(self, specs: list[BatchSpec], failed: Callable[[int], bool]) -> Iterator[BatchResult]:
        """Results in the order they finish (the survey does not care). `failed` is not consulted: batches
        already queued on the cluster run; the survey ignores those of a failed frame."""
        if not specs:
            return
        import ray

        cfg = self.cfg
        t = time.perf_counter()
        try:
            rows = _batch_rows(specs, cfg.batch_size)
            per_task = max(1, WINDOWS_PER_BLOCK // cfg.batch_size)  # model batches per read task
            # blocks of many windows each, but enough of them to keep every actor busy on small jobs
            n_blocks = min(len(rows), max(-(-len(rows) // per_task), 4 * self.max_actors))
            ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
            # Ray Data retries read tasks lost with their worker, and restarts lost actors and their batches
            # (its defaults: max_restarts=-1, max_task_retries=-1); exceptions from our code are not retried.
            ds = ds.map_batches(read_windows, fn_kwargs={"cfg": cfg, "sources": self.sources}, batch_size=per_task,
                                num_cpus=1)
            hooks = {k: os.environ[k] for k in (CRASH_ONCE_ENV, CRASH_INIT_ONCE_ENV) if k in os.environ}
            ds = ds.map_batches(_actor_class(cfg, self.packed_model), batch_size=1, num_gpus=self.gpu_each,
                                num_cpus=cfg.cpus_per_worker,
                                compute=ray.data.ActorPoolStrategy(min_size=self.min_actors, max_size=self.max_actors),
                                runtime_env={"env_vars": hooks} if hooks else None)
            for row in ds.iter_rows():
                self.stats.batches_read_by_model_process += int(row["read_here"])
                if row["precision"] not in self.stats.precision.split("+"):  # auto resolves on each node
                    self.stats.precision = "+".join(filter(None, (self.stats.precision, str(row["precision"]))))
                count = int(row["count"])
                error = pickle.loads(row["error"]) if row["error"] else None
                yield BatchResult(int(row["frame"]), int(row["start"]), np.asarray(row["window_id"][:count]),
                                  None if error else pickle.loads(row["detections"]), empty=int(row["empty"]),
                                  seconds=float(row["seconds"]), error=error, restarted=int(row["restarted"]))
        except TilerError:
            raise
        except Exception as exc:  # Ray wraps errors raised in tasks and actors; report ours as themselves
            inner = _tiler_cause(exc)
            if inner is not None:
                raise inner from None
            raise TilerError(f"ray job failed: {type(exc).__name__}: {_last_line(exc)}") from exc
        finally:
            self.stats.add_time("predict", time.perf_counter() - t)


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
