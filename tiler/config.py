"""One typed job configuration: every parameter, validated once, with one-line errors."""

from __future__ import annotations

import math
import os
import re
from numbers import Integral, Real
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from .errors import ConfigError
from .merge import MATCH_METRICS, MERGE_METHODS, SORTERS
from .model.backends import BACKENDS
from .model.predictor import PRECISIONS

RUNNERS = ("auto", "local", "ray")
MERGES = ("auto", *MERGE_METHODS)
# merge method by task when merge="auto" (measured: bench/README.md, "Choosing the merge")
# detect too since its model is the segment network (it finds large objects, so union joins their pieces)
AUTO_MERGE = {"detect": "union", "obb": "suppress", "segment": "union"}
DEFAULT_SIMPLIFY = 0.25  # pixels: segmentation outlines (measured: bench/README.md, "Outline simplification")


def parse_size(value: Any, name: str = "patch_size") -> tuple[int, int]:
    """640 -> (640, 640); '700x600' or (700, 600) -> (width, height)."""
    original = value
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"{name} must be N or WxH, got {value!r}") from None
        value = nums[0] if len(nums) == 1 else tuple(nums)
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a positive integer or (width, height), got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    try:
        w, h = (int(v) for v in value)
        if any(int(v) != v for v in value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive integer or (width, height), got {value!r}") from None
    if w <= 0 or h <= 0:
        raise ConfigError(f"{name} must be positive, got {original!r}")
    return w, h


def parse_overlap(value: Any) -> tuple[float, float]:
    if isinstance(value, str):
        parts = value.replace("x", ",").split(",")
        try:
            value = tuple(float(p) for p in parts)
        except ValueError:
            raise ConfigError(f"overlap must be a fraction in [0, 1), got {value!r}") from None
        value = value[0] if len(value) == 1 else value
    try:
        vals = (value, value) if isinstance(value, Real) else tuple(value)
    except TypeError:
        raise ConfigError(f"overlap must be a fraction in [0, 1) or a pair of them, got {value!r}") from None
    if len(vals) != 2 or not all(isinstance(v, Real) and not isinstance(v, bool) for v in vals):
        raise ConfigError(f"overlap must be a fraction in [0, 1) or a pair of them, got {value!r}")
    for v in vals:
        if not (0 <= v < 1) or math.isnan(v):
            raise ConfigError(f"overlap must be in [0, 1), got {v!r}")
    return float(vals[0]), float(vals[1])


def _is_int(v: Any) -> bool:
    """An integer value, not a bool (an Integral in Python, but never meant as a count or size)."""
    return isinstance(v, Integral) and not isinstance(v, bool)


def parse_int_list(value: Any, name: str) -> tuple[int, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{name} must be a comma-separated list of integers, got {value!r}") from None
    if _is_int(value):
        value = [value]
    try:
        out = tuple(_whole(v, name) for v in value)
    except TypeError:
        raise ConfigError(f"{name} must be a list of integers, got {value!r}") from None
    if not out:
        return None
    return out


def _whole(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (Integral, str, float)):
        raise ConfigError(f"{name} must be integers, got {v!r}")
    try:
        f = float(v)
    except ValueError:
        raise ConfigError(f"{name} must be integers, got {v!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ConfigError(f"{name} must be integers, got {v!r}")
    return int(f)


BATCH_PIXELS = 16 * 320 * 320  # model-input pixels per forward pass when batch_size is not given


def auto_batch_size(imgsz: int) -> int:
    """Patches per forward pass for square model inputs of `imgsz`: about 1.6 Mpx per batch.

    Measured on a 2-core CPU (bench/README.md): per-patch time is lowest at 16 patches of 320 px and at 4 of
    640 px; bigger batches spill the activations out of the CPU caches and get slower again. The batch
    size also fixes the order of floating-point sums, so it is decided from the job alone (never from the
    machine) to keep every runner's output identical."""
    return max(1, min(64, BATCH_PIXELS // (imgsz * imgsz)))


def parse_crs(value) -> str:
    """auto, native, wgs84, or a CRS pyproj understands (normalised to its EPSG code where it has one)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"crs must be auto, native, wgs84 or a CRS such as EPSG:32633, got {value!r}")
    v = value.strip()
    if v.lower() in ("auto", "native", "wgs84"):
        return v.lower()
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_user_input(v)
    except CRSError:
        raise ConfigError(f"crs must be auto, native, wgs84 or a CRS such as EPSG:32633, got {value!r}") from None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else v


def _parse_source(value: Any) -> str | tuple[str, ...]:
    """A path or URI, or a list of them (a survey); a list of one is that one."""
    if isinstance(value, (str, os.PathLike)):
        value = os.fspath(value)
        if not value:
            raise ConfigError("source must be given")
        return value
    try:
        items = tuple(os.fspath(v) for v in value)
    except TypeError:
        raise ConfigError(f"source must be a path, a URI or a list of them, got {value!r}") from None
    if not items or not all(items):
        raise ConfigError("source must be given" if not items else "source holds an empty path")
    return items[0] if len(items) == 1 else items


# what decides the detections, so what a resumed run must share with the one it continues
RESULT_FIELDS = ("patch_size", "overlap", "bands", "stretch", "gsd", "height", "dem", "conf", "iou", "imgsz",
                 "classes", "max_det", "batch_size", "device", "precision", "backend", "nms_threshold", "match_metric",
                 "class_agnostic", "sorter", "sorter_bins", "merge", "simplify", "largest_part", "keep_masks",
                 "dedup_frames", "coarse_factor")


@dataclass(frozen=True)
class JobConfig:
    """Every parameter of a tiling job. Construct it, and it is valid or raises ConfigError."""

    source: str | tuple[str, ...]  # one raster, or the frames of a survey (see tiler.io.survey.expand_inputs)
    model: str
    out: str | None = None  # one dataset: the raster's, or the whole survey's
    out_dir: str | None = None  # instead of `out`: one file per frame, named after it, in `out_format`
    out_format: str = "geojson"
    # tiling
    patch_size: tuple[int, int] = (640, 640)
    overlap: tuple[float, float] = (0.25, 0.25)
    bands: tuple[int, ...] | None = None  # 1-based RGB; default: by colour interpretation, else 1,2,3 (io/bands.py)
    stretch: str | None = None  # 8-bit mapping (io/bands.py); default: none for uint8, percentile:2,98 otherwise
    gsd: float | None = None  # metres per pixel the model was trained at: each frame's patch covers imgsz x gsd
    coarse_factor: int | None = None  # also a coarse pass: windows this many times the patch, read decimated
    height: float | None = None  # RPC rasters: constant height above the ellipsoid, metres
    dem: str | None = None  # RPC rasters: a DEM raster giving the heights
    stac_asset: str = "visual"  # the asset of STAC items that is read
    # model
    conf: float = 0.25
    iou: float = 0.7
    imgsz: int | None = None  # default: the larger patch side (no resizing of patches)
    classes: tuple[int, ...] | None = None
    max_det: int = 3000  # per patch: dense patches (hundreds of ships) must not be capped
    batch_size: int | None = None  # default: auto_batch_size(model input size)
    device: str = "auto"
    threads: int | None = None  # torch threads; default all cores
    precision: str = "auto"  # auto | fp32 | fp16 (CUDA) | bf16 (CPU); auto: bf16 on a CPU that has it natively
    backend: str = "auto"  # the model file's own runtime (torch for .pt), or export a .pt to another (backends.py)
    # merge
    nms_threshold: float = 0.5
    match_metric: str = "ios"
    class_agnostic: bool = False
    sorter: str = "score"
    sorter_bins: int = 10  # confidence bins of the intelligent sorter
    merge: str = "auto"  # suppress (greedy NMS) | union (join fragments of one object) | auto: by task
    # segmentation outlines
    simplify: float = DEFAULT_SIMPLIFY  # tolerance in pixels; 0 keeps every marching-squares vertex
    largest_part: bool = False  # keep only the largest polygon of a mask with several parts
    keep_masks: bool = False  # carry each object's bitmap (crop + offset) in the result
    # I/O
    gdal_cache_mb: int | None = None  # default: sized to the raster (see RasterSource.block_cache_bytes)
    read_threads: int | None = None  # in-process runner: readers ahead of the model (default: runners/local.py)
    progress: bool = True
    crs: str = "auto"  # output CRS: auto (GeoJSON: WGS84; other formats: the raster's own), native, wgs84, EPSG:xxxx
    provenance: bool = True  # source, window, model, model_sha256, tiler_version on every feature
    report: str | None = None  # run report (JSON) path
    # surveys and durability
    dedup_frames: bool | None = None  # merge one object seen in overlapping frames; None: when frames overlap
    fail_fast: bool = False  # stop at the first frame that fails (else: record it, go on, exit 3)
    checkpoint: bool = True  # checkpoint finished work (when there is an output to put the work dir beside)
    work_dir: str | None = None  # checkpoints; default beside the output (OUT.tiler-work)
    resume: bool = False  # continue the run whose checkpoints are in work_dir
    keep_work: bool = False  # keep work_dir after success
    # execution
    runner: str = "auto"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("source", _parse_source(self.source))
        if not self.model:
            raise ConfigError("model must be given")
        set_("model", os.fspath(self.model))
        for name in ("out", "out_dir", "report", "work_dir"):
            if getattr(self, name) is not None:
                set_(name, os.fspath(getattr(self, name)))
        if self.out is not None and self.out_dir is not None:
            raise ConfigError("give out (one dataset) or out_dir (one file per frame), not both")
        from .writers.base import FORMATS

        fmt = str(self.out_format).lower().lstrip(".")
        if f".{fmt}" not in FORMATS:
            raise ConfigError(f"out_format must be one of {', '.join(s[1:] for s in FORMATS)}, got {self.out_format!r}")
        set_("out_format", fmt)
        if self.resume and not self.checkpoint:
            raise ConfigError("resume needs checkpoints: it cannot be combined with checkpoint=false")
        if self.dedup_frames is not None and not isinstance(self.dedup_frames, bool):
            raise ConfigError(f"dedup_frames must be true, false or unset (auto), got {self.dedup_frames!r}")
        set_("crs", parse_crs(self.crs))
        set_("patch_size", parse_size(self.patch_size))
        set_("overlap", parse_overlap(self.overlap))
        set_("bands", parse_int_list(self.bands, "bands"))
        from .io.bands import parse_stretch

        if self.stretch is not None:
            set_("stretch", str(parse_stretch(self.stretch)))
        for name, positive in (("gsd", True), ("height", False)):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or (positive and v <= 0):
                raise ConfigError(f"{name} must be a {'positive ' if positive else ''}number of metres, got {v!r}")
            set_(name, float(v))
        if self.dem is not None:
            set_("dem", os.fspath(self.dem))
        if not isinstance(self.stac_asset, str) or not self.stac_asset:
            raise ConfigError(f"stac_asset must be an asset name, got {self.stac_asset!r}")
        if self.bands is not None and any(b < 1 for b in self.bands):
            raise ConfigError(f"bands are 1-based, got {self.bands}")
        if self.bands is not None and len(self.bands) not in (1, 3):
            raise ConfigError(f"bands must name 1 or 3 bands, got {len(self.bands)}")
        set_("classes", parse_int_list(self.classes, "classes"))
        if self.classes is not None and any(c < 0 for c in self.classes):
            raise ConfigError(f"classes must be >= 0, got {self.classes}")
        for name in ("conf", "iou", "nms_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Real) or not (0 <= v <= 1):
                raise ConfigError(f"{name} must be in [0, 1], got {v!r}")
            set_(name, float(v))
        if self.imgsz is not None:
            if not _is_int(self.imgsz) or self.imgsz < 32:
                raise ConfigError(f"imgsz must be an integer >= 32, got {self.imgsz!r}")
            set_("imgsz", int(self.imgsz))
        sized_by_the_job = ("batch_size", "gdal_cache_mb", "threads", "read_threads")  # None: a default chosen later
        for name in ("max_det", "sorter_bins", *sized_by_the_job):
            v = getattr(self, name)
            if v is None and name in sized_by_the_job:
                continue
            if not _is_int(v) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if self.match_metric not in MATCH_METRICS:
            raise ConfigError(f"match_metric must be one of {', '.join(MATCH_METRICS)}, got {self.match_metric!r}")
        if self.sorter not in SORTERS:
            raise ConfigError(f"sorter must be one of {', '.join(SORTERS)}, got {self.sorter!r}")
        if self.merge not in MERGES:
            raise ConfigError(f"merge must be one of {', '.join(MERGES)}, got {self.merge!r}")
        v = self.simplify
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or not 0 <= v <= 10:
            raise ConfigError(f"simplify must be a tolerance in pixels between 0 and 10, got {v!r}")
        set_("simplify", float(v))
        for name in ("largest_part", "keep_masks", "class_agnostic", "progress", "provenance", "fail_fast",
                     "checkpoint", "resume", "keep_work"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.coarse_factor is not None:
            v = self.coarse_factor
            if not _is_int(v) or not 2 <= v <= 16:
                raise ConfigError(f"coarse_factor must be an integer from 2 to 16 (or unset), got {v!r}")
            if self.keep_masks:
                raise ConfigError("coarse_factor cannot be combined with keep_masks: the coarse pass's masks are not "
                                  "full-resolution bitmaps")
            set_("coarse_factor", int(v))
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ConfigError(f"backend must be auto or one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.runner not in RUNNERS:
            raise ConfigError(f"runner must be one of {', '.join(RUNNERS)}, got {self.runner!r}")
        if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+|\d+", str(self.device)):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.workers is not None and (not _is_int(self.workers) or self.workers < 1):
            raise ConfigError(f"workers must be an integer >= 1, got {self.workers!r}")
        for name, ok in (("gpus_per_worker", lambda v: v >= 0), ("cpus_per_worker", lambda v: v > 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or not ok(v):
                raise ConfigError(f"{name} must be a number {'>= 0' if name[0] == 'g' else '> 0'}, got {v!r}")
            set_(name, float(v))
        if self.gpus_per_worker > 1 and not self.gpus_per_worker.is_integer():
            raise ConfigError(f"gpus_per_worker above 1 must be whole (Ray's rule), got {self.gpus_per_worker}")
        if self.batch_size is None:
            set_("batch_size", auto_batch_size(self.model_imgsz))

    @property
    def sources(self) -> tuple[str, ...]:
        """The inputs as given (a survey's may hold globs, folders and @lists: see `io.survey.expand_inputs`)."""
        return (self.source,) if isinstance(self.source, str) else self.source

    def for_frame(self, uri: str) -> "JobConfig":
        """This job's configuration for one frame of it."""
        return self.replace(source=uri)

    def fingerprint(self) -> dict[str, Any]:
        """The parameters that decide the detections (not where or how they are written, or which runner runs
        them): a run may be resumed only with the same ones."""
        d = self.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if k in RESULT_FIELDS}

    @property
    def model_imgsz(self) -> int:
        """Inference size: patches go to the model at their own size unless imgsz says otherwise."""
        return self.imgsz or max(self.patch_size)

    def merge_method(self, task: str) -> str:
        """The merge this job uses for a model of `task`."""
        return AUTO_MERGE[task] if self.merge == "auto" else self.merge

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "JobConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown job parameter(s): {', '.join(unknown)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> "JobConfig":
        return JobConfig.from_mapping({**self.to_dict(), **changes})
