"""Which bands are red, green and blue, and how their values become the 8 bits a model was trained on.

Band order comes from the raster's colour interpretation when it names red, green and blue (in any order,
other bands ignored), else bands 1, 2, 3 (a single band replicated); `--bands` overrides both. A palette
raster is expanded to RGB through its colour table.

The 8-bit mapping is the user's choice (`--stretch`), never guessed per window: `percentile:LOW,HIGH` (per
band, from a decimated read of the whole raster), `minmax`, `range:LOW,HIGH` (all bands) or
`range:L1,H1,L2,H2,L3,H3`, and `none` (values already 0-255, anything outside clipped). Unset: uint8 data is
used as it is, other types get `percentile:2,98`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

DEFAULT_STRETCH = "percentile:2,98"  # for data that is not uint8, when the user does not choose
_STRETCH_HELP = "percentile:LOW,HIGH, minmax, range:LOW,HIGH (or six values, one pair per band) or none"


@dataclass(frozen=True)
class StretchSpec:
    """A parsed `--stretch`: kind percentile | minmax | range | none, and its numbers."""

    kind: str
    values: tuple[float, ...] = ()

    def __str__(self) -> str:
        return self.kind + (":" + ",".join(f"{v:g}" for v in self.values) if self.values else "")


def parse_stretch(value) -> StretchSpec | None:
    """`value` as a StretchSpec (None stays None: the default by data type); a one-line ConfigError if bad."""
    if value is None:
        return None
    if isinstance(value, StretchSpec):
        return value
    text = str(value).strip().lower()
    kind, _, rest = text.partition(":")
    try:
        nums = tuple(float(v) for v in rest.split(",")) if rest.strip() else ()
    except ValueError:
        raise ConfigError(f"stretch must be {_STRETCH_HELP}, got {value!r}") from None
    if any(not math.isfinite(v) for v in nums):
        raise ConfigError(f"stretch values must be finite numbers, got {value!r}")
    if kind == "percentile":
        nums = nums or (2.0, 98.0)
        if len(nums) != 2 or not 0 <= nums[0] < nums[1] <= 100:
            raise ConfigError(f"stretch percentile:LOW,HIGH needs 0 <= LOW < HIGH <= 100, got {value!r}")
    elif kind in ("minmax", "none"):
        if nums:
            raise ConfigError(f"stretch {kind} takes no values, got {value!r}")
    elif kind == "range":
        if len(nums) not in (2, 6) or any(lo >= hi for lo, hi in zip(nums[::2], nums[1::2])):
            raise ConfigError(f"stretch range needs LOW,HIGH or L1,H1,L2,H2,L3,H3 with each LOW < HIGH, got {value!r}")
    else:
        raise ConfigError(f"stretch must be {_STRETCH_HELP}, got {value!r}")
    return StretchSpec(kind, nums)


def rgb_from_colorinterp(colorinterp) -> tuple[int, int, int] | None:
    """1-based (red, green, blue) band numbers when the colour interpretation names all three, else None."""
    from rasterio.enums import ColorInterp

    where = {ci: k + 1 for k, ci in reversed(list(enumerate(colorinterp)))}  # the first band of each name
    want = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    return tuple(where[c] for c in want) if all(c in where for c in want) else None


def choose_bands(requested: tuple[int, ...] | None, colorinterp, count: int) -> tuple[tuple[int, int, int], str]:
    """(bands as R, G, B, how they were chosen: requested | colorinterp | default | grey)."""
    if requested:
        bands, how = tuple(requested), "requested"
    else:
        ci = rgb_from_colorinterp(colorinterp)
        if ci is not None:
            return ci, "colorinterp"
        bands, how = ((1, 2, 3), "default") if count >= 3 else ((1,), "grey")
    if len(bands) == 1:
        bands = bands * 3
    return tuple(int(b) for b in bands), how


def stretch_limits(spec: StretchSpec, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per band of `sample` ((bands, n) finite values of a decimated read) for `spec`."""
    n = sample.shape[0]
    if spec.kind == "range":
        v = np.array(spec.values, dtype=np.float64)
        lo, hi = (np.repeat(v[0], n), np.repeat(v[1], n)) if len(v) == 2 else (v[0::2][:n], v[1::2][:n])
        return lo, hi
    lows, highs = np.zeros(n), np.ones(n)
    for k in range(n):
        vals = sample[k]
        if vals.size == 0:
            continue
        if spec.kind == "minmax":
            lo, hi = float(vals.min()), float(vals.max())
        else:
            lo, hi = (float(x) for x in np.percentile(vals, spec.values))
        lows[k], highs[k] = lo, hi if hi > lo else lo + 1.0
    return lows, highs

