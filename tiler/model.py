"""Predictor: an Ultralytics model loaded once, predicting batches of patches into patch-local detections."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

# Never reach for the network: a model is a local file or an error.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

from .detections import Detections  # noqa: E402
from .errors import ModelError  # noqa: E402

TASKS = ("detect", "segment", "obb")


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda:0' when CUDA is usable, else 'cpu' (a GPU actor on a GPU-less node still works)."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") or device.isdigit():
        if not torch.cuda.is_available():
            return "cpu"
        return device if device.startswith("cuda") else f"cuda:{device}"
    return device


def set_torch_threads(threads: int | None) -> int:
    """Use `threads` (default: all cores). Ultralytics resets torch to cores - 1 on every device
    selection, which on small machines means 1 thread, so its constant is overridden too."""
    import torch
    from ultralytics.utils import torch_utils

    n = threads or os.cpu_count() or 1
    torch_utils.NUM_THREADS = n
    torch.set_num_threads(n)
    return n


def disable_nms_time_limit() -> None:
    """Make Ultralytics' NMS finish every image of a batch.

    Its non_max_suppression stops after 2 s + 0.05 s per image and silently returns no detections for the
    rest of the batch. Rotated-box NMS on a busy CPU exceeds that, which loses whole patches at random.
    Tiler wants every patch, always, so the limit is lifted (idempotent; the predictors look the function
    up on the module at call time)."""
    from ultralytics.utils import nms

    if getattr(nms.non_max_suppression, "_tiler_unlimited", False):
        return
    original = nms.non_max_suppression

    @functools.wraps(original)
    def non_max_suppression(*args, **kwargs):
        kwargs["max_time_img"] = float("inf")
        return original(*args, **kwargs)

    non_max_suppression._tiler_unlimited = True
    nms.non_max_suppression = non_max_suppression


def load_model(path: str | os.PathLike):
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file not found: {path}")
    if p.suffix.lower() != ".pt":
        raise ModelError(f"model must be an Ultralytics PyTorch .pt file, got {path}")
    from ultralytics import YOLO

    try:
        model = YOLO(str(p))
        model.names  # noqa: B018  (forces the weights to load now, not at the first batch)
    except Exception as exc:  # Ultralytics raises many types for a bad file; all mean "not a model"
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot load model {path}: {msg}") from None
    if model.task not in TASKS:
        raise ModelError(f"model {path} is a {model.task!r} model; tiler supports {', '.join(TASKS)}")
    return model


class Predictor:
    """Loads the model once; `predict(patches)` runs one batched forward pass.

    Patches are RGB uint8 (h, w, 3) arrays, all of the same size. Results are patch-local detections whose
    `window` field is the patch's position in the batch.
    """

    def __init__(self, model_path: str | os.PathLike, conf: float = 0.25, iou: float = 0.7, imgsz: int = 640,
                 classes: tuple[int, ...] | None = None, max_det: int = 3000, device: str = "auto",
                 threads: int | None = None, half: bool = False):
        self.model_path = os.fspath(model_path)
        self.model = load_model(self.model_path)
        self.task: str = self.model.task
        self.names: dict[int, str] = dict(self.model.names)
        if classes is not None:
            unknown = [c for c in classes if c not in self.names]
            if unknown:
                raise ModelError(f"class id(s) {unknown} not in model (it has {len(self.names)} classes)")
        disable_nms_time_limit()
        self.device = resolve_device(device)
        self.threads = set_torch_threads(threads) if self.device == "cpu" else threads
        self.args = dict(conf=conf, iou=iou, imgsz=imgsz, classes=list(classes) if classes else None,
                         max_det=max_det, device=self.device, verbose=False)
        if half and self.device != "cpu":
            self.args["quantize"] = 16  # Ultralytics' successor to half=True
        self._ul = self._setup_ultralytics_predictor()

    def predict(self, patches: list[np.ndarray]) -> Detections:
        if not patches:
            return Detections.empty()
        results = self._predict_results(patches)
        return Detections.concat([self._extract(r, k) for k, r in enumerate(results)])

    def _predict_results(self, patches: list[np.ndarray]) -> list:
        """Ultralytics' own letterbox, forward pass and postprocess (NMS, box/mask scaling), without its
        `predict()` wrapper: that rebuilds a data source per call and makes a BGR copy of every patch only to
        flip it back (~7 % of predict time on a small model on a CPU). Results are identical to
        `YOLO.predict` (tested)."""
        import torch

        ul = self._ul
        images = list(patches)
        with torch.inference_mode():
            # letterboxing is colour-blind, so RGB patches go through it as they are
            im = np.stack(ul.pre_transform(images))
            x = torch.from_numpy(im).to(ul.device).permute(0, 3, 1, 2).contiguous()
            x = (x.half() if ul.model.fp16 else x.float()).div_(255)
            preds = ul.model(x)
            # postprocess pairs each image with a path from the current batch: (paths, images, log strings)
            ul.batch = ([""] * len(images), images, [""] * len(images))
            results = ul.postprocess(preds, x, images)
        if len(results) != len(patches):  # an Ultralytics upgrade changed the internals this relies on
            raise ModelError(f"Ultralytics returned {len(results)} results for {len(patches)} patches")
        return results

    def _setup_ultralytics_predictor(self):
        """The model's own Ultralytics predictor (task-specific letterbox, NMS and result scaling), set up once.

        Its warm-up is skipped: on a CPU all it does is import torchvision (~1.6 s, as long as the whole
        forward pass of a small job) so that axis-aligned NMS runs through torchvision.ops.nms; Ultralytics'
        own NMS, used without it, keeps the same boxes (the tests compare with `YOLO.predict` output)."""
        model = self.model
        predict_defaults = {"batch": 1, "save": False, "mode": "predict", "rect": True, "embed": None}
        ul = model._smart_load("predictor")(overrides={**model.overrides, **predict_defaults, **self.args},
                                            _callbacks=model.callbacks)
        ul.setup_model(model=model.model, verbose=False)
        ul.done_warmup = True
        model.predictor = ul
        # one tiny public predict call sets the input size and source handling the documented way
        model.predict([np.zeros((32, 32, 3), dtype=np.uint8)], **self.args)
        if model.predictor is not ul:  # an Ultralytics upgrade stopped reusing a configured predictor
            raise ModelError("Ultralytics replaced tiler's configured predictor; this version is unsupported")
        return ul

    def _extract(self, result, window: int) -> Detections:
        if self.task == "obb":
            obb = result.obb
            if obb is None or len(obb) == 0:
                return Detections.empty()
            return Detections.from_polygons(obb.xyxyxyxy.cpu().numpy().astype(np.float64),
                                            obb.cls.cpu().numpy(), obb.conf.cpu().numpy(), window)
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return Detections.empty()
        cls, conf = boxes.cls.cpu().numpy(), boxes.conf.cpu().numpy()
        if self.task == "segment" and result.masks is not None:
            # masks.xy: the largest contour of each mask, already mapped back through the letterbox
            # (scale and padding) to patch pixels.
            return Detections.from_polygons(result.masks.xy, cls, conf, window)
        x0, y0, x1, y1 = boxes.xyxy.cpu().numpy().astype(np.float64).T
        corners = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1),
                            np.stack([x0, y1], 1)], axis=1)
        return Detections.from_polygons(corners, cls, conf, window)
