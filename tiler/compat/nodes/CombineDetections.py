"""`from tiler.compat.nodes.CombineDetections import CombineDetections`, as in patched_yolo_infer."""

from ..patched_yolo_infer import CombineDetections

__all__ = ["CombineDetections"]
