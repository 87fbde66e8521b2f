"""Drawing detections: `visualize_results` (patched_yolo_infer's drawing API) and quicklooks of whole results.

`visualize_results` keeps patched_yolo_infer 1.3.10's signature, colours and layout, so code written for it
draws the same picture, with four fixes: `fill_mask` with alpha < 1 is a true alpha blend (the reference adds
the colour on top, brightening), the global `random` state is left alone (the reference reseeds it per
object), `obb=True` draws rotated boxes (the reference crashes on OBB models), and float or empty polygons
are accepted.

Quicklooks of whole results (`quicklook.py`) draw in the same class colours (`class_color`).
"""

from __future__ import annotations

import random
import warnings
from typing import Iterator

import cv2
import numpy as np

from .errors import ConfigError



# ---------------------------------------------------------------------------------------------------------
# colours


def class_color(class_id, delta_colors: int = 3) -> tuple[int, int, int]:
    """The BGR colour patched_yolo_infer gives a class: `random.seed(int(class_id + delta_colors))`, then
    three `random.randint(0, 255)`. Drawn from a private `random.Random`, so the global `random` state is not
    modified (the reference reseeds it); class 0 -> (121, 66, 189), 1 -> (120, 155, 52), 2 -> (130, 183, 14)."""
    rng = random.Random(int(class_id + delta_colors))
    return rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)


def _object_colors(delta_colors: int) -> Iterator[tuple[int, int, int]]:
    """patched_yolo_infer's `random_object_colors`: seeded once with `delta_colors`, three draws per object,
    from a private generator (the global `random` state is untouched)."""
    rng = random.Random(int(delta_colors))
    while True:
        yield rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)


def _bgr(color) -> tuple[int, ...]:
    return tuple(int(c) for c in color)


# ---------------------------------------------------------------------------------------------------------
# visualize_results


def _blend(img: np.ndarray, where: np.ndarray, color: tuple[int, ...], alpha: float) -> None:
    """In place: (1 - alpha) * img + alpha * color on the pixels where `where` is set, rounded."""
    sel = where.astype(bool)
    out = (1.0 - alpha) * img[sel].astype(np.float64) + alpha * np.asarray(color, np.float64)
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    img[sel] = out.astype(img.dtype)


def _polygon_points(polygon) -> np.ndarray:
    """(k, 1, 2) int32 vertices for cv2, rounded (the reference truncates, and needs integer input)."""
    return np.rint(np.asarray(polygon, dtype=np.float64).reshape(-1, 1, 2)).astype(np.int32)


