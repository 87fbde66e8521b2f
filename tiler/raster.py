"""RasterSource: windowed reads of any GDAL-readable raster, as uint8 RGB patches.

A source never loads the whole raster. It reads one window at a time, clipped to the raster and
zero-padded to the patch size (no slow `boundless` reads). Its RGB bands come from the colour
interpretation, or as asked (`io/bands.py`); a palette raster is expanded through its colour table. Values
are mapped to uint8 by one stretch per band, chosen by the user and computed once from a decimated read (GDAL
serves it from overviews when present), so every patch is scaled identically. The source pickles as its URI,
parameters and stretch, so a worker process can reopen it and read its own windows exactly as the driver
planned them.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from .errors import RasterError, WindowReadError, first_line
from .io.bands import DEFAULT_STRETCH, StretchSpec, choose_bands, parse_stretch, stretch_limits

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

    def __init__(self, uri: str | os.PathLike, bands: tuple[int, ...] | None = None,
                 stretch: StretchSpec | str | None = None):
        self.uri = os.fspath(uri)
        self._requested_bands = tuple(bands) if bands else None
        self._ds = None
        self._open()
        ds = self._ds
        self.width, self.height, self.count = ds.width, ds.height, ds.count
        self.dtype = ds.dtypes[0]
        self.crs = ds.crs
        self.transform = ds.transform
        self.affine = ds.crs is not None and not ds.transform.is_identity
        self.gcps = None if self.affine else _gcps(ds)
        self.rpcs = None if self.affine or self.gcps else ds.rpcs
        if self.gcps:
            self.crs = self.gcps[1]
        elif self.rpcs:
            from rasterio.crs import CRS

            self.crs = CRS.from_epsg(4326)
        self.georeferencing = "affine" if self.affine else "gcp" if self.gcps else "rpc" if self.rpcs else None
        self.georeferenced = self.georeferencing is not None
        self.palette = None
        if self._requested_bands is None and self.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
            self.palette = _palette_lut(ds)
        self.bands, self.band_choice = choose_bands(self._requested_bands, ds.colorinterp, self.count)
        if self.palette is not None:
            self.band_choice = "palette"
        self._check_bands(self.bands, self.count)
        self.nodata = ds.nodata
        # a per-dataset or alpha mask, or a nodata value, means some pixels are not data
        flags = ds.mask_flag_enums[self.bands[0] - 1]
        self.has_mask = MaskFlags.all_valid not in flags
        block_h, block_w = ds.block_shapes[self.bands[0] - 1]
        self.block_height, self.block_width = block_h, block_w
        self.tiled = block_w < ds.width or ds.width <= 512
        # small images (PNG, JPEG frames) are striped by nature and cheap to read; warn where it costs
        if not self.tiled and ds.height > block_h and max(ds.width, ds.height) > STRIPED_WARN_SIZE:
            warnings.warn(f"{self.uri} is not tiled (blocks of {block_w}x{block_h}); reads will be slower — "
                          "convert with `gdal_translate -co TILED=YES` for speed", StripedRasterWarning,
                          stacklevel=2)
        spec = parse_stretch(stretch)
        if spec is None and self.dtype != "uint8" and self.palette is None:
            spec = parse_stretch(DEFAULT_STRETCH)
        self.stretch_spec = spec
        self.stretch = None if spec is None or spec.kind == "none" else self._compute_stretch(spec)
        if spec is not None and spec.kind == "none" and self.dtype != "uint8":
            self._warn_out_of_range()  # values are taken as 0-255; say so once if some are not

    def georeferencer(self, height: float | None = None, dem: str | None = None):
        """The pixel -> map mapping (geotransform, GCPs or RPCs at `height` / over `dem`), or None."""
        from .georef import GCPGeoreferencer, Georeferencer, RPCGeoreferencer

        if self.affine:
            return Georeferencer(self.transform, self.crs)
        if self.gcps:
            return GCPGeoreferencer(self.gcps[0], self.gcps[1])
        if self.rpcs:
            return RPCGeoreferencer(self.rpcs, height=height, dem=dem)
        return None

    def metres_per_pixel(self) -> float:
        """Ground sample distance (the geometric mean of the two pixel sides), for rasters with a projected CRS."""
        crs = self.crs
        if not self.affine or crs is None or not crs.is_projected:
            what = "no georeferencing" if not self.georeferenced else (
                f"{self.georeferencing.upper()} georeferencing" if not self.affine else f"CRS {crs.to_string()}")
            raise RasterError(f"gsd needs a raster in a projected (metric) CRS; {self.uri} has {what}")
        t = self.transform
        unit = crs.linear_units_factor[1]  # metres per CRS unit
        return float(np.sqrt(abs(t.a * t.e - t.b * t.d))) * unit

    def describe(self) -> dict:
        """What the run report records of how this raster was read."""
        st = self.stretch
        return {"bands": list(self.bands), "band_choice": self.band_choice,
                "stretch": str(self.stretch_spec) if self.stretch_spec else None,
                "stretch_low": st.low.round(6).tolist() if st else None,
                "stretch_high": st.high.round(6).tolist() if st else None,
                "georeferencing": self.georeferencing}

    # -- opening and pickling -------------------------------------------------------------------------
    def _open(self) -> None:
        if "://" not in self.uri and not self.uri.startswith("/vsi") and not os.path.exists(self.uri):
            raise RasterError(f"input raster not found: {self.uri}")
        try:
            self._ds = rasterio.open(self.uri)
        except (RasterioIOError, RasterioError) as exc:
            raise RasterError(f"cannot open raster {self.uri}: {first_line(exc)}") from None
        if self._ds.count < 1 or self._ds.width < 1 or self._ds.height < 1:
            raise RasterError(f"raster {self.uri} has no pixels")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_ds"] = None  # an open dataset cannot cross processes; the worker reopens the URI
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def reopened(self) -> "RasterSource":
        """The same source with a dataset handle of its own (opened on first read): a GDAL handle must not be
        read from two threads at once."""
        other = copy.copy(self)
        other._ds = None
        return other

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
    def _check_bands(bands: tuple[int, ...], count: int) -> None:
        bad = sorted({b for b in bands if not 1 <= b <= count})
        if bad:
            raise RasterError(f"band(s) {', '.join(map(str, bad))} not in raster with {count} band(s)")
        if len(bands) != 3:
            raise RasterError(f"need 1 or 3 bands, got {len(bands)}")

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

    def _decimated_sample(self) -> list[np.ndarray]:
        """Per RGB band, the finite, unmasked values of a decimated read of the whole raster."""
        ds = self.dataset
        h, w = self._overview_shape()
        unique = sorted(set(self.bands))
        data = ds.read(unique, out_shape=(len(unique), h, w), resampling=Resampling.nearest, masked=True)
        pos = {b: k for k, b in enumerate(unique)}
        rows = []
        for b in self.bands:
            vals = data[pos[b]].compressed().astype(np.float64)
            rows.append(vals[np.isfinite(vals)])
        return rows

    def _compute_stretch(self, spec: StretchSpec) -> Stretch:
        """One linear map per band, from the spec and (percentile, minmax) a decimated read of the raster, so
        every patch is mapped identically."""
        if spec.kind == "range":
            low, high = stretch_limits(spec, np.zeros((3, 0)))
            return Stretch(low, high)
        rows = self._decimated_sample()
        lows, highs = [], []
        for vals in rows:
            lo, hi = stretch_limits(spec, vals[None, :])
            lows.append(lo[0]), highs.append(hi[0])
        return Stretch(np.array(lows), np.array(highs))

    def _warn_out_of_range(self) -> None:
        rows = self._decimated_sample()
        lo = min((float(v.min()) for v in rows if v.size), default=0.0)
        hi = max((float(v.max()) for v in rows if v.size), default=0.0)
        if lo < 0 or hi > 255:
            warnings.warn(f"{self.uri}: stretch none, but values reach {lo:g}..{hi:g}: clipped to 0..255",
                          RuntimeWarning, stacklevel=3)

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
            raise RasterError(f"cannot read the mask of {self.uri}: {first_line(exc)}") from None
        valid = cv2.dilate((m > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        return valid, self.width / w, self.height / h

    # -- windowed reads ---------------------------------------------------------------------------------
    def read(self, x0: int, y0: int, width: int, height: int, window_id: int = -1,
             out_size: tuple[int, int] | None = None, into: np.ndarray | None = None) -> np.ndarray:
        """(height, width, 3) uint8 RGB; the part outside the raster (and masked pixels) is zero. With
        `out_size` (w, h) smaller than the window, the window is read decimated to that size (pixel averages;
        GDAL serves the read from an overview where one has that scale). `into`, an array of that shape, is
        filled and returned instead of a new one (a slot of a batch)."""
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(self.width, x0 + width), min(self.height, y0 + height)
        ow, oh = out_size or (width, height)
        if into is None:
            out = np.zeros((oh, ow, 3), dtype=np.uint8)
        else:
            if into.shape != (oh, ow, 3) or into.dtype != np.uint8:
                raise ValueError(f"into has shape {into.shape} and dtype {into.dtype}, expected ({oh}, {ow}, 3) uint8")
            out = into
            if cx0 > x0 or cy0 > y0 or cx1 < x0 + width or cy1 < y0 + height:
                out[:] = 0  # only a window reaching past the raster has pixels the read below leaves alone
        if cx1 <= cx0 or cy1 <= cy0:
            return out
        win = Window(cx0, cy0, cx1 - cx0, cy1 - cy0)
        ds = self.dataset
        fx, fy = width / ow, height / oh
        inside = out[int(round((cy0 - y0) / fy)):int(round((cy1 - y0) / fy)),
                     int(round((cx0 - x0) / fx)):int(round((cx1 - x0) / fx))]
        scaled = {} if out_size is None else {"resampling": Resampling.average}
        shape = inside.shape[:2]
        try:
            if self.palette is not None:
                inside[:] = self.palette[ds.read(1, window=win, out_shape=shape, **scaled)]
            elif self.stretch is None and self.dtype == "uint8" and len(set(self.bands)) == 3:
                # uint8, three distinct bands: GDAL writes pixel-interleaved straight into the patch (a
                # strided view), half the time of a band-sequential read plus a transposing copy
                ds.read(list(self.bands), window=win, out=inside.transpose(2, 0, 1), **scaled)
            else:
                unique = sorted(set(self.bands))
                data = ds.read(unique, window=win, out_shape=(len(unique), *shape), **scaled)
                pos = {b: k for k, b in enumerate(unique)}
                data = data[[pos[b] for b in self.bands]]
                if self.stretch is not None:
                    data = self.stretch.apply(data)
                elif data.dtype != np.uint8:  # stretch none: already 0-255, anything outside clipped
                    data = np.rint(np.clip(np.nan_to_num(data.astype(np.float32)), 0, 255)).astype(np.uint8)
                inside[:] = np.moveaxis(data, 0, -1)
            if self.has_mask:
                inside[ds.read_masks(self.bands[0], window=win, out_shape=shape) == 0] = 0
        except (RasterioIOError, RasterioError) as exc:
            raise WindowReadError(window_id, x0, y0, first_line(exc)) from None
        return out


def _gcps(ds):
    """(gcps, crs) when the raster carries ground control points with a CRS, else None."""
    gcps, crs = ds.gcps
    return (gcps, crs) if gcps and crs is not None else None


def _palette_lut(ds) -> np.ndarray:
    """(256, 3) uint8: the colour table of band 1 as an RGB lookup."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for k, rgba in ds.colormap(1).items():
        if 0 <= k < 256:
            lut[k] = rgba[:3]
    return lut


def gdal_env(source: "RasterSource | list[RasterSource]", patch_height: int, cache_mb: int | None = None
             ) -> rasterio.Env:
    """GDAL settings for reading `source` (or the frames of a survey): the block cache in bytes (GDAL_CACHEMAX
    reads small numbers as MB), sized to the largest raster unless `cache_mb` is given."""
    sources = source if isinstance(source, (list, tuple)) else [source]
    cache = cache_mb * 2**20 if cache_mb else max((s.block_cache_bytes(patch_height) for s in sources),
                                                   default=16 * 2**20)
    return rasterio.Env(GDAL_CACHEMAX=int(cache), GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", VSI_CACHE=True)
