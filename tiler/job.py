"""The Python API: `TileJob(source, model, **params).run()`."""

from __future__ import annotations

import os
from typing import Any

from .config import JobConfig
from .result import JobResult
from .writers import check_output_path


class TileJob:
    """A tiling job over one raster.

    >>> result = TileJob("scene.tif", "models/tiler-obb.pt", patch_size=320, overlap=0.25).run()
    >>> len(result), result.stats.kept_detections
    >>> result.to_file("scene.geojson")

    Parameters are those of `tiler.config.JobConfig`; they are validated here, before any work.
    """

    def __init__(self, source: str | os.PathLike, model: str | os.PathLike, **params: Any):
        self.config = params.pop("config", None) or JobConfig.from_mapping({"source": source, "model": model,
                                                                            **params})
        if self.config.out:
            check_output_path(self.config.out)

    @classmethod
    def from_config(cls, config: JobConfig) -> "TileJob":
        return cls(config.source, config.model, config=config)

    def run(self) -> JobResult:
        cfg = self.config
        if cfg.runner == "ray":
            from .runners.ray import run_ray  # Ray is imported only when asked for

            result = run_ray(cfg)
        else:
            from .runners.local import run_local

            result = run_local(cfg)
        if cfg.out:
            result.to_file(cfg.out)
        return result
