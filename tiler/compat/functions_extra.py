"""patched_yolo_infer's helper functions (its ``functions_extra`` module), on tiler's grid and predictor.

Differences from the reference (1.3.10), each for a fault of its own:
- `get_crops` uses tiler's edge-shifted grid: every pixel is covered and nothing is resized (`resize` is
  accepted and ignored; the reference leaves the right and bottom strips out by default).
- `create_masks_from_polygons` gives an empty mask for an empty polygon (the reference repeats the previous
  polygon's mask, or raises when the first is empty); float polygons are rounded, not truncated.
- `auto_calculate_crop_values` and `visualize_results_usual_yolo_inference` need a model (a path or a loaded
  Ultralytics model): nothing is downloaded. Crop sizes are never 0.
- `visualize_results_usual_yolo_inference` draws tiler's exact outlines, and rotated boxes for OBB models.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError
from ..grid import plan_windows
from ..model import Predictor
from ..visualize import _polygon_points, visualize_results


def _whole_image_detections(image: np.ndarray, model, imgsz: int, conf: float, iou: float,
                            classes=None, extra: dict | None = None):
    """One forward pass over the whole BGR image (letterboxed to `imgsz`, as Ultralytics' predict does)."""
    if model is None:
        raise ConfigError("a model is required (a .pt path or a loaded Ultralytics model); tiler never downloads one")
    predictor = Predictor(model, conf=conf, iou=iou, imgsz=imgsz, classes=classes, extra_args=extra)
    return predictor, predictor.predict([np.ascontiguousarray(image[..., ::-1])])


def get_crops(image_full, shape_x: int, shape_y: int, overlap_x=15, overlap_y=15, show=False, save_crops=False,
              save_folder="crops_folder", start_name="image", resize=False) -> list[np.ndarray]:
    """Crops (views, row-major) of tiler's grid over the image; overlaps in percent. With `save_crops`, PNGs
    ``{save_folder}/{start_name}_crop_{k}.png``, k from 1."""
    from .patched_yolo_infer import _percent, _show_grid

    h, w = image_full.shape[:2]
    grid = plan_windows(w, h, (shape_x, shape_y), (_percent(overlap_x, "overlap_x"), _percent(overlap_y, "overlap_y")))
    crops = [image_full[y:y + shape_y, x:x + shape_x] for x, y in grid.origins().tolist()]
    if save_crops:
        os.makedirs(save_folder, exist_ok=True)
        for k, crop in enumerate(crops, start=1):
            cv2.imwrite(str(Path(save_folder) / f"{start_name}_crop_{k}.png"), crop)
    if show:
        _show_grid(crops, grid.n_rows, grid.n_cols, "Number of generated images:")
    return crops


def create_masks_from_polygons(polygons, image) -> list[np.ndarray]:
    """One uint8 0/1 mask of the image's size per polygon ((K, 2) x, y)."""
    h, w = image.shape[:2]
    masks = []
    for polygon in polygons:
        mask = np.zeros((h, w), dtype=np.uint8)
        points = _polygon_points(polygon)
        if len(points):
            cv2.fillPoly(mask, [points], 1)
        masks.append(mask)
    return masks


def basic_crop_size_calculation(width, height) -> tuple[int, int, int, int]:
    """(crop_x, crop_y, overlap_x %, overlap_y %) from the image's pixel count, as the reference."""
    total = width * height
    if total <= 640 * 480:
        return width, height, 0, 0
    if total < 720 * 576:
        return int(width / 1.25), int(height / 1.25), 50, 50
    if total < 1920 * 1080:
        return width // 2, height // 2, 40, 40
    if total < 3840 * 2160:
        return width // 3, height // 3, 30, 30
    if total < 7680 * 4320:
        return width // 4, height // 4, 25, 25
    return width // 5, height // 5, 25, 25


def auto_calculate_crop_values(image, mode="network_based", model=None, classes_list=None, conf=0.25
                               ) -> tuple[int, int, int, int]:
    """Crop size and overlap (percent) for `image`: from its resolution (``mode="resolution_based"``), or
    (any other mode) from the largest object a whole-image pass of `model` finds, by the reference's rules."""
    h, w = image.shape[:2]
    if mode == "resolution_based":
        return basic_crop_size_calculation(w, h)
    _, dets = _whole_image_detections(image, model, 640, conf, 0.75, classes_list)
    if not len(dets):
        return basic_crop_size_calculation(w, h)
    b = dets.box_bounds()
    max_w, max_h = float((b[:, 2] - b[:, 0]).max()), float((b[:, 3] - b[:, 1]).max())
    m = max(max_w, max_h)
    if w > h:
        cx, cy = int(3 * m), int(2 * m)
    elif h > w:
        cx, cy = int(2 * m), int(3 * m)
    else:
        cx = cy = int(2.5 * m)
    cx, cy = max(cx, 1), max(cy, 1)  # the reference divides by zero for a tiny largest object
    ov_x, ov_y = min(int(max_w / cx * 1.2 * 100), 70), min(int(max_h / cy * 1.2 * 100), 70)
    if h // cy > 7:
        cy = h // 7
    if w // cx > 7:
        cx = w // 7
    if h / cy < 1.25:
        cy, ov_y = h, 0
    if w / cx < 1.25:
        cx, ov_x = w, 0
    return cx, cy, ov_x, ov_y


def visualize_results_usual_yolo_inference(img, model, imgsz=640, conf=0.25, iou=0.7, segment=False,  # noqa: B006
                                           show_boxes=True, show_class=True, fill_mask=False, alpha=0.3,
                                           color_class_background=(0, 0, 255), color_class_text=(255, 255, 255),
                                           thickness=4, font=cv2.FONT_HERSHEY_SIMPLEX, font_scale=1.5,
                                           delta_colors=3, dpi=150, random_object_colors=False,
                                           show_confidences=False, axis_off=True, show_classes_list=[],
                                           list_of_class_colors=None, return_image_array=False,
                                           inference_extra_args=None):
    """Run `model` once over the whole image and draw the result with `visualize_results` (same arguments as
    the reference). Returns the BGR array with ``return_image_array=True``, else shows it."""
    from .patched_yolo_infer import _int_boxes, _int_polygons, _outlines

    predictor, dets = _whole_image_detections(img, model, imgsz, conf, iou, None, dict(inference_extra_args or {}))
    obb = predictor.task == "obb"
    polygons = _int_polygons(_outlines(dets.geometries())) if (segment or obb) else []
    ids = dets.class_id.astype(int).tolist()
    return visualize_results(
        img, _int_boxes(dets.box_bounds()), ids, confidences=list(dets.score.astype(np.float32)),
        classes_names=[predictor.names[c] for c in ids], polygons=polygons, segment=segment, show_boxes=show_boxes,
        show_class=show_class, fill_mask=fill_mask, alpha=alpha, color_class_background=color_class_background,
        color_class_text=color_class_text, thickness=thickness, font=font, font_scale=font_scale,
        delta_colors=delta_colors, dpi=dpi, random_object_colors=random_object_colors,
        show_confidences=show_confidences, axis_off=axis_off, show_classes_list=show_classes_list,
        list_of_class_colors=list_of_class_colors, return_image_array=return_image_array, obb=obb)


__all__ = ["get_crops", "create_masks_from_polygons", "basic_crop_size_calculation", "auto_calculate_crop_values",
           "visualize_results_usual_yolo_inference"]
