"""Each block of a frame decoded once per job, shared by the in-process runner's readers.

Windows overlap (25 % by default) and a GPU job reads each batch with several threads at once, each through its
own GDAL handle. GDAL's block cache belongs to a handle, so reading windows straight from the raster decodes a
block again whenever another thread reads it: the blocks under a batch's seams, and the rows a window shares with
the row of windows above it (on the 2-core machine a row of windows read without the cache of the row above took
2x as long). Here the raster is cut into cells (whole GDAL blocks, at least `CELL` px a side): the cells a batch
needs that no earlier batch decoded are shared out among the batch's readers; each decodes its share, one read per
run of cells, then cuts its windows out of the cells, waiting for any that another reader is still decoding. A cell
is dropped once the last batch that needs it has been read; batches follow the plan's row-major order, so the
cells held are about two rows of windows across the raster.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..errors import RasterError

CELL = 512  # px: a cell is whole blocks, at least this wide and high (fewer, larger reads; a few cells a window)


class _Cell:
    __slots__ = ("ready", "pixels", "failed")

    def __init__(self):
        self.ready = threading.Event()
        self.pixels: np.ndarray | None = None  # (h, w, 3) uint8, as `RasterSource.read` gives
        self.failed = False  # its decoding raised (the window reads say why) or was abandoned

    def fail(self) -> None:
        """It will not be decoded: readers waiting for it go on, reading their windows from the raster."""
        self.failed = True
        self.ready.set()


@dataclass
class BatchCells:
    """What one batch's readers do: reader i decodes `decode[i]` (runs of cells: row, first column, last column)
    then cuts its windows; `cells` are the batch's cells, by key."""

    decode: list[list[tuple[int, int, int]]]
    cells: dict[int, _Cell]


