"""tiler: Ultralytics detect / OBB / segment models over gigapixel rasters, merged into GeoJSON."""

from .config import JobConfig
from .errors import ConfigError, ModelError, OutputError, RasterError, TilerError, WindowReadError
from .job import TileJob
from .result import JobResult, JobStats

__all__ = ["TileJob", "JobConfig", "JobResult", "JobStats", "TilerError", "ConfigError", "RasterError",
           "ModelError", "OutputError", "WindowReadError"]
__version__ = "0.1.0"
