"""What a job returns: merged detections, their classes and georeferencing, and run statistics."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .config import JobConfig
from .detections import Detections
from .georef import Georeferencer
from .writers import write_detections


def write_meta(cfg: JobConfig, task: str, n_frames: int = 1) -> dict:
    """What an output records of the job as a whole (GeoJSON's `tiler` member, layer metadata)."""
    head = ({"source": os.path.basename(cfg.source)} if isinstance(cfg.source, str) and n_frames == 1
            else {"frames": n_frames})
    return {**head, "model": os.path.basename(cfg.model.rstrip("/")), "task": task,
            "patch_size": list(cfg.patch_size), "overlap": list(cfg.overlap)}


def frame_provenance(cfg: JobConfig, model_sha256: str) -> dict:
    """What every feature of a frame (`cfg.source`) records of where it came from (its window is per feature)."""
    from . import __version__

    src = cfg.source
    src = os.path.abspath(src) if os.path.exists(src) else src  # a local file by its full path; URIs as given
    return {"source": src, "model": os.path.basename(cfg.model.rstrip("/")), "model_sha256": model_sha256[:12],
            "tiler_version": __version__}


def write_report(path: str | os.PathLike, report: dict) -> Path:
    """A run report as JSON, written atomically."""
    import json

    from .writers import atomic_text, check_writable

    check_writable(path)
    with atomic_text(path) as f:
        json.dump(report, f, indent=1)
    return Path(path)


def class_counts(dets: Detections, names: dict[int, str]) -> dict[str, int]:
    """Detections per class name."""
    ids, counts = np.unique(dets.class_id, return_counts=True)
    return {names.get(int(i), str(int(i))): int(c) for i, c in zip(ids, counts)}


@dataclass
class JobStats:
    runner: str = "local"
    windows_planned: int = 0
    windows_skipped: int = 0  # entirely nodata by the coarse mask, never read
    windows_empty: int = 0  # read, but held no data, so the model did not run
    windows_run: int = 0
    windows_resumed: int = 0  # finished by an earlier run of a resumed job: taken from its checkpoints
    frames: int = 1
    frames_failed: int = 0
    raw_detections: int = 0
    kept_detections: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    workers: int = 0
    actor_restarts: int = 0
    # Ray: model batches whose windows were read in the model's own process (Ray Data fuses reads into CPU
    # actors; GPU actors get their patches from separate CPU read tasks, so this stays 0 for them)
    batches_read_by_model_process: int = 0
    read_threads: int = 0  # in-process runner: threads reading windows
    read_ahead: int = 0  # ... and batches they read ahead of the model (0: each when the model needs it)
    backend: str = "torch"
    # the network's arithmetic: fp32, fp16, bf16, or auto (an export's runtime chose); Ray: each one its actors
    # used, joined by +
    precision: str = ""
    raw_per_class: dict[str, int] = field(default_factory=dict)
    kept_per_class: dict[str, int] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        return d


@dataclass
class JobResult:
    detections: Detections  # merged, global pixel coordinates
    names: dict[int, str]
    task: str
    transform: object  # rasterio Affine, or False/None when the source has no georeferencing
    crs: object
    stats: JobStats
    config: JobConfig
    frames: list[dict] | None = None  # the run report's per-frame record (set by the job)
    georef: Georeferencer | None = None  # how pixels map to the CRS: GCPs or RPCs (default: `transform`)

    def __len__(self) -> int:
        return len(self.detections)

    @property
    def georeferencer(self) -> Georeferencer | None:
        if self.georef is not None:
            return self.georef
        return Georeferencer(self.transform, self.crs) if self.transform and self.crs is not None else None

    def class_counts(self) -> dict[str, int]:
        return class_counts(self.detections, self.names)

    @cached_property
    def model_sha256(self) -> str:
        """SHA-256 of the model (file, or export folder), computed once per result."""
        from .model.backends import model_digest

        return model_digest(self.config.model)

    @cached_property
    def provenance(self) -> dict:
        """What every feature records of where it came from (its window is per feature)."""
        return frame_provenance(self.config, self.model_sha256)

    def to_file(self, path: str | os.PathLike, crs: str | None = None, provenance: bool | None = None) -> Path:
        """Write the features atomically, the format from the suffix (.geojson, .geojsonl, .gpkg, .fgb, .parquet).
        `crs` (default: the job's, auto): auto (GeoJSON: WGS84, others: the raster's own), native, wgs84, or
        EPSG:xxxx; `provenance` (default: the job's, on) adds source, window, model, model_sha256, tiler_version."""
        from .config import parse_crs

        meta = write_meta(self.config, self.task)
        if self.georeferencer is not None:
            meta["georeferencing"] = self.georeferencer.kind  # affine (geotransform), gcp or rpc
        t = time.perf_counter()
        out = write_detections(path, self.detections, self.names, self.georeferencer, meta,
                               crs=parse_crs(crs if crs is not None else self.config.crs),
                               provenance=self.provenance if self._wants_provenance(provenance) else None)
        self.stats.add_time("write", time.perf_counter() - t)
        return out

    def to_arrow(self, crs: str = "native", provenance: bool | None = None):
        """A pyarrow Table, one row per feature: attributes, provenance, and `geometry` as WKB in `crs`
        (native: the raster's own, the default; wgs84; EPSG:xxxx; pixel coordinates without georeferencing).
        The CRS is in the table's `geo` metadata (GeoParquet), as PROJJSON."""
        import json

        from .config import parse_crs
        from .writers import FeatureSet, output_crs
        from .writers.arrow import encode_geometries, feature_table
        from .writers.geoparquet import geo_metadata

        geo = self.georeferencer
        fs = FeatureSet.build(self.detections, self.names, geo,
                              output_crs("geoparquet", parse_crs(crs), geo.crs if geo is not None else None),
                              self.provenance if self._wants_provenance(provenance) else None)
        enc = encode_geometries(fs, multi=False)
        table = feature_table(fs, enc)
        return table.replace_schema_metadata({b"geo": json.dumps(geo_metadata(fs, enc)).encode()})

    def _wants_provenance(self, provenance: bool | None) -> bool:
        return self.config.provenance if provenance is None else bool(provenance)

    def write_report(self, path: str | os.PathLike) -> Path:
        """The run report, as JSON, written atomically: see `report()`."""
        return write_report(path, self.report())

    def report(self) -> dict:
        """Everything about the run: windows planned/skipped/run, raw and kept detections per class, seconds per
        stage, runner, backend, workers and restarts, the full job configuration, input and model checksums
        (SHA-256 of local files; None for remote URIs), tiler version."""
        from . import __version__

        return {"tiler_version": __version__, "task": self.task, "classes": {str(k): v for k, v in self.names.items()},
                "stats": self.stats.to_dict(), "config": self.config.to_dict(),
                "input_sha256": _local_sha256(self.config.source), "model_sha256": self.model_sha256,
                "georeferenced": self.georeferencer is not None,
                "crs": self.georeferencer.crs.to_string() if self.georeferencer is not None else None,
                "frames": self.frames}

    def quicklook(self, path: str | os.PathLike, raster: str | os.PathLike | None = None, max_size: int = 4096,
                  window=None) -> Path:
        """Write a PNG of the raster (`config.source` by default; `window` x0,y0,x1,y1 in its pixels), read
        decimated to at most `max_size` px on its longer side, with every detection's outline in its class
        colour. See `tiler.quicklook.write_quicklook`."""
        from .quicklook import write_quicklook

        bands = self.config.bands if raster is None else None
        return write_quicklook(path, raster if raster is not None else self.config.source, self.detections,
                               max_size, window, bands)

    def to_geodataframe(self, crs: str = "wgs84", provenance: bool | None = None):
        """A geopandas GeoDataFrame (`crs`: wgs84 by default, native, EPSG:xxxx; no CRS for pixel-space images),
        with the same columns as `to_arrow()`. Needs geopandas."""
        try:
            import geopandas as gpd
        except ImportError:
            raise ImportError("to_geodataframe() needs geopandas: pip install 'tiler[geo]'") from None

        import json

        import shapely

        table = self.to_arrow(crs, provenance)
        geo = json.loads(table.schema.metadata[b"geo"])["columns"]["geometry"]
        geoms = shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False)) if len(table) else []
        return gpd.GeoDataFrame(table.drop(["geometry"]).to_pandas(), geometry=list(geoms), crs=geo["crs"])

    def summary(self) -> str:
        s = self.stats
        classes = ", ".join(f"{n} {c}" for c, n in sorted(self.class_counts().items(), key=lambda kv: -kv[1]))
        return (f"{len(self)} objects ({classes or 'none'}) from {s.raw_detections} raw detections; "
                f"{s.windows_run}/{s.windows_planned} windows run, {s.windows_skipped + s.windows_empty} nodata "
                f"skipped; {s.seconds.get('total', 0):.1f} s ({s.runner})")


