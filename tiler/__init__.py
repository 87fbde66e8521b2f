"""tiler: Ultralytics detect / OBB / segment models over gigapixel rasters, merged into GeoJSON."""

from .config import JobConfig
from .errors import ConfigError, ModelError, OutputError, RasterError, TilerError, WindowReadError

__all__ = ["TileJob", "JobConfig", "JobResult", "JobStats", "TilerError", "ConfigError", "RasterError",
           "ModelError", "OutputError", "WindowReadError"]
__version__ = "0.1.0"

# The job API (and with it rasterio, pyproj and the writers) is imported on first use, so that
# `tiler.compat`, which works on in-memory images, does not pay for it at import (PEP 562).
_LAZY = {"TileJob": ".job", "JobResult": ".result", "JobStats": ".result"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
