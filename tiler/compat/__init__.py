"""Drop-in APIs of other tools, on tiler's engine.

`from tiler.compat import MakeCropsDetectThem, CombineDetections, visualize_results` replaces
`from patched_yolo_infer import ...` (see `patched_yolo_infer.py` and `functions_extra.py` for what differs and why)."""

from ..visualize import visualize_results
from .functions_extra import (
    auto_calculate_crop_values,
    basic_crop_size_calculation,
    create_masks_from_polygons,
    get_crops,
    visualize_results_usual_yolo_inference,
)
from .patched_yolo_infer import CombineDetections, CropElement, MakeCropsDetectThem

__all__ = [
    "visualize_results_usual_yolo_inference", "get_crops", "visualize_results", "create_masks_from_polygons",
    "basic_crop_size_calculation", "auto_calculate_crop_values", "MakeCropsDetectThem", "CombineDetections",
    "CropElement",
]
