"""RasterSource: windowed reads of any GDAL-readable raster, as uint8 RGB patches.

A source never loads the whole raster. It reads one window at a time, clipped to the raster and
zero-padded to the patch size (no slow `boundless` reads). Non-uint8 data is mapped to uint8 by one global
2-98 % per-band stretch computed once from a decimated read (GDAL serves it from overviews when present),
so every patch is scaled identically. The source pickles as its URI and parameters, so a worker process
can reopen it and read its own windows.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from .errors import RasterError, WindowReadError

OVERVIEW_SIZE = 1024  # longest side of the decimated read used for the stretch and the validity mask
STRIPED_WARN_SIZE = 2048  # warn about untiled rasters only above this side: small frames are cheap to read


class StripedRasterWarning(UserWarning):
    """The raster is not tiled: each window read decodes whole-width strips."""


@dataclass(frozen=True)
class Stretch:
    """Per-band linear map of [low, high] to [0, 255]."""

    low: np.ndarray  # (bands,) float64
    high: np.ndarray

    def apply(self, data: np.ndarray) -> np.ndarray:
        """(bands, h, w) any dtype -> (bands, h, w) uint8."""
        low = self.low[:, None, None]
        scale = 255.0 / np.maximum(self.high - self.low, 1e-12)[:, None, None]
        out = np.nan_to_num((data.astype(np.float32) - low) * scale, nan=0.0)
        return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


class RasterSource:
    """A raster opened for windowed reading of RGB uint8 patches.

    Parameters: `uri` (path or any GDAL URI, e.g. /vsis3/...), `bands` (1-based; default 1,2,3, or band 1
    replicated when the raster has fewer than three bands).
    """

    def __init__(self, uri: str | os.PathLike, bands: tuple[int, ...] | None = None):
        self.uri = os.fspath(uri)
        self._requested_bands = tuple(bands) if bands else None
        self._ds = None
        self._open()
        ds = self._ds
        self.width, self.height, self.count = ds.width, ds.height, ds.count
        self.dtype = ds.dtypes[0]
        self.crs = ds.crs
        self.transform = ds.transform
        self.georeferenced = ds.crs is not None and not ds.transform.is_identity
        self.bands = self._pick_bands(self._requested_bands, self.count)
        self.nodata = ds.nodata
        # a per-dataset or alpha mask, or a nodata value, means some pixels are not data
        flags = ds.mask_flag_enums[self.bands[0] - 1]
        self.has_mask = MaskFlags.all_valid not in flags
        block_h, block_w = ds.block_shapes[self.bands[0] - 1]
        self.block_height = block_h
        self.tiled = block_w < ds.width or ds.width <= 512
        # small images (PNG, JPEG frames) are striped by nature and cheap to read; warn where it costs
        if not self.tiled and ds.height > block_h and max(ds.width, ds.height) > STRIPED_WARN_SIZE:
            warnings.warn(f"{self.uri} is not tiled (blocks of {block_w}x{block_h}); reads will be slower — "
                          "convert with `gdal_translate -co TILED=YES` for speed", StripedRasterWarning,
                          stacklevel=2)
        self.stretch = None if self.dtype == "uint8" else self._compute_stretch()

    # -- opening and pickling -------------------------------------------------------------------------
    def _open(self) -> None:
        if "://" not in self.uri and not self.uri.startswith("/vsi") and not os.path.exists(self.uri):
            raise RasterError(f"input raster not found: {self.uri}")
        try:
            self._ds = rasterio.open(self.uri)
        except (RasterioIOError, RasterioError) as exc:
            raise RasterError(f"cannot open raster {self.uri}: {_first_line(exc)}") from None
        if self._ds.count < 1 or self._ds.width < 1 or self._ds.height < 1:
            raise RasterError(f"raster {self.uri} has no pixels")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_ds"] = None  # an open dataset cannot cross processes; the worker reopens the URI
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @property
    def dataset(self):
        if self._ds is None or self._ds.closed:
            self._open()
        return self._ds

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None

    def __enter__(self) -> "RasterSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _pick_bands(bands: tuple[int, ...] | None, count: int) -> tuple[int, int, int]:
        if bands is None:
            bands = (1, 2, 3) if count >= 3 else (1,)
        bad = [b for b in bands if not 1 <= b <= count]
        if bad:
            raise RasterError(f"band(s) {', '.join(map(str, bad))} not in raster with {count} band(s)")
        if len(bands) == 1:
            bands = bands * 3  # a single band becomes grey RGB
        if len(bands) != 3:
            raise RasterError(f"need 1 or 3 bands, got {len(bands)}")
        return tuple(int(b) for b in bands)

    def block_cache_bytes(self, patch_height: int) -> int:
        """GDAL block cache enough for two rows of windows (the overlap re-reads the row above), within
        16 MiB .. 1 GiB: a fixed large cache would only fill with blocks never read again."""
        itemsize = np.dtype(self.dtype).itemsize
        need = 2 * (patch_height + self.block_height) * self.width * len(set(self.bands)) * itemsize
        return int(min(max(need, 16 * 2**20), 2**30))

    # -- global statistics (decimated reads) --------------------------------------------------------------
    def _overview_shape(self) -> tuple[int, int]:
        f = max(1.0, max(self.width, self.height) / OVERVIEW_SIZE)
        return max(1, int(round(self.height / f))), max(1, int(round(self.width / f)))

    def _compute_stretch(self) -> Stretch:
        """One 2-98 % stretch per band from a decimated read, so every patch is mapped identically."""
        ds = self.dataset
        h, w = self._overview_shape()
        unique = sorted(set(self.bands))
        data = ds.read(unique, out_shape=(len(unique), h, w), resampling=Resampling.nearest, masked=True)
        lows, highs = {}, {}
        for k, b in enumerate(unique):
            vals = data[k].compressed().astype(np.float64)
            vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                lows[b], highs[b] = 0.0, 1.0
                continue
            lo, hi = np.percentile(vals, [2, 98])
            if hi <= lo:
                hi = lo + 1.0
            lows[b], highs[b] = float(lo), float(hi)
        return Stretch(np.array([lows[b] for b in self.bands]), np.array([highs[b] for b in self.bands]))

    def coarse_valid_mask(self) -> tuple[np.ndarray, float, float]:
        """(mask, scale_x, scale_y): a decimated boolean map of where the raster has data.

        The mask is decimated by root-mean-square (255 * sqrt(valid fraction), which stays above zero for a
        lone valid pixel where an average would round to 0; GDAL serves it from mask overviews when
        present) and any non-zero coarse pixel, grown by one coarse pixel, counts as data.
        Windows that pass but read back empty are still caught before the model runs.
        """
        h, w = self._overview_shape()
        if not self.has_mask:
            return np.ones((h, w), dtype=bool), self.width / w, self.height / h
        ds = self.dataset
        try:
            m = ds.read_masks(self.bands[0], out_shape=(h, w), resampling=Resampling.rms)
        except (RasterioIOError, RasterioError) as exc:
            raise RasterError(f"cannot read the mask of {self.uri}: {_first_line(exc)}") from None
        valid = cv2.dilate((m > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        return valid, self.width / w, self.height / h

    # -- windowed reads ---------------------------------------------------------------------------------
    def read(self, x0: int, y0: int, width: int, height: int, window_id: int = -1) -> np.ndarray:
        """(height, width, 3) uint8 RGB; the part outside the raster (and masked pixels) is zero."""
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(self.width, x0 + width), min(self.height, y0 + height)
        out = np.zeros((height, width, 3), dtype=np.uint8)
        if cx1 <= cx0 or cy1 <= cy0:
            return out
        win = Window(cx0, cy0, cx1 - cx0, cy1 - cy0)
        ds = self.dataset
        inside = out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        try:
            if self.stretch is None and len(set(self.bands)) == 3:
                # uint8, three distinct bands: GDAL writes pixel-interleaved straight into the patch (a
                # strided view), half the time of a band-sequential read plus a transposing copy
                ds.read(list(self.bands), window=win, out=inside.transpose(2, 0, 1))
            else:
                unique = sorted(set(self.bands))
                data = ds.read(unique, window=win)
                pos = {b: k for k, b in enumerate(unique)}
                data = data[[pos[b] for b in self.bands]]
                if self.stretch is not None:
                    data = self.stretch.apply(data)
                inside[:] = np.moveaxis(data, 0, -1)
            if self.has_mask:
                inside[ds.read_masks(self.bands[0], window=win) == 0] = 0
        except (RasterioIOError, RasterioError) as exc:
            raise WindowReadError(window_id, x0, y0, _first_line(exc)) from None
        return out


def _first_line(exc: BaseException) -> str:
    """The first line of the most specific message in the exception chain (GDAL's own words)."""
    text = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "previous exception" in text:
        text = str(cause).strip() or text
    return text.splitlines()[0]


def gdal_env(source: "RasterSource | list[RasterSource]", patch_height: int, cache_mb: int | None = None
             ) -> rasterio.Env:
    """GDAL settings for reading `source` (or the frames of a survey): the block cache in bytes (GDAL_CACHEMAX
    reads small numbers as MB), sized to the largest raster unless `cache_mb` is given."""
    sources = source if isinstance(source, (list, tuple)) else [source]
    cache = cache_mb * 2**20 if cache_mb else max((s.block_cache_bytes(patch_height) for s in sources),
                                                   default=16 * 2**20)
    return rasterio.Env(GDAL_CACHEMAX=int(cache), GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", VSI_CACHE=True)
