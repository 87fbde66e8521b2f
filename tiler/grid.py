"""Plan the grid of overlapping patch windows that covers a raster.

Pure geometry (numpy only, no I/O): given the raster size, the patch size and
the overlap fraction, compute where every patch window starts. Windows are
always exactly one patch in size -- nothing is ever resized -- and together
they cover every pixel. Along each axis the windows step by a fixed stride,
and the last window is shifted back so it ends exactly at the raster edge
rather than hanging over it; only when the raster is smaller than the patch
does the single window extend past the raster (the reader pads it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

__all__ = ["WindowGrid", "axis_origins", "plan_windows", "select_windows_with_data"]


# eq=False: the generated __eq__/__hash__ would compare numpy arrays
# element-wise and fail, so a grid compares by identity instead.
@dataclass(frozen=True, eq=False)
class WindowGrid:
    """A separable grid of patch windows: every (x, y) in xs × ys is a window origin."""

    raster_width: int
    raster_height: int
    patch_width: int
    patch_height: int
    stride_x: int
    stride_y: int
    xs: np.ndarray  # int64 column origins, ascending
    ys: np.ndarray  # int64 row origins, ascending

    def __post_init__(self) -> None:
        # Freeze the arrays too, so the grid really is immutable.
        for name in ("xs", "ys"):
            arr = np.array(getattr(self, name), dtype=np.int64)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def n_cols(self) -> int:
        return int(self.xs.size)

    @property
    def n_rows(self) -> int:
        return int(self.ys.size)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def origins(self) -> np.ndarray:
        """(n, 2) int64 array of (x0, y0), row-major: a whole row left to right, then the next."""
        gx, gy = np.meshgrid(self.xs, self.ys)  # both shaped (n_rows, n_cols)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)

    def bounds(self) -> np.ndarray:
        """(n, 4) int64 array of (x0, y0, x1, y1), same order as :meth:`origins`."""
        o = self.origins()
        size = np.array([self.patch_width, self.patch_height], dtype=np.int64)
        return np.concatenate([o, o + size], axis=1)

    def clipped_bounds(self) -> np.ndarray:
        """(n, 4) int64 like :meth:`bounds`, cut to the raster (a patch larger than the raster reads padding)."""
        b = self.bounds()
        np.minimum(b[:, 2], self.raster_width, out=b[:, 2])
        np.minimum(b[:, 3], self.raster_height, out=b[:, 3])
        return b


def _positive_int(value: object, name: str) -> int:
    # bool is an Integral, but True as a size is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(value)


def _overlap(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    # Written so that NaN fails too.
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def _pair(value: object, name: str) -> tuple[object, object]:
    """A scalar means the same for both axes; a 2-sequence is (x, y)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a scalar or a pair (x, y), got {value!r}")
        return value[0], value[1]
    return value, value


def axis_origins(length: int, size: int, stride: int) -> np.ndarray:
    """Window origins along one axis, as an ascending int64 array.

    0, stride, 2*stride, ... for every window that still ends inside the
    raster, then one last window flush with the far edge (origin
    ``length - size``). A raster no longer than the patch gets one window at 0.
    """
    length = _positive_int(length, "length")
    size = _positive_int(size, "size")
    stride = _positive_int(stride, "stride")
    if stride > size:
        # Larger steps would leave uncovered gaps between windows.
        raise ValueError(f"stride must not exceed size ({size}), got {stride}")
    if length <= size:
        return np.zeros(1, dtype=np.int64)
    last = length - size
    # arange stops strictly before `last`, so appending it never duplicates.
    return np.append(np.arange(0, last, stride, dtype=np.int64), np.int64(last))


def plan_windows(
    raster_width: int,
    raster_height: int,
    patch_size: int | tuple[int, int],
    overlap: float | tuple[float, float] = 0.25,
) -> WindowGrid:
    """Plan the overlapping windows that tile a ``raster_width`` × ``raster_height`` raster.

    ``patch_size`` is an int (square) or ``(width, height)``; ``overlap`` is a
    fraction in [0, 1), one float for both axes or ``(x, y)``. The stride on
    each axis is ``round(size * (1 - overlap))``, at least 1.
    """
    width = _positive_int(raster_width, "raster_width")
    height = _positive_int(raster_height, "raster_height")
    pw, ph = (_positive_int(v, "patch_size") for v in _pair(patch_size, "patch_size"))
    ox, oy = (_overlap(v, "overlap") for v in _pair(overlap, "overlap"))

    sx = max(1, round(pw * (1.0 - ox)))
    sy = max(1, round(ph * (1.0 - oy)))
    return WindowGrid(
        raster_width=width,
        raster_height=height,
        patch_width=pw,
        patch_height=ph,
        stride_x=sx,
        stride_y=sy,
        xs=axis_origins(width, pw, sx),
        ys=axis_origins(height, ph, sy),
    )


def _mask_span(lo: np.ndarray, hi: np.ndarray, scale: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask-pixel index range [a, b) touched by full-res spans [lo, hi), clipped to [0, n]."""
    # floor/ceil widen the span outward, so a partly covered mask pixel counts.
    a = np.clip(np.floor(lo / scale).astype(np.int64), 0, n)
    b = np.clip(np.ceil(hi / scale).astype(np.int64), 0, n)
    return a, np.maximum(a, b)


def select_windows_with_data(
    grid: WindowGrid,
    valid_mask: np.ndarray,
    scale_x: float,
    scale_y: float,
) -> np.ndarray:
    """Flag the windows that touch at least one valid pixel of a coarse mask.

    ``valid_mask`` is a 2-D boolean (rows, cols) mask of the raster where one
    mask pixel covers ``scale_x`` × ``scale_y`` full-resolution pixels (e.g. a
    mask read from an overview). Returns a bool array of ``len(grid)`` in the
    order of :meth:`WindowGrid.origins`. Conservative: a window whose
    footprint touches any valid mask pixel, even partly, is kept.
    """
    mask = np.asarray(valid_mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"valid_mask must be 2-D, got shape {mask.shape}")
    for name, s in (("scale_x", scale_x), ("scale_y", scale_y)):
        if not (isinstance(s, Real) and math.isfinite(s) and s > 0):
            raise ValueError(f"{name} must be a positive finite number, got {s!r}")
    mh, mw = mask.shape

    # Summed-area table with a zero row/column in front: the count of valid
    # pixels in rows [r0, r1) × cols [c0, c1) is four lookups, O(1) per window.
    sat = np.zeros((mh + 1, mw + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])

    # The grid is separable, so spans are computed per axis and broadcast.
    c0, c1 = _mask_span(grid.xs, grid.xs + grid.patch_width, float(scale_x), mw)
    r0, r1 = _mask_span(grid.ys, grid.ys + grid.patch_height, float(scale_y), mh)
    r0, r1 = r0[:, None], r1[:, None]
    counts = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]  # (n_rows, n_cols)
    return (counts > 0).ravel()
