"""Predictor: an Ultralytics model loaded once, predicting batches of patches into patch-local detections."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import shapely

# Never reach for the network: a model is a local file or an error.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")  # nor for packages: a missing runtime is an error

from ..detections import Detections, Masks  # noqa: E402
from ..errors import ModelError, first_line  # noqa: E402
from ..geometry import box_corners  # noqa: E402
from . import _ultralytics, backends  # noqa: E402
from .masks import Letterbox, instance_masks, training_dilation  # noqa: E402

TASKS = ("detect", "segment", "obb")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # auto: bf16 for a .pt on a CPU with native bf16, else fp32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX): there oneDNN's bf16 convolutions
    are about twice as fast as float32 ones; elsewhere bf16 is emulated, slower than float32."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume none
        return False


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda:0' when CUDA is usable, else 'cpu' (so a Ray GPU actor on a GPU-less node still works).
    A GPU asked for by name must exist: a job that asked for one never runs on the CPU unnoticed."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") or device.isdigit():
        name = device if device.startswith("cuda") else f"cuda:{device}"
        if not torch.cuda.is_available():
            raise ModelError(f"device {device} asked for, but torch sees no CUDA GPU here "
                             f"(torch {torch.__version__}); use --device auto or cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelError(f"device {device} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
        return name
    return device


_EXPORT_PRECISION = ("precision {precision} applies to .pt models run by torch; the {backend} backend runs at its "
                     "runtime's own precision (leave precision auto)")


def resolve_precision(precision: str, device: str, backend: str, model) -> str:
    """The network's precision: fp32, fp16 (CUDA) or bf16 (a torch network on a CPU with native bf16); for an
    export, 'auto' (its runtime's own choice: OpenVINO's is bf16 on such a CPU) or fp16 (a half export).

    For a .pt, 'auto' is bf16 where that holds and the model's head is one `bf16_network` knows, else fp32:
    measured on the development CPU (AVX512-BF16), bf16 runs the networks 1.5-1.8x faster and keeps the float32
    network's detections within the tolerance that bench/README.md ("Precision on a CPU") reports. On a GPU
    'auto' stays fp32 (its jobs are bound by the host, not by the network: bench/README.md, "One GPU")."""
    if backend != "torch":
        if precision in ("fp32", "bf16"):
            raise ModelError(_EXPORT_PRECISION.format(precision=precision, backend=backend))
        return precision
    if precision in ("fp32", "fp16"):
        return precision
    ok = device == "cpu" and cpu_has_native_bf16() and _ultralytics.bf16_supported_head(model)
    if precision == "auto" or ok:
        return "bf16" if ok else "fp32"
    if device != "cpu":
        raise ModelError("precision bf16 runs on a CPU; on a GPU use fp16")
    if not cpu_has_native_bf16():
        raise ModelError("precision bf16 needs a CPU with native bfloat16 (AVX512-BF16 or AMX), and this one "
                         "has none; use fp32")
    raise ModelError(f"precision bf16 runs YOLO detect, OBB and segment heads; this {type(model.model).__name__} "
                     "runs in fp32")


def load_model(path: str | os.PathLike):
    """An Ultralytics model from a local file, never downloaded (a missing file is an error).

    A `.pt` loads with the model class its checkpoint needs: RT-DETR checkpoints (found by their network
    class) as `RTDETR`, FastSAM ones (by file name, as Ultralytics itself decides) as `YOLO`'s sibling
    `FastSAM`, everything else as `YOLO`. An Ultralytics export (OpenVINO folder, .onnx, .engine, .torchscript)
    loads as `YOLO` with the task its own metadata names. A .pt file is a Python pickle: load only models you
    trust."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {path}")
    fmt = backends.model_format(p)
    from ultralytics import RTDETR, YOLO, FastSAM

    try:
        if fmt != "torch":
            backends.check_runtime(fmt, "cuda" if fmt == "tensorrt" else "cpu")
            task = _ultralytics.export_metadata(p).get("task")
            if not task:
                raise ModelError(f"model {path} has no Ultralytics metadata naming its task; export it with "
                                 "Ultralytics (yolo export) or use the .pt")
            return checked_model(YOLO(str(p), task=task), path)
        model = (FastSAM if "fastsam" in p.stem.lower() else YOLO)(str(p))
        if type(model.model).__name__ == "RTDETRDetectionModel" and not isinstance(model, RTDETR):
            model = RTDETR(str(p))
        model.names  # noqa: B018  (forces the weights to load now, not at the first batch)
    except ModelError:
        raise
    except Exception as exc:  # Ultralytics raises many types for a bad file; all mean "not a model"
        raise ModelError(f"cannot load model {path}: {first_line(exc)}") from None
    return checked_model(model, path)


