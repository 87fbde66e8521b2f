"""`from tiler.compat.elements.CropElement import CropElement`, as in patched_yolo_infer."""

from ..patched_yolo_infer import CropElement

__all__ = ["CropElement"]
