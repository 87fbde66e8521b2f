"""patched_yolo_infer's API (1.3.10) on tiler's engine: change the import, keep the code.

A thin facade: the crop grid is `tiler.grid`, inference is `tiler.model.Predictor`, the merge is
`tiler.pipeline.merge_indexed` (so `tiler.merge`), and only the translation to and from the reference's
attribute names and types lives here. The reference's exact behaviour is described in
``../shared/reference/patched_yolo_infer_api.md``; where it is faulty, tiler's behaviour wins:

- **No resizing, ever.** The reference squashes the whole image (out of aspect) so that a whole number of
  strides fits. Here crops are tiler's edge-shifted grid: stride ``round(shape * (1 - overlap / 100))`` and the
  last crop of a row or column moved back to end at the image edge. Every pixel is inferred; an image smaller
  than a crop is one zero-padded crop (the reference makes no crop at all and fails later, its issue #27).
  `resize_initial_size` is accepted and changes nothing: coordinates are always the input image's.
- **Coordinates rounded once**, from the model's floats, to the nearest integer (the reference truncates twice).
  Float versions are kept beside them: `filtered_boxes_float`, `filtered_polygons_float`, and
  `filtered_geometries` (shapely, holes and all parts of a mask kept).
- **OBB models work** (the reference crashes, issues #14, #15, #24): `filtered_polygons` holds each rotated
  box's 4 corners, `filtered_boxes` its enclosing box.
- **Segmentation outlines are exact** (tiler's sub-pixel outlines, not pixel-centre traces) and the merge
  always works on these polygons: ``memory_optimize=False`` no longer keeps a full-frame mask per raw detection.
  Its `filtered_masks` are full-size uint8 masks as documented, made at the end for the *kept* objects only,
  from the per-object masks. `detected_masks_list_full` and the crops' `detected_masks_real` stay empty.
- Crops always go to the model in batches of `batch_size` (default: tiler's, by model input size: 16 crops at
  320 px, 4 at 640), whatever `batch_inference` says: ``True`` in the reference puts all crops in one call
  (issue #29), ``False`` one crop per call, about 1.4x slower here than batches for the same boxes
  (bench/README.md). ``batch_size=1`` is the reference's one-crop-at-a-time.
- `model=` takes any loaded Ultralytics model (YOLO, RTDETR, FastSAM); `model_path` loads RT-DETR and
  FastSAM checkpoints with their own class. A missing file is an error, never a download. A .pt file is a
  Python pickle: load only models you trust.
- `progress_callback(task, current, total)` is called whenever it is given.
- `CombineDetections(..., merge="union")` joins the fragments of objects larger than a crop (tiler's union
  merge); the default ``"suppress"`` is the reference's greedy NMS, on the real geometries (boxes, rotated
  boxes, outlines), with tiler's rule that a detection cut by an inner crop edge ranks after whole ones.
- Polygons are uint16 as in the reference while every coordinate fits, int32 beyond 65535 (the reference
  overflows silently). The global `random` state is left alone by the drawing functions.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import replace
from numbers import Real
from typing import Any

import cv2
import numpy as np
import shapely

from ..config import JobConfig
from ..detections import Detections, to_global
from ..errors import ConfigError
from ..grid import plan_windows
from ..merge import sort_order
from ..model import Predictor, resolve_device
from ..model.masks import largest_parts
from ..pipeline import merge_indexed

_IMAGE = "<image array>"  # JobConfig.source for an in-memory image: never opened
_RESERVED_EXTRA = ("imgsz", "conf", "iou", "classes", "verbose")


def _percent(value: Any, name: str) -> float:
    """A percentage in [0, 100) as a fraction (the reference divides by zero at 100, goes negative above)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 100:
        raise ConfigError(f"{name} must be a percentage in [0, 100), got {value!r}")
    return float(value) / 100.0


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        shape = getattr(image, "shape", None)
        raise ConfigError(f"image must be a BGR numpy array of shape (H, W, 3), got "
                          f"{type(image).__name__}{'' if shape is None else f' of shape {shape}'}")
    if image.dtype != np.uint8:
        raise ConfigError(f"image must be uint8 (as cv2.imread gives), got {image.dtype}")
    return image


