"""Checkpoints: a job's finished work on disk, as it arrives, so a killed job resumes where it stopped.

A work dir holds:

    manifest.json          what the run is: its fingerprint (parameters that decide the detections, the
                           model's SHA-256, every frame's path, size and modification time, tiler's version)
    batches/F-S.npz        the raw detections of one model batch (frame F, first window S of the batch),
                           with the window ids it covers: the done-set is (frame, window)
    frames/F.npz           frame F merged across its window seams (written when its last batch is in)

Every file is written to a temporary name and renamed, so a kill leaves whole files or none. A batch is
checkpointed whole, and batches are fixed by the job (frame, position, batch size), so a resumed run feeds
the model exactly the batches it had not finished, and its output is identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .detections import Detections
from .errors import ConfigError

MANIFEST = "manifest.json"
WORK_SUFFIX = ".tiler-work"


def default_work_dir(out: str | None, out_dir: str | None) -> Path | None:
    """Beside the output: OUT.tiler-work for a dataset, DIR.tiler-work for a folder of frames."""
    target = out or (out_dir.rstrip("/\\") if out_dir else None)
    if not target:
        return None
    p = Path(target)
    return p.with_name(p.name + WORK_SUFFIX)


def frame_identity(uri: str) -> dict:
    """A frame as a resumed run must find it again: its path, and for a local file its size and mtime."""
    try:
        st = os.stat(uri)
        return {"uri": uri, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"uri": uri, "size": None, "mtime_ns": None}


def describe_change(old: dict, new: dict) -> str | None:
    """The first difference between two fingerprints, in words, or None."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "frames":
            a_uris, b_uris = [f["uri"] for f in a or []], [f["uri"] for f in b or []]
            if a_uris != b_uris:
                return f"the inputs changed ({len(a_uris)} frames before, {len(b_uris)} now)"
            changed = next(f["uri"] for f, g in zip(a, b) if f != g)
            return f"input {changed} changed (size or modification time)"
        if key == "config":
            k = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            return f"{k} changed ({a.get(k)!r} before, {b.get(k)!r} now)"
        return f"{key.replace('_', ' ')} changed"
    return None


def _atomic_savez(path: Path, arrays: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


class WorkDir:
    """The checkpoints of one run (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, checkpoints: bool = True):
        self.path = Path(path)
        self.batches = self.path / "batches"
        self.frames = self.path / "frames"
        self.checkpoints = checkpoints  # False: a spool of merged frames only, never resumed

    @classmethod
    def spool(cls, beside: str | os.PathLike) -> "WorkDir":
        """A private folder beside `beside` for a survey's merged frames when checkpoints are off: the
        frames still leave memory as they finish, and the folder goes when the job ends."""
        import tempfile

        parent = Path(beside).parent if str(Path(beside).parent) else Path(".")
        work = cls(tempfile.mkdtemp(prefix=f".{Path(beside).name}.", suffix=".spool", dir=parent), checkpoints=False)
        work.frames.mkdir()
        return work

    def start(self, fingerprint: dict, resume: bool) -> None:
        """Create the work dir for a new run, or check that the one found belongs to this run (`resume`)."""
        manifest = self.path / MANIFEST
        if resume:
            if not manifest.is_file():
                raise ConfigError(f"nothing to resume: no checkpoints in {self.path}")
            try:
                old = json.loads(manifest.read_text())["fingerprint"]
            except (OSError, ValueError, KeyError):
                raise ConfigError(f"cannot resume: {manifest} is unreadable") from None
            change = describe_change(old, fingerprint)
            if change:
                raise ConfigError(f"cannot resume {self.path}: {change}; remove it to start over")
            return
        if self.path.exists():
            if manifest.is_file():
                raise ConfigError(f"{self.path} holds the checkpoints of an unfinished run: add --resume to "
                                  "continue it, or remove it to start over")
            raise ConfigError(f"work dir {self.path} exists and is not a tiler work dir")
        try:
            self.batches.mkdir(parents=True)
            self.frames.mkdir()
        except OSError as exc:
            raise ConfigError(f"cannot create work dir {self.path}: {exc.strerror}") from None
        tmp = manifest.with_name(MANIFEST + ".part")
        tmp.write_text(json.dumps({"fingerprint": fingerprint}, indent=1))
        os.replace(tmp, manifest)

    # -- batches -------------------------------------------------------------------------------------
    def _batch_path(self, frame: int, start: int) -> Path:
        return self.batches / f"{frame:06d}-{start:08d}.npz"

    def save_batch(self, frame: int, start: int, window_ids: np.ndarray, dets: Detections, empty: int) -> None:
        _atomic_savez(self._batch_path(frame, start), {**dets.to_arrays("d_"), "window_ids": window_ids,
                                                       "empty": np.int64(empty)})

    def done_batches(self) -> dict[int, list[int]]:
        """frame -> starts of its checkpointed batches."""
        done: dict[int, list[int]] = {}
        for p in self.batches.glob("*.npz"):
            frame, start = (int(v) for v in p.stem.split("-"))
            done.setdefault(frame, []).append(start)
        return done

    def load_batch(self, frame: int, start: int) -> tuple[np.ndarray, Detections, int]:
        """(window ids, raw detections, empty windows) of a checkpointed batch."""
        with np.load(self._batch_path(frame, start), allow_pickle=False) as z:
            return z["window_ids"], Detections.from_arrays(z, "d_"), int(z["empty"])

    # -- frames --------------------------------------------------------------------------------------
    def _frame_path(self, frame: int) -> Path:
        return self.frames / f"{frame:06d}.npz"

    def save_frame(self, frame: int, merged: Detections, stats: dict) -> None:
        """A frame merged across its seams; its batches are no longer needed."""
        _atomic_savez(self._frame_path(frame), {**merged.to_arrays("d_"),
                                                "stats": np.frombuffer(json.dumps(stats).encode(), np.uint8)})
        for p in self.batches.glob(f"{frame:06d}-*.npz"):
            p.unlink()

    def done_frames(self) -> set[int]:
        return {int(p.stem) for p in self.frames.glob("*.npz")}

    def load_frame(self, frame: int) -> tuple[Detections, dict]:
        with np.load(self._frame_path(frame), allow_pickle=False) as z:
            return Detections.from_arrays(z, "d_"), json.loads(z["stats"].tobytes())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
