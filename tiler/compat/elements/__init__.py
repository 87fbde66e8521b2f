"""patched_yolo_infer's deep import path for `CropElement` (see `nodes/`)."""