def _outlines(geoms: np.ndarray) -> list[np.ndarray]:
    """Each geometry's largest polygon's exterior ring as a float (K, 2) array, closing vertex dropped."""
    n = len(geoms)
    if n == 0:
        return []
    rings = shapely.get_exterior_ring(largest_parts(np.asarray(geoms, dtype=object)))
    coords, idx = shapely.get_coordinates(rings, return_index=True)
    pieces = np.split(coords, np.cumsum(np.bincount(idx, minlength=n))[:-1])
    return [p[:-1] if len(p) else p.reshape(0, 2) for p in pieces]


def _int_polygons(polygons: list[np.ndarray]) -> list[np.ndarray]:
    """Rounded once; uint16 like the reference while it fits, int32 beyond."""
    top = max((float(p.max()) for p in polygons if p.size), default=0.0)
    dtype = np.uint16 if top < 65535.5 else np.int32
    return [np.rint(np.maximum(p, 0)).astype(dtype) for p in polygons]


def _int_boxes(boxes: np.ndarray) -> list[list[int]]:
    return np.rint(boxes).astype(np.int64).tolist()


def _show_grid(crops: list[np.ndarray], rows: int, cols: int, label: str) -> None:
    """The reference's crop preview (matplotlib grid, BGR shown as RGB); headless-safe."""
    import matplotlib.pyplot as plt

    plt.figure(figsize=[cols * 0.9, rows * 0.9])
    for k, crop in enumerate(crops):
        plt.subplot(rows, cols, k + 1)
        plt.imshow(crop[..., ::-1])
        plt.axis("off")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-interactive.*")
        plt.show()
    plt.close("all")
    print(label, len(crops))


class CropElement:
    """One crop and its detections, with the reference's attribute names.

    `source_image` and `source_image_resized` are both the input image itself (nothing is resized or copied);
    `crop` is a view into it (a zero-padded copy only when the image is smaller than a crop). After inference:
    `detected_conf` (float32 array), `detected_cls` (list[int]), `detected_xyxy` (crop pixels) and
    `detected_xyxy_real` (image pixels), lists of [x_min, y_min, x_max, y_max] ints; for segmentation with
    ``memory_optimize=True``, `polygons` / `detected_polygons_real` (crop / image pixels). `detected_masks` and
    `detected_masks_real` are never filled: they would hold a full frame per raw detection."""

    def __init__(self, source_image: np.ndarray, source_image_resized: np.ndarray, crop: np.ndarray,
                 number_of_crop: int, x_start: int, y_start: int) -> None:
        self.source_image, self.source_image_resized, self.crop = source_image, source_image_resized, crop
        self.number_of_crop, self.x_start, self.y_start = number_of_crop, x_start, y_start
        self.detected_conf = self.detected_cls = self.detected_xyxy = None
        self.detected_masks = self.polygons = None
        self.detected_xyxy_real = self.detected_masks_real = self.detected_polygons_real = None