def _local_sha256(uri: str) -> str | None:
    """SHA-256 of a local file (read in chunks); None for a GDAL URI or anything that is not a plain file."""
    from .model.backends import file_sha256

    return file_sha256(uri) if os.path.isfile(uri) else None


@dataclass
class SurveyResult:
    """What a job over several frames returns. Its features were written (`out`: one dataset, or one file per
    frame in `out_dir`) frame by frame and are not held here; `results` holds each frame's `JobResult` only
    when the job wrote nothing (the Python API without an output)."""

    frame_list: list  # survey.Frame, in input order
    names: dict[int, str]
    task: str
    stats: JobStats
    config: JobConfig
    results: list[JobResult] | None = None
    out: Path | None = None
    model_sha256: str = ""  # hashed once, for the features' provenance and the report
    frames: list[dict] | None = None  # the run report's per-frame record

    def __len__(self) -> int:
        return self.stats.kept_detections

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(source, error) of every frame that failed."""
        return [(f.uri, f.error) for f in self.frame_list if not f.ok]

    @property
    def partial(self) -> bool:
        return bool(self.failed)

    def report(self) -> dict:
        """The run: totals, seconds per stage, the configuration and model checksum, and every frame (source,
        status, error, windows planned / run / resumed, detections, seconds)."""
        from . import __version__

        return {"tiler_version": __version__, "task": self.task, "classes": {str(k): v for k, v in self.names.items()},
                "stats": self.stats.to_dict(), "config": self.config.to_dict(),
                "model_sha256": self.model_sha256, "frames": self.frames,
                "failed": [{"source": s, "error": e} for s, e in self.failed]}

    def write_report(self, path: str | os.PathLike) -> Path:
        """The run report, as JSON, written atomically: see `report()`."""
        return write_report(path, self.report())

    def summary(self) -> str:
        s = self.stats
        counts = ", ".join(f"{n} {c}" for c, n in sorted(s.kept_per_class.items(), key=lambda kv: -kv[1]))
        failed = f", {s.frames_failed} failed" if s.frames_failed else ""
        resumed = f", {s.windows_resumed} resumed from checkpoints" if s.windows_resumed else ""
        return (f"{s.kept_detections} objects ({counts or 'none'}) from {s.frames} frames{failed}; "
                f"{s.windows_run}/{s.windows_planned} windows run{resumed}; {s.seconds.get('total', 0):.1f} s "
                f"({s.runner})")