def checked_model(model, name: object = None):
    """`model` if it is a loaded Ultralytics model of a task tiler runs (YOLO, RTDETR, FastSAM, ...)."""
    from ultralytics.engine.model import Model

    label = name if name is not None else type(model).__name__
    if not isinstance(model, Model):
        raise ModelError(f"model must be a path to a .pt file or an Ultralytics model, got {type(model).__name__}")
    if model.task not in TASKS:
        raise ModelError(f"model {label} is a {model.task!r} model; tiler supports {', '.join(TASKS)}")
    return model


class Predictor:
    """Loads the model once; `predict(patches)` runs one batched forward pass.

    Patches are RGB uint8 (h, w, 3) arrays, all of the same size. Results are patch-local detections whose
    `window` field is the patch's position in the batch. `model` is a local .pt path or a loaded Ultralytics
    model; `extra_args` are further Ultralytics predict arguments. Segmentation outlines are exact (see masks.py):
    `simplify` is their tolerance in pixels, `largest_part` keeps one polygon per object, and `keep_masks`
    attaches each object's bitmap (crop and offset) to the detections. `backend` other than auto exports a
    .pt model to that runtime first (backends.py); `openvino-int8` quantises it on `calibration`, RGB uint8
    patches like those it will predict (a job takes them from its own windows). `precision` (PRECISIONS) is the
    network's arithmetic: fp16 on a CUDA GPU, bf16 for a .pt on a CPU (see `resolve_precision`); the one used
    is `self.precision`.
    """

    def __init__(self, model, conf: float = 0.25, iou: float = 0.7, imgsz: int = 640,
                 classes: tuple[int, ...] | None = None, max_det: int = 3000, device: str = "auto",
                 threads: int | None = None, precision: str = "auto", simplify: float = 0.0,
                 largest_part: bool = False, keep_masks: bool = False, extra_args: dict | None = None,
                 backend: str = "auto", batch: int = 16, calibration: list[np.ndarray] | None = None):
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and not self.device.startswith("cuda"):
            raise ModelError("precision fp16 runs on a CUDA GPU; on a CPU use bf16 (where the CPU has it) or fp32")
        if precision in ("fp32", "bf16") and backend not in ("auto", "torch"):  # said before anything is exported
            raise ModelError(_EXPORT_PRECISION.format(precision=precision, backend=backend))
        half = precision == "fp16"
        # a path is loaded here (exported first when `backend` asks for another runtime than the file's);
        # an Ultralytics model object (YOLO, RTDETR, FastSAM) is used as it is
        if isinstance(model, (str, os.PathLike)):
            model = load_model(self._model_file(model, backend, imgsz, batch, half, calibration))
        self.model = checked_model(model)
        # an export keeps its path as `model.model`; a .pt its torch module
        self.backend = backends.model_backend(self.model.model) \
            if isinstance(self.model.model, (str, os.PathLike)) else "torch"
        self.task: str = self.model.task
        export_meta = _ultralytics.export_metadata(self.model.model) if self.backend != "torch" else None
        if export_meta is not None:
            fixed = export_meta.get("imgsz")
            if fixed and tuple(fixed) != (imgsz, imgsz):
                raise ModelError(f"model {self.model.model} was exported for {fixed[1]}x{fixed[0]} px input, but this "
                                 f"job feeds the model {imgsz} px (set imgsz {fixed[0]}, or export it again)")
        _ultralytics.disable_nms_time_limit()
        _ultralytics.sparse_rotated_nms()
        self.threads = _ultralytics.set_torch_threads(threads) if self.device == "cpu" else threads
        self.args = dict(conf=conf, iou=iou, imgsz=imgsz, classes=list(classes) if classes else None,
                         max_det=max_det, device=self.device, verbose=False)
        self.args.update(extra_args or {})  # other Ultralytics predict arguments (augment, agnostic_nms, ...)
        if half:
            self.args["quantize"] = 16  # Ultralytics' successor to half=True
        self.precision = resolve_precision(precision, self.device, self.backend, self.model)
        self.simplify, self.largest_part, self.keep_masks = simplify, largest_part, keep_masks
        # the biases its training labels taught the model, from how its masks were trained
        self.mask_inset = training_dilation(_ultralytics.mask_ratio(self.model, export_meta)) \
            if self.task == "segment" else 0.0
        try:
            with (_ultralytics.openvino_compile_cache(backends.cache_dir().parent / "openvino-compiled")
                  if self.backend.startswith("openvino") else contextlib.nullcontext()):
                # an export is loaded here
                self._ul = _ultralytics.setup_predictor(self.model, self.args, bf16=self.precision == "bf16")
        except Exception as exc:  # a damaged export (a file missing or cut short): the runtime's own words
            if isinstance(exc, ModelError) or self.backend == "torch":
                raise
            raise ModelError(f"cannot load model {self.model.model}: {first_line(exc)}") from None
        self.names: dict[int, str] = dict(self._ul.model.names)
        if classes is not None:
            unknown = [c for c in classes if c not in self.names]
            if unknown:
                raise ModelError(f"class id(s) {unknown} not in model (it has {len(self.names)} classes)")

    def _model_file(self, path, backend: str, imgsz: int, batch: int, half: bool, calibration):
        """The file to load: `path` itself, or its cached export when `backend` names another runtime."""
        fmt = backends.model_backend(path) if Path(path).exists() else "torch"
        if backend in ("auto", fmt) or (backend, fmt) == ("openvino", "openvino-int8"):
            return path
        if backend not in backends.BACKENDS:
            raise ModelError(f"backend must be auto or one of {', '.join(backends.BACKENDS)}, got {backend!r}")
        if fmt != "torch":
            raise ModelError(f"model {path} is already an export ({fmt}); the {backend} backend exports from the "
                             ".pt model")
        if not Path(path).is_file():
            raise ModelError(f"model file not found: {path}")
        if backend == "openvino-int8":
            if calibration is None:
                raise ModelError("the openvino-int8 backend quantises the model on calibration patches: pass "
                                 "calibration=[(h, w, 3) uint8 patches], or run a job, which takes them from its "
                                 "own windows")
            from .quantize import quantized_model

            return quantized_model(path, imgsz, batch, calibration)
        return backends.exported_model(path, backend, imgsz, batch, half, self.device)

    def batch_buffer(self, n: int, height: int, width: int) -> np.ndarray:
        """An empty (n, height, width, 3) uint8 batch for readers to fill and `predict` to take: in pinned
        (page-locked) host memory when the model runs on a CUDA GPU, so that the batch goes to the device
        in one asynchronous copy, with no stacking on the way."""
        if not self.device.startswith("cuda"):
            return np.empty((n, height, width, 3), dtype=np.uint8)
        import torch

        # the array keeps its pinned tensor alive (it is the array's base)
        return torch.empty((n, height, width, 3), dtype=torch.uint8, pin_memory=True).numpy()

    def predict(self, patches: list[np.ndarray] | np.ndarray) -> Detections:
        """Detections in patch pixels, `window` = each one's index in `patches` (a list of (h, w, 3) uint8 RGB
        patches, or one (n, h, w, 3) batch, e.g. a `batch_buffer`)."""
        if len(patches) == 0:
            return Detections.empty()
        segment = self.task == "segment"
        results = _ultralytics.run_stages(self._ul, patches, raw_segments=segment)
        if isinstance(results, _ultralytics.BoxOutput):
            return Detections.from_polygons(results.corners, results.cls, results.conf, results.image)
        if segment:
            patch_hw = patches[0].shape[:2]
            return Detections.concat([self._segments(r, k, patch_hw) for k, r in enumerate(results)])
        return Detections.concat([self._extract(r, k) for k, r in enumerate(results)])

    def _segments(self, out: _ultralytics.SegmentOutput, window: int, patch_hw: tuple[int, int]) -> Detections:
        if len(out.boxes) == 0:
            return Detections.empty()
        im = instance_masks(out.protos, out.coefs, out.boxes, patch_hw, Letterbox.between(patch_hw, out.input_hw),
                            self.simplify, self.largest_part, inset=self.mask_inset)
        ok = ~shapely.is_empty(im.outlines)  # an outline can vanish where the mask is a sliver at the box edge
        keep = im.keep.copy()
        keep[keep] = ok
        masks = None
        if self.keep_masks:
            masks = Masks.from_crops([c for c, o in zip(im.crops, ok) if o], im.origins[ok])
        return Detections.from_geometries(im.outlines[ok], out.cls[keep], out.conf[keep], window, masks=masks,
                                          boxes=out.boxes[keep])

    def _extract(self, result, window: int) -> Detections:
        """Detections from one Ultralytics Results (the predictors `_ultralytics.box_outputs` does not cover)."""
        if self.task == "obb":
            obb = result.obb
            if obb is None or len(obb) == 0:
                return Detections.empty()
            return Detections.from_polygons(obb.xyxyxyxy.cpu().numpy().astype(np.float64),
                                            obb.cls.cpu().numpy(), obb.conf.cpu().numpy(), window)
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return Detections.empty()
        return Detections.from_polygons(box_corners(boxes.xyxy.cpu().numpy()), boxes.cls.cpu().numpy(),
                                        boxes.conf.cpu().numpy(), window)
