"""Model formats and inference backends: a `.pt` runs on torch; Ultralytics exports (OpenVINO folder, ONNX,
TensorRT engine, TorchScript) run on their own runtime through Ultralytics' AutoBackend.

`--backend openvino|onnx|tensorrt|torchscript` with a `.pt` model exports it once into a cache keyed by the
model's hash, input size, batch and precision, then reuses the export (every later job, every Ray actor on
the same machine). Exports have a fixed input size and batch: the job's, with a short last batch padded by
Ultralytics. `openvino-int8` quantises the OpenVINO export on calibration patches (quantize.py). Nothing is
ever downloaded: a runtime that is not installed is a one-line error.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from ..errors import ModelError, first_line
from . import _ultralytics

BACKENDS = ("torch", "openvino", "openvino-int8", "onnx", "tensorrt", "torchscript")
# Ultralytics' export format name for each backend
_EXPORT_FORMAT = {"openvino": "openvino", "onnx": "onnx", "tensorrt": "engine", "torchscript": "torchscript"}
# the module each runtime needs, and how to get it
_RUNTIME = {"openvino": ("openvino", "pip install openvino"),
            "openvino-int8": ("nncf", "pip install nncf openvino"),
            "onnx": ("onnxruntime", "pip install onnx onnxruntime onnxslim"),
            "tensorrt": ("tensorrt", "pip install tensorrt (needs an NVIDIA GPU with CUDA)")}


def model_format(path: str | os.PathLike) -> str:
    """The backend a model file or folder runs on, from its name (as Ultralytics decides): `.pt` torch,
    `*_openvino_model/` openvino, `.onnx` onnx, `.engine` tensorrt, `.torchscript` torchscript."""
    p = Path(path)
    suffix = p.suffix.lower()
    if p.is_dir():
        if p.name.endswith("_openvino_model") and any(p.glob("*.xml")):
            return "openvino"
        raise ModelError(f"model folder {path} is not an Ultralytics OpenVINO export (a folder named "
                         "*_openvino_model holding the .xml model, as Ultralytics writes it)")
    formats = {".pt": "torch", ".onnx": "onnx", ".engine": "tensorrt", ".torchscript": "torchscript"}
    if suffix not in formats:
        raise ModelError(f"unsupported model format {suffix or '(none)'} for {path}: expected an Ultralytics .pt, "
                         "an OpenVINO export folder, .onnx, .engine or .torchscript")
    return formats[suffix]


def check_runtime(backend: str, device: str = "cpu") -> None:
    """A one-line error when `backend`'s runtime is missing here (Ultralytics would try to pip-install it)."""
    if backend == "tensorrt" and not device.startswith("cuda"):
        raise ModelError("the tensorrt backend needs an NVIDIA GPU with CUDA; this job runs on the CPU "
                         "(use --backend openvino or torch)")
    for name in ("openvino", backend) if backend == "openvino-int8" else (backend,):
        module, hint = _RUNTIME.get(name, (None, ""))
        if module and importlib.util.find_spec(module) is None:
            raise ModelError(f"the {backend} backend needs {module}, which is not installed ({hint})")


def model_backend(path: str | os.PathLike) -> str:
    """The backend a model runs on, as a job reports it: `model_format`, and `openvino-int8` for an OpenVINO
    export quantised to int8 (its metadata says so: tiler's and Ultralytics' own int8 exports both record it)."""
    fmt = model_format(path)
    if fmt == "openvino" and _ultralytics.export_metadata(path).get("args", {}).get("int8"):
        return "openvino-int8"
    return fmt


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a model: of its file, or, for an export folder, of its files' names and contents in order."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


