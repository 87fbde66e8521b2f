"""What a job returns: merged detections, their classes and georeferencing, and run statistics."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import JobConfig
from .detections import Detections
from .georef import Georeferencer
from .writers import write_detections


@dataclass
class JobStats:
    runner: str = "local"
    windows_planned: int = 0
    windows_skipped: int = 0  # entirely nodata by the coarse mask, never read
    windows_empty: int = 0  # read, but held no data, so the model did not run
    windows_run: int = 0
    raw_detections: int = 0
    kept_detections: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    workers: int = 0
    actor_restarts: int = 0

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

    def __len__(self) -> int:
        return len(self.detections)

    @property
    def georeferencer(self) -> Georeferencer | None:
        return Georeferencer(self.transform, self.crs) if self.transform and self.crs is not None else None

    def class_counts(self) -> dict[str, int]:
        ids, counts = np.unique(self.detections.class_id, return_counts=True)
        return {self.names.get(int(i), str(int(i))): int(c) for i, c in zip(ids, counts)}

    def to_file(self, path: str | os.PathLike) -> Path:
        """Write GeoJSON (or GeoJSONSeq by suffix) atomically."""
        meta = {"source": os.path.basename(self.config.source), "model": os.path.basename(self.config.model),
                "task": self.task, "patch_size": list(self.config.patch_size), "overlap": list(self.config.overlap)}
        t = time.perf_counter()
        out = write_detections(path, self.detections, self.names, self.georeferencer, meta)
        self.stats.add_time("write", time.perf_counter() - t)
        return out

    def quicklook(self, path: str | os.PathLike, raster: str | os.PathLike | None = None, max_size: int = 4096,
                  window=None) -> Path:
        """Write a PNG of the raster (`config.source` by default; `window` x0,y0,x1,y1 in its pixels), read
        decimated to at most `max_size` px on its longer side, with every detection's outline in its class
        colour. See `tiler.quicklook.write_quicklook`."""
        from .quicklook import write_quicklook

        bands = self.config.bands if raster is None else None
        return write_quicklook(path, raster if raster is not None else self.config.source, self.detections,
                               max_size, window, bands)

    def to_geodataframe(self):
        """A geopandas GeoDataFrame (EPSG:4326, or no CRS for pixel-space images). Needs geopandas."""
        try:
            import geopandas as gpd
        except ImportError:
            raise ImportError("to_geodataframe() needs geopandas: pip install 'tiler[geo]'") from None

        dets = self.detections
        geo = self.georeferencer
        if geo is not None:
            from .georef import global_lonlat

            geoms = dets.with_coords(global_lonlat(dets, geo)).geometries()
        else:
            geoms = dets.geometries()
        b = dets.bounds()
        return gpd.GeoDataFrame(
            {"class_id": dets.class_id, "class_name": [self.names.get(int(c), str(c)) for c in dets.class_id],
             "score": dets.score, "x0": b[:, 0], "y0": b[:, 1], "x1": b[:, 2], "y1": b[:, 3]},
            geometry=list(geoms), crs="EPSG:4326" if geo is not None else None)

    def summary(self) -> str:
        s = self.stats
        classes = ", ".join(f"{n} {c}" for c, n in sorted(self.class_counts().items(), key=lambda kv: -kv[1]))
        return (f"{len(self)} objects ({classes or 'none'}) from {s.raw_detections} raw detections; "
                f"{s.windows_run}/{s.windows_planned} windows run, {s.windows_skipped + s.windows_empty} nodata "
                f"skipped; {s.seconds.get('total', 0):.1f} s ({s.runner})")
