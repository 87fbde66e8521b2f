"""`from tiler.compat.nodes.MakeCropsDetectThem import MakeCropsDetectThem`, as in patched_yolo_infer."""

from ..patched_yolo_infer import MakeCropsDetectThem

__all__ = ["MakeCropsDetectThem"]
