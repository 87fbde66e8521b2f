"""The Python API: `TileJob(source, model, **params).run()`, over one raster or the frames of a survey."""

from __future__ import annotations

import os
from typing import Any, Callable

from .config import JobConfig
from .result import JobResult, SurveyResult
from .writers import check_output_path, check_writable


class TileJob:
    """A tiling job over one raster, or over many (a survey: a list of paths, URIs, globs, folders, @lists).

    >>> result = TileJob("scene.tif", "models/tiler-obb.pt", patch_size=320, overlap=0.25).run()
    >>> len(result), result.stats.kept_detections
    >>> result.to_file("scene.geojson")
    >>> survey = TileJob(["frames/*.tif"], "models/tiler-obb.pt", out="survey.gpkg").run()
    >>> survey.failed, survey.report()["frames"]

    Parameters are those of `tiler.config.JobConfig`; they are validated here, before any work.
    """

    def __init__(self, source: str | os.PathLike, model: str | os.PathLike, **params: Any):
        self.config = params.pop("config", None) or JobConfig.from_mapping({"source": source, "model": model,
                                                                            **params})
        if self.config.out:
            check_output_path(self.config.out, self.config.crs)
        if self.config.report:
            check_writable(self.config.report)

    @classmethod
    def from_config(cls, config: JobConfig) -> "TileJob":
        return cls(config.source, config.model, config=config)

    def run(self, on_progress: Callable[[int, int], None] | None = None) -> JobResult | SurveyResult:
        """Run, write `out` (or `out_dir`) and `report` if configured, and return the result: a `JobResult` for
        one raster, a `SurveyResult` for several. `on_progress(done, total)` reports windows."""
        from .survey import run_job

        return run_job(self.config, self.runner_name(), on_progress)

    def runner_name(self) -> str:
        """The runner this job uses: as configured, or for "auto", in this process on a single machine, and Ray
        when a cluster is addressed (`address`, or RAY_ADDRESS), `workers` asks for more than one predictor, or
        the machine has several GPUs (one actor each). On one machine Ray only adds its start-up, a second
        model process and its daemons (issue 10 reports 372 s and 2.58 GB against 272 s and 1.26 GB in-process
        on a 32768 x 32768 scene)."""
        cfg = self.config
        if cfg.runner != "auto":
            return cfg.runner
        if cfg.address or os.environ.get("RAY_ADDRESS") or (cfg.workers or 1) > 1:
            return "ray"
        return "ray" if _cuda_devices() > 1 else "local"


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
