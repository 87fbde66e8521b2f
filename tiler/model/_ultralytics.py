"""Every use of Ultralytics internals, in one place, each guarded so an upgrade that changes them fails loudly.

- torch threads: Ultralytics resets torch to cores - 1 threads on every device selection;
- NMS time limit: lifted, so no patch of a busy batch silently loses its detections;
- rotated-box NMS: the same kept boxes, with overlaps computed only where boxes can overlap (`nms.py`);
- the predictor's own stages (letterbox, forward, NMS, scaling) called without `predict()`'s per-call source
  handling, and without its warm-up;
- on a CPU, a torch model runs in channels-last memory format (see `setup_predictor`);
- for segmentation, the step after NMS is replaced so masks are made per object (see masks.py), and tiler's
  exports record the model's training mask_ratio in their own metadata (the outline inset depends on it);
- a model object set up again with the same arguments reuses its predictor, which is never the model's own
  `model.predictor` (so the caller's `model.predict` cannot change it);
- for detect and OBB, a batch's results are built as arrays (`BoxOutput`), not one Results object per image;
  OBB NMS runs for the whole batch at once (`nms.batched_rotated_nms`);
- an OpenVINO model is compiled with a compile cache (`openvino_compile_cache`);
- in bf16 (`bf16_network`), the predictor's network runs in bfloat16 up to its head's last layers, which run in
  float32, as does the box decoding (anchors included: `make_anchors` is guarded for bfloat16 feature maps).
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np

from ..errors import ModelError
from ..geometry import box_corners


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


def sparse_rotated_nms() -> None:
    """Make Ultralytics' rotated-box NMS compute overlaps only for pairs of boxes that can overlap (`nms.py`):
    the same kept boxes, without the dense n x n probiou matrix that is most of predict time on dense patches.
    Other NMS calls (axis-aligned boxes go through torchvision's, already sparse) are left as they are.
    Idempotent; the predictors look `TorchNMS.fast_nms` up at call time."""
    from ultralytics.utils import metrics
    from ultralytics.utils import nms as ul_nms

    from .nms import MIN_SPARSE_IOU, sparse_rotated_fast_nms

    if getattr(ul_nms.TorchNMS.fast_nms, "_tiler_sparse", False):
        return
    original = ul_nms.TorchNMS.fast_nms

    @functools.wraps(original)
    def fast_nms(boxes, scores, iou_threshold, use_triu=True, iou_func=metrics.box_iou, exit_early=True):
        if use_triu and exit_early and iou_func is metrics.batch_probiou and iou_threshold >= MIN_SPARSE_IOU:
            kept = sparse_rotated_fast_nms(boxes, scores, iou_threshold)
            if kept is not None:  # (None: too many irregular boxes for the sparse search)
                return kept
        return original(boxes, scores, iou_threshold, use_triu=use_triu, iou_func=iou_func, exit_early=exit_early)

    fast_nms._tiler_sparse = True
    fast_nms._tiler_original = original
    ul_nms.TorchNMS.fast_nms = staticmethod(fast_nms)


@contextlib.contextmanager
def openvino_compile_cache(folder: str | os.PathLike):
    """While it is open, OpenVINO compiles models with `folder` as its compile cache: compiling an export is most
    of its load (0.5 s for yolov8n-obb at 640 px here), reading the compiled blob back 0.17 s. Ultralytics' OpenVINO
    backend makes its own `ov.Core` and compiles with its own config, so the cache is added to the calls it makes
    while a model loads."""
    import openvino

    original = openvino.Core.compile_model

    def compile_model(self, model, device_name=None, config=None, **kwargs):
        return original(self, model, device_name, {"CACHE_DIR": os.fspath(folder), **(config or {})}, **kwargs)

    openvino.Core.compile_model = compile_model
    try:
        yield
    finally:
        openvino.Core.compile_model = original


def setup_predictor(model, args: dict, bf16: bool = False):
    """The model's own Ultralytics predictor (task-specific letterbox, NMS and result scaling), set up once;
    with `bf16`, its torch network runs in bfloat16 on the CPU (`bf16_network`).

    Its warm-up is skipped: on a CPU all it does is import torchvision (~1.6 s, as long as the whole
    forward pass of a small job) so that axis-aligned NMS runs through torchvision.ops.nms; Ultralytics'
    own NMS, used without it, keeps the same boxes (the tests compare with `YOLO.predict` output)."""
    kept = getattr(model, "tiler_predictor", None)
    if kept is not None and _same(kept[0], args) and kept[2] == bf16:
        # the same model object set up again with the same arguments (tiler.compat makes a Predictor per call,
        # around the caller's model object): no second copy, fusing and set-up predict (~0.11 s a call here)
        return kept[1]
    predict_defaults = {"batch": 1, "save": False, "mode": "predict", "rect": True, "embed": None}
    ul = model._smart_load("predictor")(overrides={**model.overrides, **predict_defaults, **args},
                                        _callbacks=model.callbacks)
    ul.setup_model(model=model.model, verbose=False)
    ul.done_warmup = True
    # On a CPU, oneDNN's convolutions are 1.2-1.4x faster on channels-last (NHWC) tensors than on NCHW ones
    # (measured here on the project's models, 1 and 2 threads; outputs equal to ~1e-6 relative), and patches
    # arrive as NHWC anyway, so the weights are converted once and batches are never transposed in memory.
    ul.tiler_channels_last = str(ul.device) == "cpu" and getattr(ul.model, "format", None) == "pt"
    if ul.tiler_channels_last:
        import torch

        ul.model.backend.model.to(memory_format=torch.channels_last)
    ul.tiler_bf16 = bf16
    if bf16:
        net = ul.model.backend.model
        # the predictor's network is Ultralytics' own copy (setup_model deep-copies the model before fusing it), so
        # it is converted in place; the caller's model stays float32 (tested)
        if net is model.model:  # an Ultralytics upgrade stopped copying
            raise ModelError("Ultralytics' predictor shares the caller's network; this version is unsupported")
        ul.model.backend.model = bf16_network(net)
    # one tiny public predict call sets the input size and source handling the documented way; then the model
    # gets its own predictor back, so that the caller's `model.predict(conf=...)` never changes tiler's. It runs
    # at 32 px, then the input size is set back: at the job's size it was a whole forward pass (0.07-0.09 s here,
    # a third of loading the model) warming up nothing the job's first batch, of another shape, would reuse
    previous, model.predictor = model.predictor, ul
    tiny = [np.zeros((32, 32, 3), dtype=np.uint8)]
    try:
        imgsz = ul.args.imgsz
        model.predict(tiny, **{**args, "imgsz": 32})
        ul.args.imgsz = imgsz
        ul.setup_source(tiny)  # (sets ul.imgsz from it, or from an export's fixed input size)
        if model.predictor is not ul:  # an Ultralytics upgrade stopped reusing a configured predictor
            raise ModelError("Ultralytics replaced tiler's configured predictor; this version is unsupported")
    finally:
        model.predictor = previous
    model.tiler_predictor = (dict(args), ul, bf16)
    return ul


def bf16_supported_head(model) -> bool:
    """Whether `bf16_network` knows the model's head: a YOLO Detect head or one of its subclasses (OBB, Segment),
    one-to-many, in a torch .pt network."""
    from ultralytics.nn.modules.head import Detect

    layers = getattr(model.model, "model", None)  # a torch network's layers (an export's model is its path)
    head = layers[-1] if layers is not None and len(layers) else None
    return isinstance(head, Detect) and not getattr(head, "end2end", False)


def bf16_network(net):
    """The torch network converted in place to bfloat16, except where its head turns features into numbers: the
    last layer of each of the head's branches (box distances, class logits, angles, mask coefficients) and of the
    mask prototypes runs in float32 on bfloat16 features, and the DFL and box decoding run in float32. Decoded in
    bfloat16 (8 significant bits), a box corner at 500 px would be rounded to 2 px; and scores made from bfloat16
    logits tie so often that which of two tied boxes NMS keeps would depend on the NMS implementation (Ultralytics
    uses torchvision's only where something imported it).

    On a CPU with native bf16 (AVX512-BF16 or AMX) the network then runs 1.5-1.8x faster than in float32 (oneDNN's
    bf16 convolutions); the detections stay those of the float32 network within the tolerance that
    bench/README.md ("Precision on a CPU") measures."""
    import torch
    from ultralytics.nn.modules import head as ul_head

    _guard_make_anchors(ul_head)
    net = net.to(torch.bfloat16)
    head = net.model[-1]
    head.dfl.float()

    def float_tail(module: torch.nn.Module) -> None:
        last = list(module.children())[-1]  # a branch's last layer: a Conv2d; the prototypes': a Conv
        last.float()
        last.register_forward_pre_hook(lambda m, args: tuple(a.float() for a in args))

    for name, child in head.named_children():
        if isinstance(child, torch.nn.ModuleList):  # cv2, cv3, cv4: one branch per feature level
            for branch in child:
                float_tail(branch)
        elif name == "proto":
            float_tail(child)
    # run_stages hands it bfloat16 batches; anything else (Ultralytics' own set-up predict) is cast on the way in
    net.register_forward_pre_hook(lambda module, args: (args[0].to(torch.bfloat16), *args[1:]))
    return net


def _guard_make_anchors(ul_head) -> None:
    """Make the head's anchors float32 for bfloat16 feature maps (it takes their dtype; anchors past 256 grid
    cells cannot be told apart in bfloat16). Idempotent; float32 and float16 maps are left to the original."""
    import torch

    original = ul_head.make_anchors
    if getattr(original, "_tiler_float_anchors", False):
        return

    @functools.wraps(original)
    def make_anchors(feats, strides, grid_cell_offset=0.5):
        if isinstance(feats, list) and feats and feats[0].dtype == torch.bfloat16:
            feats = [torch.empty((0, 0, *f.shape[2:]), device=f.device) for f in feats]  # shapes only
        return original(feats, strides, grid_cell_offset)

    make_anchors._tiler_float_anchors = True
    ul_head.make_anchors = make_anchors


def _same(a: dict, b: dict) -> bool:
    try:
        return bool(a == b)
    except ValueError:  # an array among a caller's extra arguments: not comparable, so set up anew
        return False


def run_stages(ul, patches: list[np.ndarray], raw_segments: bool = False) -> list:
    """Ultralytics' own letterbox, forward pass and postprocess (NMS, box scaling), without its `predict()`
    wrapper: that rebuilds a data source per call and makes a BGR copy of every patch only to flip it back
    (~7 % of predict time on a small model on a CPU). Results are identical to `YOLO.predict` (tested).

    With `raw_segments`, a segmentation model's results are `SegmentOutput`s instead of Results: boxes
    after NMS, scaled to the patch, with their mask coefficients and the image's prototypes, so masks can
    be made per object instead of Ultralytics' full-image mask per object."""
    import torch

    # one (n, h, w, 3) array is used as it is (torch cannot wrap a read-only one, e.g. unpickled from bytes)
    batch = patches if isinstance(patches, np.ndarray) and patches.ndim == 4 and patches.flags.writeable else None
    images = list(patches)
    with torch.inference_mode():
        x = network_input(ul, _device_batch(ul, images, batch))
        preds = ul.model(x)
        # postprocess pairs each image with a path from the current batch: (paths, images, log strings)
        ul.batch = ([""] * len(images), images, [""] * len(images))
        if raw_segments:
            # SegmentationPredictor.postprocess runs NMS, then construct_results(preds, img, orig_imgs, protos)
            # SegmentationPredictor's own postprocess, also for subclasses: FastSAM's adds prompts and a
            # full-image box snap that need Results objects
            from ultralytics.models.yolo.segment import SegmentationPredictor

            ul.construct_results = _segment_outputs
            try:
                results = SegmentationPredictor.postprocess(ul, preds, x, images)
            finally:
                del ul.construct_results
        else:
            boxes = box_outputs(ul, preds, x, images)
            if boxes is not None:
                return boxes
            results = ul.postprocess(preds, x, images)
    if len(results) != len(patches):  # an Ultralytics upgrade changed the internals this relies on
        raise ModelError(f"Ultralytics returned {len(results)} results for {len(patches)} patches")
    return results


def network_input(ul, batch):
    """A uint8 (n, h, w, 3) batch tensor (on the model's device) as the network takes it: (n, 3, h, w) in its
    memory format (channels-last for a torch model on a CPU) and its dtype (float16, bfloat16 or float32), in
    [0, 1]."""
    import torch

    x = batch.permute(0, 3, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last if ul.tiler_channels_last else torch.contiguous_format)
    return (x.half() if ul.model.fp16 else x.to(torch.bfloat16) if ul.tiler_bf16 else x.float()).div_(255)


class BoxOutput:
    """A detect or OBB batch's detections after NMS, scaled to the patches: corners (n, 4, 2) float64, class,
    score, and the index of each one's image in the batch (images in order, each image's in Ultralytics' order)."""

    def __init__(self, corners: np.ndarray, cls: np.ndarray, conf: np.ndarray, image: np.ndarray):
        self.corners, self.cls, self.conf, self.image = corners, cls, conf, image


def box_outputs(ul, preds, img, images: list[np.ndarray]) -> BoxOutput | None:
    """What `DetectionPredictor` / `OBBPredictor.postprocess` give for a batch, as one `BoxOutput` instead of a
    Results object per image (their scaling and corner conversion are elementwise, so one call over the batch
    gives each row what a per-image call gives: tested equal to `YOLO.predict`). Rotated boxes are suppressed
    for the whole batch at once (`nms.batched_rotated_nms`); axis-aligned ones by Ultralytics' own NMS.
    None (the caller uses `ul.postprocess`) for other predictors (RT-DETR, FastSAM, ...), end-to-end models,
    patches of different sizes, or where the batched NMS does not apply."""
    import torch
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.models.yolo.obb import OBBPredictor
    from ultralytics.utils import nms as ul_nms
    from ultralytics.utils import ops

    from .nms import batched_rotated_nms

    if type(ul) not in (DetectionPredictor, OBBPredictor) or getattr(ul.model, "end2end", False) \
            or getattr(ul, "_feats", None) is not None or any(im.shape != images[0].shape for im in images):
        return None
    pred = preds[0] if isinstance(preds, (list, tuple)) else preds
    a = ul.args
    if type(ul) is OBBPredictor:
        found = batched_rotated_nms(pred, a.conf, a.iou, a.classes, a.agnostic_nms, max_det=a.max_det,
                                    nc=len(ul.model.names))
        if found is None:
            return None
        rows, image = found
        # OBBPredictor.construct_result, then Results' OBB.xyxyxyxy
        xywh = ops.scale_boxes(img.shape[2:], rows[:, :4].clone(), images[0].shape, xywh=True)
        corners = ops.xywhr2xyxyxyxy(torch.cat([xywh, rows[:, -1:]], dim=-1)).cpu().numpy().astype(np.float64)
    else:
        kept = ul_nms.non_max_suppression(pred, a.conf, a.iou, a.classes, a.agnostic_nms, max_det=a.max_det, nc=0)
        rows = torch.cat(kept)
        image = torch.repeat_interleave(torch.arange(len(kept), device=rows.device),
                                        torch.tensor([len(k) for k in kept], device=rows.device))
        # DetectionPredictor.construct_result, then Results' Boxes.xyxy
        corners = box_corners(ops.scale_boxes(img.shape[2:], rows[:, :4].clone(), images[0].shape).cpu().numpy())
    return BoxOutput(corners, rows[:, 5].cpu().numpy(), rows[:, 4].cpu().numpy(), image.cpu().numpy())


def _device_batch(ul, images: list[np.ndarray], batch: np.ndarray | None = None):
    """The letterboxed uint8 batch (n, h, w, 3) on the model's device. `batch`, where given, is `images` as one
    (n, h, w, 3) array.

    Ultralytics' letterbox (colour-blind, so RGB patches go through it as they are) is skipped where it is the
    identity, i.e. for patches already of the model's input size (the default: imgsz is the patch size): it
    copies each patch through OpenCV first, 84 against 21 ms per 64 patches of 640 px on the 2-core development
    CPU, about 1 ms per patch, more than an H100's forward pass of one.

    For a GPU the batch must be in pinned host memory to be copied asynchronously. A `batch` that is (the job's
    readers fill `Predictor.batch_buffer`s) is copied as it is; anything else is first stacked into a pinned
    buffer kept for the next batch. Profiled on an H100 machine, per batch of 64 patches of 640 px (78 MB):
    stacking into a fresh array 28 ms and the pageable copy 13 ms, against 20 and 1.5 ms through the kept
    buffer; the forward pass itself takes 19 ms. On an H200 that stacking was still 45 % of `predict`, hence
    the readers' own pinned buffers. A pinned `batch` must not be written again before `predict` returns
    (its results are on the host by then, so the copy has finished)."""
    import torch

    shape = _letterbox_identity(ul, images)
    on_gpu = torch.device(ul.device).type == "cuda"
    if shape is None or not on_gpu:
        if shape is None:
            x = torch.from_numpy(np.stack(ul.pre_transform(images)))
        else:
            x = torch.from_numpy(batch if batch is not None else np.stack(images))
        return x.to(ul.device) if on_gpu else x
    if batch is not None and batch.flags.c_contiguous:
        x = torch.from_numpy(batch)
        if x.is_pinned():
            return x.to(ul.device, non_blocking=True)
    buf, copied = getattr(ul, "tiler_pinned", (None, None))
    if buf is None or buf.shape[1:] != shape or buf.shape[0] < len(images):
        buf, copied = torch.empty((len(images), *shape), dtype=torch.uint8).pin_memory(), None
    if copied is not None:
        copied.synchronize()  # the last batch's copy out of the buffer has finished
    if batch is not None:
        np.copyto(buf.numpy()[:len(images)], batch)
    else:
        np.stack(images, out=buf.numpy()[:len(images)])
    x = buf[:len(images)].to(ul.device, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    ul.tiler_pinned = (buf, copied)
    return x


def _letterbox_identity(ul, images: list[np.ndarray]) -> tuple[int, int, int] | None:
    """The patches' common (h, w, 3) shape where Ultralytics' letterbox would leave them as they are (they have
    the model's input size), else None."""
    from ultralytics.data.augment import LetterBox

    shape = images[0].shape
    if len(shape) != 3 or shape[2] != 3 or any(im.shape != shape for im in images):
        return None
    known = getattr(ul, "tiler_identity_shapes", None)
    if known is None:
        known = ul.tiler_identity_shapes = {}
    if shape not in known:  # decided once per patch shape, not per batch
        p = LetterBox(ul.imgsz, auto=False, stride=ul.model.stride).get_params({"img": images[0]})
        known[shape] = p["new_unpad"] == (shape[1], shape[0]) and not (p["top"] or p["bottom"] or p["left"]
                                                                       or p["right"])
    return shape if known[shape] else None


class SegmentOutput:
    """One image's detections after NMS: boxes in patch pixels, class, score, mask coefficients, prototypes."""

    def __init__(self, boxes, cls, conf, coefs, protos, input_hw):
        self.boxes, self.cls, self.conf, self.coefs, self.protos = boxes, cls, conf, coefs, protos
        self.input_hw = input_hw


def _segment_outputs(preds, img, orig_imgs, protos) -> list[SegmentOutput]:
    from ultralytics.utils import ops

    if len(preds) and preds[0].shape[1] != 6 + protos.shape[1]:
        raise ModelError(f"unexpected segmentation output layout {tuple(preds[0].shape)}; "
                         "this Ultralytics version is unsupported")
    out = []
    for pred, orig, proto in zip(preds, orig_imgs, protos):
        boxes = ops.scale_boxes(img.shape[2:], pred[:, :4].clone(), orig.shape)
        out.append(SegmentOutput(boxes.float().cpu().numpy().astype(np.float64), pred[:, 5].cpu().numpy(),
                                 pred[:, 4].float().cpu().numpy(), pred[:, 6:].float().cpu().numpy(),
                                 proto.float().cpu().numpy(), tuple(img.shape[2:])))
    return out


def mask_ratio(model, export_meta: dict | None = None) -> int | None:
    """The mask_ratio a segment model was trained with: from a .pt's training arguments, or from an export's
    metadata where tiler's own exports record it (`record_mask_ratio_on_export`); None when not known.
    `export_meta`: the export's metadata when the caller has read it already."""
    if isinstance(model.model, (str, os.PathLike)):
        meta = export_meta if export_meta is not None else export_metadata(model.model)
        value = meta.get("mask_ratio")
    else:
        ckpt = model.ckpt if isinstance(model.ckpt, dict) else {}
        value = ckpt.get("train_args", {}).get("mask_ratio")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):  # not a number: unknown, as if absent
        return None


def record_mask_ratio_on_export(model) -> None:
    """Make the next export of this YOLO .pt model carry its training mask_ratio in the export's own metadata
    (every format writes Exporter.metadata: ONNX properties, OpenVINO metadata.yaml, TorchScript, TensorRT),
    so an export outlines masks as its .pt does, even copied away from tiler's cache."""
    value = mask_ratio(model) if model.task == "segment" else None
    if value is not None:
        model.add_callback("on_export_start", lambda exporter: exporter.metadata.update(mask_ratio=value))


def export_metadata(path) -> dict:
    """The metadata (task, names, imgsz, batch, ...) an Ultralytics export carries, read without loading it."""
    from ultralytics.nn.backends.base import BaseBackend

    import ast

    meta = BaseBackend.read_metadata(path)
    if not isinstance(meta, dict):
        return {}
    for k, v in meta.items():  # ONNX metadata holds every value as a string
        if isinstance(v, str) and k in ("imgsz", "names", "args", "stride", "batch", "dynamic", "end2end",
                                        "mask_ratio"):
            try:
                meta[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                pass
    return meta