# the list defaults are the reference's own signature; they are only ever read
def visualize_results(img, boxes, classes_ids, confidences=[], classes_names=[], masks=[], polygons=[],  # noqa: B006
                      segment=False, show_boxes=True, show_class=True, fill_mask=False, alpha=0.3,
                      color_class_background=(0, 0, 255), color_class_text=(255, 255, 255), thickness=4,
                      font=cv2.FONT_HERSHEY_SIMPLEX, font_scale=1.5, delta_colors=3, dpi=150,
                      random_object_colors=False, show_confidences=False, axis_off=True,
                      show_classes_list=[], list_of_class_colors=None, return_image_array=False,  # noqa: B006
                      *, obb=False):
    """Draw detections on a copy of the BGR image `img`, as patched_yolo_infer's `visualize_results` does.

    Per object: its mask (`segment` and `masks`: full-image bitmaps, resized with nearest neighbour only when
    their size differs from the image, outlined by their external contours) or else its polygon (`segment`
    and `polygons`), then its box (`boxes`: x_min, y_min, x_max, y_max), then a label (`classes_names[i]` or
    the class id, plus `f'{confidence:.2}'` with `show_confidences`) inside the box at its top-left corner on
    `color_class_background` (one colour, or a list indexed by class id). Colours: `list_of_class_colors[class
    id]`, else one per object with `random_object_colors`, else `class_color(class_id, delta_colors)`.
    `show_classes_list` (class ids), when not empty, keeps only those classes. The input list defaults are
    never modified.

    Differences from the reference, all deliberate:
    - `fill_mask` with `alpha` < 1 blends, `(1 - alpha) * image + alpha * colour` inside the mask or polygon
      (the reference adds `alpha * colour` on top, which brightens instead of tinting); alpha == 1 fills.
    - The global `random` state is untouched (colours come from private generators).
    - `obb=True` (keyword only): `polygons[i]` is object i's rotated box (4 points, floats allowed) and is
      drawn with `cv2.polylines` in place of the axis-aligned rectangle, whatever `segment` says (polygons
      are then never drawn as segments); the label sits at `boxes[i]`'s corner, or the polygon's when no
      boxes are given. The reference crashes on OBB models.
    - Polygons may be float arrays (rounded for drawing); empty polygons are skipped.

    Returns the annotated BGR array (same shape and dtype as `img`) with `return_image_array=True`.
    Otherwise shows it with matplotlib (`figsize=(8, 8)`, `dpi`, RGB, axis off with `axis_off`) and returns
    None; under a non-interactive backend (Agg, in scripts and tests) nothing can show it, so the figure is
    closed without matplotlib's "non-interactive" warning.
    """
    labeled = np.array(img, copy=True)
    height, width = labeled.shape[:2]
    object_colors = _object_colors(delta_colors) if random_object_colors else None
    if obb and len(polygons) < len(classes_ids):
        raise ConfigError(f"obb=True needs one polygon per object: {len(polygons)} polygons for "
                          f"{len(classes_ids)} objects")
    for i in range(len(classes_ids)):
        cid = int(classes_ids[i])
        class_name = str(classes_names[i]) if len(classes_names) > 0 else str(classes_ids[i])
        if len(show_classes_list) > 0 and cid not in show_classes_list:
            continue
        if object_colors is not None:
            color = next(object_colors)
        elif list_of_class_colors is None:
            color = class_color(classes_ids[i], delta_colors)
        else:
            color = list_of_class_colors[cid]
        color = _bgr(color)

        if segment and len(masks) > 0:
            mask = np.asarray(masks[i])
            mask = mask.astype(np.uint8) if mask.dtype != np.uint8 else mask
            if mask.shape[:2] != (height, width):
                mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
            contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
            if fill_mask:
                if alpha == 1:
                    cv2.fillPoly(labeled, contours, color)
                else:
                    _blend(labeled, mask > 0, color, alpha)
            cv2.drawContours(labeled, contours, -1, color, thickness)
        elif segment and not obb and len(polygons) > 0 and len(polygons[i]) > 0:
            points = _polygon_points(polygons[i])
            if fill_mask:
                if alpha == 1:
                    cv2.fillPoly(labeled, [points], color)
                else:
                    inside = np.zeros((height, width), np.uint8)
                    cv2.fillPoly(inside, [points], 1)
                    _blend(labeled, inside, color, alpha)
            cv2.drawContours(labeled, [points], -1, color, thickness)

        outline = _polygon_points(polygons[i]) if obb and len(polygons[i]) > 0 else None
        if len(boxes) > i:
            x_min, y_min, x_max, y_max = (int(round(float(v))) for v in boxes[i][:4])
        elif outline is not None:
            (x_min, y_min), (x_max, y_max) = outline.min(axis=(0, 1)), outline.max(axis=(0, 1))
            x_min, y_min, x_max, y_max = int(x_min), int(y_min), int(x_max), int(y_max)
        else:
            continue  # an OBB object with an empty polygon and no box: nothing to draw it with
        if show_boxes:
            if obb:
                if outline is not None:
                    cv2.polylines(labeled, [outline], True, color, thickness)
            else:
                cv2.rectangle(labeled, (x_min, y_min), (x_max, y_max), color, thickness)
        if show_class:
            label = f"{class_name} {confidences[i]:.2}" if show_confidences else class_name
            (tw, th), _ = cv2.getTextSize(label, font, font_scale, thickness)
            background = (color_class_background[cid] if isinstance(color_class_background, list)
                          else color_class_background)
            cv2.rectangle(labeled, (x_min, y_min), (x_min + tw + 5, y_min + th + 5), _bgr(background), -1)
            cv2.putText(labeled, label, (x_min + 5, y_min + th), font, font_scale, _bgr(color_class_text),
                        thickness=thickness)

    if return_image_array:
        return labeled
    _show(labeled, dpi, axis_off)
    return None


def _show(image: np.ndarray, dpi: int, axis_off: bool) -> None:
    """plt.show() the BGR `image`; under a non-interactive backend, close the figure quietly instead of
    leaving it open (matplotlib would warn that it cannot show it)."""
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.backends import BackendFilter, backend_registry

    fig = plt.figure(figsize=(8, 8), dpi=dpi)
    plt.imshow(image[..., ::-1] if image.ndim == 3 else image)
    if axis_off:
        plt.axis("off")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-interactive.*", category=UserWarning)
        plt.show()
    if matplotlib.get_backend().lower() in backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE):
        plt.close(fig)