class MakeCropsDetectThem:
    """Cut `image` (BGR) into overlapping crops and run the model on each, at construction (as the reference).

    Same arguments, defaults and attributes as patched_yolo_infer 1.3.10 (see the module docstring for what
    differs and why), plus keyword-only `batch_size` (crops per forward pass, whatever `batch_inference`
    says), `device` and `threads` (torch CPU threads, default all cores; 1 on a machine busy with other
    work). Also sets `detections` (tiler `Detections` in image pixels, before the merge), `window_boxes` and
    `task`, which `CombineDetections` uses."""

    def __init__(self, image: np.ndarray, model_path="yolo11m.pt", imgsz=640, conf=0.25, iou=0.7,
                 classes_list=None, segment=False, shape_x=700, shape_y=600, overlap_x=25, overlap_y=25,
                 show_crops=False, show_processing_status=False, resize_initial_size=True, model=None,
                 memory_optimize=True, inference_extra_args=None, batch_inference=False, progress_callback=None,
                 *, batch_size: int | None = None, device: str = "auto", threads: int | None = None) -> None:
        self.image = _check_image(image)
        self.imgsz, self.conf, self.iou, self.classes_list = imgsz, conf, iou, classes_list
        self.segment, self.shape_x, self.shape_y = bool(segment), shape_x, shape_y
        self.overlap_x, self.overlap_y, self.show_crops = overlap_x, overlap_y, show_crops
        self.resize_initial_size, self.memory_optimize = resize_initial_size, bool(memory_optimize)
        self.inference_extra_args, self.batch_inference = inference_extra_args, bool(batch_inference)
        self.show_process_status = bool(show_processing_status)
        self._progress_bars: dict[str, Any] = {}
        self.progress_callback = progress_callback or (self._tqdm_callback if self.show_process_status else None)

        extra = dict(inference_extra_args or {})
        reserved = sorted(set(extra) & set(_RESERVED_EXTRA))
        if reserved:
            raise ConfigError(f"inference_extra_args may not set {', '.join(reserved)}: use the arguments of "
                              "the same name")
        extra.pop("retina_masks", None)  # masks are always made at the crop's own resolution
        overlap = (_percent(overlap_x, "overlap_x"), _percent(overlap_y, "overlap_y"))
        device = extra.pop("device", device)
        # Ultralytics' half=True is fp16 on a GPU and ignored on a CPU; otherwise tiler's own choice (precision auto)
        half = bool(extra.pop("half", False)) and resolve_device(str(device)).startswith("cuda")
        self.config = JobConfig(
            source=_IMAGE, model=os.fspath(model_path) if model is None else f"<{type(model).__name__} object>",
            patch_size=(shape_x, shape_y), overlap=overlap, conf=conf, iou=iou, imgsz=imgsz, classes=classes_list,
            batch_size=batch_size, device=device, precision="fp16" if half else "auto",
            max_det=extra.pop("max_det", 300), threads=threads, keep_masks=self.segment and not self.memory_optimize)
        cfg = self.config
        predictor = Predictor(model if model is not None else model_path, conf=cfg.conf, iou=cfg.iou,
                              imgsz=cfg.model_imgsz, classes=cfg.classes, max_det=cfg.max_det, device=cfg.device,
                              threads=cfg.threads, precision=cfg.precision, simplify=cfg.simplify,
                              keep_masks=cfg.keep_masks, extra_args=extra)
        self.model, self.task = predictor.model, predictor.task
        self.class_names_dict = predictor.names
        if self.segment and self.task != "segment":
            raise ConfigError(f"segment=True needs a segmentation model, this one is a {self.task} model")

        h, w = image.shape[:2]
        grid = plan_windows(w, h, cfg.patch_size, cfg.overlap)
        self.window_boxes = grid.clipped_bounds()
        self._grid_shape = (grid.n_rows, grid.n_cols)
        self.crops = self._make_crops(grid.origins())
        if show_crops:
            _show_grid([c.crop for c in self.crops], grid.n_rows, grid.n_cols, "Number of generated patches:")
        self.detections = self._detect(predictor, grid.origins())
        self._fill_crops()

    def _make_crops(self, origins: np.ndarray) -> list[CropElement]:
        sw, sh = self.config.patch_size
        crops = []
        for k, (x, y) in enumerate(origins.tolist()):
            view = self.image[y:y + sh, x:x + sw]
            if view.shape[:2] != (sh, sw):  # image smaller than a crop: pad, as tiler's reader does
                padded = np.zeros((sh, sw, 3), dtype=np.uint8)
                padded[:view.shape[0], :view.shape[1]] = view
                view = padded
            crops.append(CropElement(self.image, self.image, view, k + 1, x, y))
            self._progress("Getting crops", k + 1, len(origins))
        return crops

    def _detect(self, predictor: Predictor, origins: np.ndarray) -> Detections:
        n = len(self.crops)
        step = self.config.batch_size
        h, w = self.image.shape[:2]
        parts = []
        for start in range(0, n, step):
            ids = np.arange(start, min(n, start + step))
            # BGR crops to the RGB the predictor takes (cv2 swaps channels ~10x faster than a reversed-view copy)
            local = predictor.predict([cv2.cvtColor(self.crops[k].crop, cv2.COLOR_BGR2RGB) for k in ids])
            parts.append(to_global(local, origins[ids], ids, self.config.patch_size, (w, h)))
            self._progress("Detecting objects", int(ids[-1]) + 1, n)
        return Detections.concat(parts)

    def _fill_crops(self) -> None:
        """The per-crop lists of the reference, from the detections (image pixels) split by crop."""
        dets = self.detections
        by_crop = np.argsort(dets.window, kind="stable")
        ends = np.cumsum(np.bincount(dets.window, minlength=len(self.crops)))
        boxes = _int_boxes(dets.box_bounds())
        polys = (_int_polygons(_outlines(dets.geometries()))
                 if self.segment and self.memory_optimize else None)
        start = 0
        for crop, end in zip(self.crops, ends.tolist()):
            idx = by_crop[start:end].tolist()
            start = end
            crop.detected_conf = dets.score[idx].astype(np.float32)
            crop.detected_cls = dets.class_id[idx].astype(int).tolist()
            crop.detected_xyxy_real = [boxes[i] for i in idx]
            dx, dy = crop.x_start, crop.y_start
            crop.detected_xyxy = [[b[0] - dx, b[1] - dy, b[2] - dx, b[3] - dy] for b in crop.detected_xyxy_real]
            crop.detected_masks_real = []
            if polys is not None:
                crop.detected_polygons_real = [polys[i] for i in idx]
                crop.polygons = [np.maximum(p.astype(np.int64) - (dx, dy), 0).astype(p.dtype)
                                 for p in crop.detected_polygons_real]
            else:
                crop.detected_polygons_real = []

    def _progress(self, task: str, current: int, total: int) -> None:
        if self.progress_callback is not None:
            self.progress_callback(task, current, total)

    def _tqdm_callback(self, task: str, current: int, total: int) -> None:
        from tqdm import tqdm

        bar = self._progress_bars.get(task)
        if bar is None:
            bar = self._progress_bars[task] = tqdm(total=total, desc=task, unit="items")
        bar.n = current
        bar.refresh()
        if current >= total:
            bar.close()
            del self._progress_bars[task]

    def __del__(self) -> None:
        for bar in getattr(self, "_progress_bars", {}).values():
            bar.close()

    def __str__(self) -> str:
        return (f"{len(self.crops)} patches of size {self.crops[0].crop.shape} were created from an image sized "
                f"{self.image.shape}")

    def patches_info(self) -> None:
        print(self)
        text = "\nDetailed information about the detections for each patch:"
        for i, crop in enumerate(self.crops):
            names = [self.class_names_dict[c] for c in crop.detected_cls]
            if names:
                info = ", ".join(f"{count} {cls}" for cls, count in Counter(names).items())
                text += f"\nOn patch № {i}, {info} were detected"
            else:
                text += f"\nOn patch № {i}, nothing was detected"
        print(text)