class FrameBlocks:
    """The decoded cells of one frame, for the batches `origins` (in the order they are read, each an (n, 2)
    array of window corners) of windows of `patch_size` (w, h)."""

    def __init__(self, width: int, height: int, block: tuple[int, int], patch_size: tuple[int, int],
                 origins: list[np.ndarray]):
        bw, bh = block
        self.width, self.height, self.patch_size = width, height, patch_size
        self.cw = min(width, bw * -(-CELL // bw)) if bw < width else width
        self.ch = min(height, bh * -(-CELL // bh))
        self.cols = -(-width // self.cw)
        self.keys = [self._keys(o) for o in origins]
        self.last_use = np.full(self.cols * -(-height // self.ch), -1, dtype=np.int64)
        for k, keys in enumerate(self.keys):
            self.last_use[keys] = k
        self.cells: dict[int, _Cell] = {}
        self.lock = threading.Lock()

    def _span(self, origins: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per window, its first and last cell column and row (the part inside the raster)."""
        pw, ph = self.patch_size
        x, y = origins[:, 0], origins[:, 1]
        x0, y0 = np.clip(x, 0, self.width - 1), np.clip(y, 0, self.height - 1)
        x1, y1 = np.clip(x + pw, 1, self.width) - 1, np.clip(y + ph, 1, self.height) - 1
        return x0 // self.cw, x1 // self.cw, y0 // self.ch, y1 // self.ch

    def _keys(self, origins: np.ndarray) -> np.ndarray:
        """The cells (row * cols + column) any of the windows covers, sorted (row-major)."""
        c0, c1, r0, r1 = self._span(origins)
        span_c, span_r = int((c1 - c0).max(initial=0)) + 1, int((r1 - r0).max(initial=0)) + 1
        keys = [((r0 + dr) * self.cols + c0 + dc)[(c0 + dc <= c1) & (r0 + dr <= r1)]
                for dr in range(span_r) for dc in range(span_c)]
        return np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)

    def claim(self, k: int, parts: list[tuple[int, int]], origins: np.ndarray) -> BatchCells:
        """Batch `k`'s cells: those not yet decoded are created here (in batch order, so a cell is decoded by the
        first batch that needs it) and given to the reader of the first window (of `parts`, [lo, hi) ranges of
        the batch) that covers it."""
        c0, c1, r0, r1 = self._span(origins)
        decode: list[list[tuple[int, int, int]]] = [[] for _ in parts]
        with self.lock:
            cells = {}
            for key in self.keys[k].tolist():
                cell = self.cells.get(key)
                if cell is None:
                    cell = self.cells[key] = _Cell()
                    row, col = divmod(key, self.cols)
                    first = int(np.argmax((c0 <= col) & (col <= c1) & (r0 <= row) & (row <= r1)))
                    owner = next(i for i, (lo, hi) in enumerate(parts) if lo <= first < hi)
                    runs = decode[owner]
                    if runs and runs[-1][0] == row and runs[-1][2] == col - 1:
                        runs[-1] = (row, runs[-1][1], col)
                    else:
                        runs.append((row, col, col))
                cells[key] = cell
        return BatchCells(decode, cells)

    def decode(self, source, runs: list[tuple[int, int, int]], cells: dict[int, _Cell]) -> None:
        """Decode runs of cells through `source` (this reader's handle). A run that fails marks its cells failed
        (the windows over them are then read one by one, so the error names one); every cell is made ready."""
        for row, first, last in runs:
            keys = self._run_keys(row, first, last)
            try:
                x0, y0 = first * self.cw, row * self.ch
                run = source.read(x0, y0, min((last + 1) * self.cw, self.width) - x0,
                                  min(self.ch, self.height - y0))
                for key, col in zip(keys, range(first, last + 1)):
                    cells[key].pixels = run[:, (col - first) * self.cw:(col - first + 1) * self.cw]
            except BaseException as exc:
                for key in keys:
                    cells[key].fail()
                if not isinstance(exc, RasterError):
                    raise
            else:
                for key in keys:
                    cells[key].ready.set()

    def cut(self, source, origins: np.ndarray, window_ids: np.ndarray, cells: dict[int, _Cell],
            out: np.ndarray) -> None:
        """Windows at `origins` into `out` ((n, h, w, 3)) from the cells, waiting for those being decoded. A
        window over a failed cell is read from the raster, which raises the `WindowReadError` naming it."""
        pw, ph = self.patch_size
        spans = zip(*origins.T.tolist(), *(a.tolist() for a in self._span(origins)))
        for k, (x, y, c0, c1, r0, r1) in enumerate(spans):
            over = [(row, col, cells[row * self.cols + col]) for row in range(r0, r1 + 1) for col in range(c0, c1 + 1)]
            for _, _, cell in over:
                cell.ready.wait()
            if any(cell.failed for _, _, cell in over):
                source.read(x, y, pw, ph, window_id=int(window_ids[k]), into=out[k])
                continue
            if x < 0 or y < 0 or x + pw > self.width or y + ph > self.height:
                out[k] = 0  # the part outside the raster
            for row, col, cell in over:
                cx, cy = col * self.cw, row * self.ch
                ax, ay = max(x, cx), max(y, cy)
                bx, by = min(x + pw, cx + self.cw, self.width), min(y + ph, cy + self.ch, self.height)
                out[k, ay - y:by - y, ax - x:bx - x] = cell.pixels[ay - cy:by - cy, ax - cx:bx - cx]

    def give_up(self, runs: list[tuple[int, int, int]], cells: dict[int, _Cell]) -> None:
        """A reader that will not decode its runs (its frame has failed) marks their cells failed."""
        for run in runs:
            for key in self._run_keys(*run):
                cells[key].fail()

    def _run_keys(self, row: int, first: int, last: int) -> range:
        return range(row * self.cols + first, row * self.cols + last + 1)

    def release(self, k: int) -> None:
        """Batch `k` is read: drop the cells no later batch needs."""
        with self.lock:
            for key in self.keys[k][self.last_use[self.keys[k]] <= k].tolist():
                self.cells.pop(key, None)

    def abandon(self) -> None:
        """The job stops: wake any reader waiting for a cell that will not be decoded now."""
        with self.lock:
            for cell in self.cells.values():
                if not cell.ready.is_set():
                    cell.fail()
            self.cells.clear()
