"""The model stage: an Ultralytics model loaded once, predicting batches of patches into detections.

`predictor.py` is the stage; `_ultralytics.py` holds every use of Ultralytics internals in one place; `masks.py`
turns segmentation prototypes into per-object bitmaps and exact polygons."""

from ._ultralytics import disable_nms_time_limit, set_torch_threads
from .predictor import TASKS, Predictor, load_model, resolve_device

__all__ = ["TASKS", "Predictor", "load_model", "resolve_device", "set_torch_threads", "disable_nms_time_limit"]