def cache_dir() -> Path:
    """Where exports are kept: $TILER_CACHE_DIR, else $XDG_CACHE_HOME/tiler, else ~/.cache/tiler."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    root = os.environ.get("TILER_CACHE_DIR") or Path(cache_home) / "tiler"
    return Path(root) / "exports"


def exported_model(pt_path: str | os.PathLike, backend: str, imgsz: int, batch: int, half: bool = False,
                   device: str = "cpu") -> Path:
    """The `backend` export of the .pt model at `pt_path` for this input size, batch and precision: from the
    cache when it is there, else exported now."""
    if backend not in _EXPORT_FORMAT:
        raise ModelError(f"cannot export to backend {backend!r}; choose one of {', '.join(_EXPORT_FORMAT)}")
    check_runtime(backend, device)
    pt = Path(pt_path)
    key = f"{pt.stem}-{file_sha256(pt)[:16]}-{backend}-{imgsz}px-b{batch}{'-fp16' if half else ''}"
    return cached_export(key, lambda work: _export(pt, backend, imgsz, batch, half, device, work))


def cached_export(key: str, build: Callable[[Path], dict]) -> Path:
    """The artifact cached under `key` (the Ultralytics version added to it), built first when absent:
    `build(work)` writes it into the empty folder `work` and returns its record (with "artifact", the file or
    folder to load, relative to `work`). Built under a lock, in a temporary folder renamed into place, so
    concurrent jobs and actors never see a half-written export, and wait for one being built instead of
    building it again."""
    import ultralytics

    return _cached(f"{key}-ul{ultralytics.__version__}", build)


def packed_export(artifact: str | os.PathLike) -> tuple[str, dict[str, bytes]] | None:
    """A cached export (the file or folder `cached_export` returned) as (its cache entry's name, {path in it:
    bytes}), to be put in the cache of another machine (`unpacked_export`): Ray actors on other nodes load the
    driver's int8 model that way, having no calibration patches to make it. None for a model not in the cache."""
    folder = Path(artifact).parent
    if folder.parent.resolve() != cache_dir().resolve() or not (folder / "tiler-export.json").is_file():
        return None
    return folder.name, {f.relative_to(folder).as_posix(): f.read_bytes()
                         for f in sorted(folder.rglob("*")) if f.is_file()}


def unpacked_export(packed: tuple[str, dict[str, bytes]]) -> Path:
    """The artifact of a `packed_export`, in this machine's cache (written there first if absent)."""
    name, files = packed

    def build(work: Path) -> dict:
        for rel, data in files.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_bytes(data)
        return json.loads(files["tiler-export.json"])

    return _cached(name, build)


def _cached(name: str, build: Callable[[Path], dict]) -> Path:
    root = cache_dir()
    target = root / name
    if _check(target) == "intact":
        return _artifact(target)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the model export cache {root}: {exc.strerror}") from None
    with open(root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _check(target)
        if state != "intact":
            if state == "damaged":
                warnings.warn(f"the cached export {target} was damaged; making it again", RuntimeWarning,
                              stacklevel=3)
            work = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
            try:
                record = build(work)
                record["files"] = _file_digests(work)
                (work / "tiler-export.json").write_text(json.dumps(record, indent=1))
                shutil.rmtree(target, ignore_errors=True)
                os.replace(work, target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return _artifact(target)


def _file_digests(folder: Path) -> dict[str, list]:
    """{path: [size, sha256]} of every file of a cache entry but its record."""
    return {f.relative_to(folder).as_posix(): [f.stat().st_size, file_sha256(f)]
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != "tiler-export.json"}


def _check(folder: Path) -> str:
    """"intact" when the cache entry `folder` holds the files its record lists, unchanged (a few ms for a model
    of a few MB); "damaged" when one has since been removed, cut short or changed; "absent" when there is no
    record of one (nor of its files: entries made before records listed them are made again)."""
    try:
        files = json.loads((folder / "tiler-export.json").read_text()).get("files")
    except (OSError, ValueError):
        files = None
    if files is None:
        return "absent"
    return "intact" if files == _file_digests(folder) else "damaged"


def _export(pt: Path, backend: str, imgsz: int, batch: int, half: bool, device: str, work: Path) -> dict:
    import torch
    from ultralytics import YOLO

    # Ultralytics writes an export beside its source file, so the source is copied into the work folder
    src = work / pt.name
    shutil.copyfile(pt, src)
    try:
        with warnings.catch_warnings():
            # torch's deprecations of the tracing exporters Ultralytics uses, and the tracer's notes on shape
            # checks in Ultralytics' heads (fixed at the export's size); nothing a tiler user can act on
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = YOLO(str(src))
            _ultralytics.record_mask_ratio_on_export(model)  # the outline inset depends on it (masks.py)
            out = model.export(format=_EXPORT_FORMAT[backend], imgsz=imgsz, batch=batch, half=half,
                               dynamic=False, device=device, verbose=False)
    except Exception as exc:  # Ultralytics raises many types; the first line names the problem
        raise ModelError(f"cannot export {pt.name} to {backend}: {first_line(exc)}") from None
    src.unlink()
    return {"source": str(pt), "backend": backend, "imgsz": imgsz, "batch": batch, "half": half,
            "artifact": Path(out).name}


def _artifact(folder: Path) -> Path:
    return folder / json.loads((folder / "tiler-export.json").read_text())["artifact"]
