"""The `openvino-int8` backend: the model's OpenVINO export quantised to int8 by NNCF post-training quantisation,
calibrated on patches of the job's own imagery.

What stays in float is what Ultralytics' own int8 export leaves there: the head's box decoding (its adds,
multiplies, concatenations and DFL) and every sigmoid. Quantising the decoding too was measured to cost 4 points
of vehicle recall and 0.04 of box IoU on the project's OBB model; with it left in float, detections are within
a point of the `.pt`'s (bench/README.md, "Inference backends").

A quantised model depends on its calibration patches, so the cache key holds their digest: the same job run
again (or resumed) finds the same export; another raster makes another one (11-20 s here, once). Ray actors
on other nodes get the driver's (backends.packed_export)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ModelError, first_line
from . import backends

CALIBRATION_PATCHES = 128  # at most, spread over the job's windows (frames.calibration_patches)


def calibration_digest(patches: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for p in patches:
        h.update(repr(p.shape).encode())
        h.update(np.ascontiguousarray(p).data)
    return h.hexdigest()


def quantized_model(pt_path: str | os.PathLike, imgsz: int, batch: int, calibration: list[np.ndarray] | np.ndarray,
                    on_build: Callable[[], None] | None = None) -> Path:
    """The int8 OpenVINO export of the .pt model at `pt_path` for this input size and batch, calibrated on
    `calibration` (RGB uint8 (h, w, 3) patches, as the job feeds them to the model; sizes may differ): from the
    cache, else quantised now (`on_build` is called first, to tell the user why this job takes longer)."""
    backends.check_runtime("openvino-int8")
    calibration = list(calibration)
    if not calibration or any(p.dtype != np.uint8 or p.ndim != 3 or p.shape[-1] != 3 for p in calibration):
        raise ModelError("int8 calibration needs one or more RGB uint8 (h, w, 3) patches")
    pt = Path(pt_path)
    # another NNCF may quantise differently, so its version is in the key (Ultralytics' is added to every key)
    key = f"{pt.stem}-{backends.file_sha256(pt)[:16]}-openvino-int8-{imgsz}px-b{batch}" \
          f"-cal{calibration_digest(calibration)[:12]}-nncf{importlib.metadata.version('nncf')}"

    def build(work: Path) -> dict:
        if on_build is not None:
            on_build()
        fp32 = backends.exported_model(pt, "openvino", imgsz, batch)
        out = work / f"{pt.stem}_int8_openvino_model"
        _quantize(pt, fp32, _model_inputs(calibration, imgsz, batch), out)
        return {"source": str(pt), "backend": "openvino-int8", "imgsz": imgsz, "batch": batch,
                "calibration_patches": len(calibration), "artifact": out.name}

    return backends.cached_export(key, build)


def _model_inputs(patches: list[np.ndarray], imgsz: int, batch: int) -> list[np.ndarray]:
    """The calibration patches as the model sees them: letterboxed to `imgsz` as Ultralytics does for a
    fixed-size export, NCHW float in 0-1, in batches of the export's fixed size (the last one filled up by
    repeating patches from the start)."""
    from ultralytics.data.augment import LetterBox

    letterbox = LetterBox(imgsz, auto=False, stride=32)
    boxed = np.stack([letterbox(image=p) for p in patches])
    order = np.resize(np.arange(len(boxed)), -(-len(boxed) // batch) * batch)
    return [np.ascontiguousarray(boxed[order[i:i + batch]].transpose(0, 3, 1, 2), dtype=np.float32) / 255
            for i in range(0, len(order), batch)]


def _quantize(pt: Path, fp32: Path, inputs: list[np.ndarray], out: Path) -> None:
    import nncf
    import openvino as ov
    import yaml
    from ultralytics.nn.modules import Detect, RTDETRDecoder

    from .predictor import load_model

    head = load_model(pt).model.model[-1]
    model = ov.Core().read_model(next(fp32.glob("*.xml")))
    # the same choice as Ultralytics' int8 export: a detection head's decoding stays in float
    ignored = nncf.IgnoredScope(names=_decoding_ops(model)) if isinstance(head, (Detect, RTDETRDecoder)) else None
    nncf.set_log_level(logging.ERROR)
    try:
        # its progress bars write to stdout, where a job may be writing its output
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quantized = nncf.quantize(model, nncf.Dataset(inputs), preset=nncf.QuantizationPreset.MIXED,
                                      model_type=nncf.ModelType.TRANSFORMER if isinstance(head, RTDETRDecoder)
                                      else None, subset_size=len(inputs), ignored_scope=ignored)
    except Exception as exc:  # NNCF raises many types; the first line names the problem
        raise ModelError(f"cannot quantise {pt.name} to int8: {first_line(exc)}") from None
    out.mkdir()
    ov.save_model(quantized, out / f"{pt.stem}.xml")
    meta = yaml.safe_load((fp32 / "metadata.yaml").read_text())
    meta.setdefault("args", {})["int8"] = True  # as Ultralytics' own int8 export records it
    (out / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def _decoding_ops(model) -> list[str]:
    """The names of the OpenVINO ops Ultralytics' int8 export leaves in float: every sigmoid, and the head's own
    operations (box decoding, concatenations) and DFL, the head being the scope of the last sigmoid."""
    ops = model.get_ordered_ops()
    sigmoids = [op.get_friendly_name() for op in ops if op.get_type_name() == "Sigmoid"]
    if not sigmoids:
        return []
    scope = sigmoids[-1].split("/", 1)[0]
    return sigmoids + [op.get_friendly_name() for op in ops if op.get_type_name() != "Sigmoid"
                       and op.get_friendly_name().startswith((f"{scope}/", f"{scope}.dfl"))]