class CombineDetections:
    """Merge the detections of one `MakeCropsDetectThem` (or a list of them over the same image) into the
    reference's `filtered_*` attributes.

    Same arguments and defaults as patched_yolo_infer 1.3.10; `match_metric` is case-insensitive. The merge is
    tiler's, on the real geometries, with `merge="suppress"` (default: the reference's greedy NMS) or
    ``"union"`` (fragments of objects larger than a crop joined into one). Kept objects come in priority order
    (best first), grouped by ascending class id when ``class_agnostic_nms=False``, as in the reference. Besides
    the reference's attributes: `filtered_boxes_float`, `filtered_polygons_float`, `filtered_geometries`
    (shapely, image pixels) and `detections` (tiler `Detections`)."""

    def __init__(self, element_crops, nms_threshold=0.3, match_metric="IOS", intelligent_sorter=True,
                 sorter_bins=5, class_agnostic_nms=True, *, merge: str = "suppress") -> None:
        elements = element_crops if isinstance(element_crops, (list, tuple)) else [element_crops]
        if not elements:
            raise ConfigError("element_crops is empty")
        first = elements[0]
        for e in elements[1:]:
            if e.image is not first.image and not np.array_equal(e.image, first.image):
                raise ConfigError("The source images in element_crops differ, so combining results from these "
                                  "objects is not possible.")
            if (e.segment, e.memory_optimize) != (first.segment, first.memory_optimize):
                raise ConfigError("The segment or memory_optimize attributes of element_crops differ, so "
                                  "processing cannot be performed.")
            if e.task != first.task:
                raise ConfigError(f"element_crops mix {first.task} and {e.task} models")
        self.nms_threshold, self.match_metric = nms_threshold, match_metric
        self.intelligent_sorter, self.sorter_bins, self.class_agnostic_nms = intelligent_sorter, sorter_bins, \
            class_agnostic_nms
        self.class_names = first.class_names_dict
        self.crops = [c for e in elements for c in e.crops]
        self.image = first.image
        self.segment, self.memory_optimize, self.task = first.segment, first.memory_optimize, first.task
        self.config = JobConfig(source=_IMAGE, model=first.config.model, nms_threshold=nms_threshold,
                                match_metric=str(match_metric).lower(), class_agnostic=bool(class_agnostic_nms),
                                sorter="intelligent" if intelligent_sorter else "score", sorter_bins=sorter_bins,
                                merge=merge)

        # window ids made unique across elements, so each detection still knows its crop's box
        shift = np.cumsum([0] + [len(e.window_boxes) for e in elements[:-1]])
        parts = [replace(e.detections, window=e.detections.window + s) for e, s in zip(elements, shift.tolist())]
        raw = Detections.concat(parts)
        boxes = np.concatenate([e.window_boxes for e in elements])
        merged, source = merge_indexed(self.config, raw, first.task, boxes)
        order = self._priority(merged)
        merged, source = merged.take(order), source[order]
        self.detections = merged
        self._set_lists(raw, merged, source)

    def _priority(self, dets: Detections) -> np.ndarray:
        cfg = self.config
        order = sort_order(dets.score, shapely.area(dets.geometries()), cfg.sorter, None, cfg.sorter_bins)
        if not cfg.class_agnostic:
            order = order[np.argsort(dets.class_id[order], kind="stable")]
        return order

    def _set_lists(self, raw: Detections, kept: Detections, source: np.ndarray) -> None:
        names = self.class_names
        polygons_wanted = self.segment and self.memory_optimize
        obb = self.task == "obb"
        self.detected_conf_list_full = list(raw.score.astype(np.float32))
        self.detected_xyxy_list_full = _int_boxes(raw.box_bounds())
        self.detected_masks_list_full: list[np.ndarray] = []  # never a full frame per raw detection
        self.detected_cls_id_list_full = raw.class_id.astype(int).tolist()
        self.detected_cls_names_list_full = [names[c] for c in self.detected_cls_id_list_full]
        self.detected_polygons_list_full = (_int_polygons(_outlines(raw.geometries())) if polygons_wanted else [])
        self.filtered_indices = source.tolist()

        geoms = kept.geometries()
        boxes = kept.box_bounds()
        self.filtered_geometries = list(geoms)
        self.filtered_confidences = list(kept.score.astype(np.float32))
        self.filtered_boxes_float = boxes.tolist()
        self.filtered_boxes = _int_boxes(boxes)
        self.filtered_classes_id = kept.class_id.astype(int).tolist()
        self.filtered_classes_names = [names[c] for c in self.filtered_classes_id]
        outlines = _outlines(geoms) if (polygons_wanted or obb) else []
        self.filtered_polygons_float = outlines
        self.filtered_polygons = _int_polygons(outlines)
        self.filtered_masks = (self._full_masks(kept) if self.segment and not self.memory_optimize else [])

    def _full_masks(self, kept: Detections) -> list[np.ndarray]:
        """Full-size uint8 0/1 masks, for the kept objects only, pasted from their per-object crops."""
        h, w = self.image.shape[:2]
        out = []
        for k in range(len(kept)):
            crop, (x0, y0) = kept.masks.crop(k)
            full = np.zeros((h, w), dtype=np.uint8)
            xa, ya = max(x0, 0), max(y0, 0)
            xb, yb = min(x0 + crop.shape[1], w), min(y0 + crop.shape[0], h)
            if xb > xa and yb > ya:
                full[ya:yb, xa:xb] = crop[ya - y0:yb - y0, xa - x0:xb - x0]
            out.append(full)
        return out

    def __str__(self) -> str:
        attrs = ["filtered_confidences", "filtered_boxes", "filtered_classes_id", "filtered_classes_names",
                 "filtered_masks", "filtered_polygons"]
        present = [a for a in attrs if len(getattr(self, a))]
        if not present:
            return "Useful attributes: nothing detected in the frame"
        text = "Useful attributes: " + ", ".join(present) + "\n\n"
        for a in present:
            value = getattr(self, a)
            if a == "filtered_masks":
                text += f"filtered_masks: the list of binary masks with shape {value[0].shape} (length: {len(value)})\n"
            elif len(value) > 10:
                text += f"{a}: {str(value[:10])[:-1]}, ...] (length: {len(value)})\n"
            else:
                text += f"{a}: {value} (length: {len(value)})\n"
        return text


__all__ = ["MakeCropsDetectThem", "CombineDetections", "CropElement"]
