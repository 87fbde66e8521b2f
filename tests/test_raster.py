"""Tests for tiler.raster.RasterSource: real GeoTIFFs written with rasterio into tmp_path, read back.

Every expected pixel comes from the numpy array the test itself wrote, never from the reader.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from tiler.config import JobConfig
from tiler.errors import RasterError, WindowReadError
from tiler.pipeline import plan
from tiler.raster import OVERVIEW_SIZE, STRIPED_WARN_SIZE, RasterSource, StripedRasterWarning

TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0)


def write_tif(path, data: np.ndarray, *, mask: np.ndarray | None = None, **profile) -> str:
    """Write a (bands, h, w) array as a georeferenced GeoTIFF; `mask` (h, w) bool becomes an internal mask."""
    count, height, width = data.shape
    prof = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name,
                crs="EPSG:32633", transform=TRANSFORM)
    prof.update(profile)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return str(path)


def gradient(width: int, height: int, bands: int = 3) -> np.ndarray:
    """(bands, h, w) uint8: value = (x + 2*y + 40*band) % 251 -- every pixel known, neighbours differ."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x + 2 * y + 40 * b) % 251 for b in range(bands)]).astype(np.uint8)


def rgb(data: np.ndarray) -> np.ndarray:
    """(bands, h, w) -> (h, w, bands), the reader's layout."""
    return np.moveaxis(data, 0, -1)


def windows_touching(grid, x0: int, y0: int, x1: int, y1: int) -> set[int]:
    """Ids (row-major, as in grid.origins()) of windows intersecting the pixel box [x0, x1) x [y0, y1)."""
    ids = set()
    k = 0
    for wy in grid.ys.tolist():
        for wx in grid.xs.tolist():
            if wx < x1 and wx + grid.patch_width > x0 and wy < y1 and wy + grid.patch_height > y0:
                ids.add(k)
            k += 1
    return ids


@pytest.fixture
def grad_tif(tmp_path):
    data = gradient(300, 200)
    return write_tif(tmp_path / "grad.tif", data, tiled=True, blockxsize=64, blockysize=64), data


# ---------------------------------------------------------------------------------------------------------
# reads at the edges


def test_metadata(grad_tif):
    path, _ = grad_tif
    with RasterSource(path) as src:
        assert (src.width, src.height, src.count) == (300, 200, 3)
        assert src.dtype == "uint8" and src.stretch is None
        assert src.bands == (1, 2, 3)
        assert src.georeferenced and src.crs.to_epsg() == 32633
        assert src.transform == TRANSFORM
        assert not src.has_mask and src.nodata is None
        assert src.tiled


def test_read_inside_is_exact(grad_tif):
    path, data = grad_tif
    ref = rgb(data)
    with RasterSource(path) as src:
        out = src.read(10, 20, 64, 48)
        assert out.shape == (48, 64, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, ref[20:68, 10:74])
        # a spot value by the formula, independent of slicing: x=10, y=20, band 2 (offset 80)
        assert out[0, 0, 2] == (10 + 40 + 80) % 251
        # non-square patch: (patch_h, patch_w, 3)
        out = src.read(100, 50, 80, 40)
        assert out.shape == (40, 80, 3)
        np.testing.assert_array_equal(out, ref[50:90, 100:180])


@pytest.mark.parametrize("layout", [dict(interleave="pixel", tiled=True, blockxsize=64, blockysize=64),
                                    dict(interleave="band", tiled=True, blockxsize=64, blockysize=64),
                                    dict(interleave="pixel"), dict(interleave="band")])
@pytest.mark.parametrize("bands", [None, (3, 1, 2)])
def test_reads_anywhere_equal_padded_slices_for_every_layout(tmp_path, layout, bands):
    """The uint8 fast path (GDAL writing straight into a strided view of the patch) against plain numpy."""
    data = gradient(150, 110, bands=3)
    path = write_tif(tmp_path / "g.tif", data, **layout)
    order = [b - 1 for b in (bands or (1, 2, 3))]
    padded = np.zeros((110 + 80, 150 + 80, 3), np.uint8)
    padded[40:150, 40:190] = rgb(data[order])
    with RasterSource(path, bands=bands) as src:
        for x0 in (-40, -7, 0, 33, 100, 140):
            for y0 in (-40, -3, 0, 51, 80, 105):
                out = src.read(x0, y0, 48, 36)
                np.testing.assert_array_equal(out, padded[y0 + 40:y0 + 76, x0 + 40:x0 + 88], err_msg=f"{x0},{y0}")


def test_read_overlapping_right_and_bottom_edge_is_zero_padded(grad_tif):
    path, data = grad_tif
    ref = rgb(data)
    with RasterSource(path) as src:
        out = src.read(270, 180, 64, 64)  # 30 columns and 20 rows inside the 300 x 200 raster
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:20, :30], ref[180:200, 270:300])
    assert out[:20, :30].any()  # the comparison above is not between zeros
    assert not out[20:].any() and not out[:, 30:].any()


def test_read_overlapping_left_and_top_edge_is_zero_padded(grad_tif):
    path, data = grad_tif
    ref = rgb(data)
    with RasterSource(path) as src:
        out = src.read(-10, -5, 64, 64)
    np.testing.assert_array_equal(out[5:, 10:], ref[0:59, 0:54])
    assert not out[:5].any() and not out[:, :10].any()


def test_read_entirely_outside_is_all_zero(grad_tif):
    path, _ = grad_tif
    with RasterSource(path) as src:
        for x0, y0 in [(300, 0), (0, 200), (400, 400), (-64, 10)]:
            out = src.read(x0, y0, 64, 64)
            assert out.shape == (64, 64, 3) and out.dtype == np.uint8
            assert not out.any()


def test_raster_smaller_than_patch(tmp_path):
    data = gradient(40, 30)
    path = write_tif(tmp_path / "small.tif", data)
    with RasterSource(path) as src:
        out = src.read(0, 0, 64, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:30, :40], rgb(data))
    assert not out[30:].any() and not out[:, 40:].any()


# ---------------------------------------------------------------------------------------------------------
# band selection


def test_band_selection_order(tmp_path):
    y, x = np.mgrid[0:50, 0:60]
    data = np.stack([(x + y + 50 * b) % 256 for b in range(4)]).astype(np.uint8)  # each band distinct
    # MINISBLACK: four plain bands (e.g. R, G, B, NIR); GDAL's default for 4 x uint8 is RGBA, see below
    path = write_tif(tmp_path / "four.tif", data, photometric="MINISBLACK")
    with RasterSource(path, bands=(4, 3, 2)) as src:
        assert src.bands == (4, 3, 2)
        out = src.read(5, 7, 32, 32)
    for channel, band in enumerate((4, 3, 2)):
        np.testing.assert_array_equal(out[..., channel], data[band - 1, 7:39, 5:37])
    with RasterSource(path) as src:  # default: the first three bands
        np.testing.assert_array_equal(src.read(5, 7, 32, 32), rgb(data[:3, 7:39, 5:37]))
    with RasterSource(path, bands=(2, 2, 4)) as src:  # a band may repeat
        out = src.read(0, 0, 60, 50)
    np.testing.assert_array_equal(out[..., 0], data[1])
    np.testing.assert_array_equal(out[..., 1], data[1])
    np.testing.assert_array_equal(out[..., 2], data[3])


def test_rgba_alpha_band_masks_pixels(tmp_path):
    data = gradient(200, 100, bands=4)
    data[:3][data[:3] == 0] = 1
    data[3] = 255
    data[3, :, :100] = 0  # transparent left half, whose RGB values are not zero
    path = write_tif(tmp_path / "rgba.tif", data, photometric="RGB", ALPHA="YES")
    with RasterSource(path) as src:
        assert src.bands == (1, 2, 3) and src.has_mask
        out = src.read(50, 0, 100, 100)
        wp = plan(JobConfig(source=path, model="unused.pt", patch_size=64, overlap=0.25), src)
    assert not out[:, :50].any()
    np.testing.assert_array_equal(out[:, 50:], rgb(data[:3, :, 100:150]))
    # columns at 0, 48, 96, 136: only the one ending at 64 lies wholly in the transparent half
    assert wp.planned == 4 * 2 and wp.skipped == 2
    assert 0 not in wp.window_ids and 4 not in wp.window_ids


def test_single_band_is_replicated_to_grey(tmp_path):
    data = gradient(70, 50, bands=1)
    path = write_tif(tmp_path / "grey.tif", data)
    with RasterSource(path) as src:
        assert src.bands == (1, 1, 1)
        out = src.read(0, 0, 64, 64)
    for c in range(3):
        np.testing.assert_array_equal(out[:50, :64, c], data[0, :, :64])
    assert not out[50:].any()


def test_two_band_raster_defaults_to_band_one(tmp_path):
    data = gradient(30, 20, bands=2)
    path = write_tif(tmp_path / "two.tif", data)
    with RasterSource(path) as src:
        assert src.bands == (1, 1, 1)
        out = src.read(0, 0, 30, 20)
    np.testing.assert_array_equal(out, np.repeat(data[0][..., None], 3, axis=-1))


@pytest.mark.parametrize("bands", [(1, 2, 5), (5,), (0, 1, 2), (1, 2)])
def test_bad_bands_raise_raster_error(tmp_path, bands):
    path = write_tif(tmp_path / "four.tif", gradient(20, 20, bands=4))
    with pytest.raises(RasterError) as info:
        RasterSource(path, bands=bands)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# nodata and masks: window skipping


def test_nodata_half_windows_are_skipped(tmp_path):
    width, height, boundary = 400, 160, 200
    data = gradient(width, height)
    data[data == 0] = 1  # no accidental nodata in the data half
    data[:, :, :boundary] = 0
    path = write_tif(tmp_path / "half.tif", data, nodata=0, tiled=True, blockxsize=64, blockysize=64)
    with RasterSource(path) as src:
        assert src.has_mask and src.nodata == 0
        cfg = JobConfig(source=path, model="unused.pt", patch_size=64, overlap=0.25)
        wp = plan(cfg, src)
        # stride 48: columns at 0, 48, ..., 336 (8), rows at 0, 48, 96 (3)
        assert wp.planned == 8 * 3
        bounds = wp.grid.bounds()
        empty = {k for k, (x0, y0, x1, y1) in enumerate(bounds.tolist()) if x1 <= boundary}
        assert len(empty) == 3 * 3  # columns 0, 48 and 96 end at 64, 112 and 160
        assert wp.skipped == len(empty)
        assert set(wp.window_ids.tolist()) == set(range(len(bounds))) - empty
        np.testing.assert_array_equal(wp.origins, wp.grid.origins()[wp.window_ids])
        # the kept windows do read data, the skipped ones read nothing
        for k, (x0, y0, x1, y1) in enumerate(bounds.tolist()):
            patch = src.read(x0, y0, 64, 64, window_id=k)
            assert patch.any() == (k not in empty)


def test_nodata_pixels_read_as_zero(tmp_path):
    data = np.full((3, 40, 50), 77, dtype=np.uint8)
    data[1, 10:20, 10:20] = 0  # nodata in band 2 only: band 1 drives the mask, so it is still data
    data[:, 30:, :] = 0  # nodata everywhere
    path = write_tif(tmp_path / "nd.tif", data, nodata=0)
    with RasterSource(path) as src:
        out = src.read(0, 0, 50, 40)
    assert not out[30:].any()
    assert (out[:30, :, 0] == 77).all()
    assert (out[10:20, 10:20, 1] == 0).all()


def test_internal_dataset_mask(tmp_path):
    width, height, boundary = 400, 160, 200
    data = np.full((3, height, width), 90, dtype=np.uint8)  # real values under the mask too
    valid = np.zeros((height, width), dtype=bool)
    valid[:, boundary:] = True
    path = write_tif(tmp_path / "masked.tif", data, mask=valid, tiled=True, blockxsize=64, blockysize=64)
    assert not (tmp_path / "masked.tif.msk").exists()  # the mask is inside the file
    with RasterSource(path) as src:
        assert src.has_mask and src.nodata is None
        out = src.read(150, 0, 100, 64)
        assert not out[:, :50].any()  # x 150..199 is masked: zero although the stored value is 90
        assert (out[:, 50:] == 90).all()
        wp = plan(JobConfig(source=path, model="unused.pt", patch_size=64, overlap=0.25), src)
    bounds = wp.grid.bounds()
    empty = {k for k, b in enumerate(bounds.tolist()) if b[2] <= boundary}
    assert len(empty) == 9
    assert set(wp.window_ids.tolist()) == set(range(len(bounds))) - empty


def test_raster_without_mask_keeps_every_window(grad_tif):
    path, _ = grad_tif
    with RasterSource(path) as src:
        wp = plan(JobConfig(source=path, model="unused.pt", patch_size=64, overlap=0.25), src)
    assert wp.skipped == 0 and len(wp.window_ids) == wp.planned


# full-resolution mask, then decimated ones (f ~ 2.9 and ~ 5.9) where one valid pixel is a small average
@pytest.mark.parametrize("width, height, n", [(300, 200, 3), (3000, 300, 3), (3000, 300, 1), (6000, 40, 1)])
@pytest.mark.parametrize("kind", ["nodata", "mask"])
def test_coarse_valid_mask_keeps_every_window_holding_a_tiny_valid_block(tmp_path, width, height, n, kind):
    bx, by = width // 2 + 7, height // 2 + 3  # the only valid pixels: [bx, bx + n) x [by, by + n)
    data = np.zeros((1, height, width), dtype=np.uint8)
    data[0, by:by + n, bx:bx + n] = 200
    opts = dict(tiled=True, blockxsize=256, blockysize=16, compress="deflate")
    if kind == "nodata":
        path = write_tif(tmp_path / "speck.tif", data, nodata=0, **opts)
    else:  # an internal mask: its decimated average is small where a lone pixel is valid
        path = write_tif(tmp_path / "speck.tif", data, mask=data[0] > 0, **opts)
    with RasterSource(path) as src:
        mask, sx, sy = src.coarse_valid_mask()
        assert mask.dtype == bool and max(mask.shape) <= OVERVIEW_SIZE
        assert sx * mask.shape[1] == pytest.approx(width) and sy * mask.shape[0] == pytest.approx(height)
        wp = plan(JobConfig(source=path, model="unused.pt", patch_size=64, overlap=0.25), src)
    kept = set(wp.window_ids.tolist())
    touching = windows_touching(wp.grid, bx, by, bx + n, by + n)
    assert touching, "some window must hold the block"
    assert touching <= kept
    # and skipping did happen: only windows within two coarse pixels of the block survive
    mx, my = int(np.ceil(2 * sx)) + 1, int(np.ceil(2 * sy)) + 1
    assert kept <= windows_touching(wp.grid, bx - mx, by - my, bx + n + mx, by + n + my)
    assert wp.skipped > 0


def test_coarse_valid_mask_keeps_a_lone_valid_pixel_under_heavy_decimation(tmp_path):
    width, height = 25000, 32  # f ~ 24.4: one coarse pixel averages ~780 mask pixels
    bx, by = 12507, 16
    data = np.zeros((1, height, width), dtype=np.uint8)
    data[0, by, bx] = 200
    path = write_tif(tmp_path / "lone.tif", data, mask=data[0] > 0, tiled=True, blockxsize=256, blockysize=16,
                     compress="deflate")
    with RasterSource(path) as src:
        wp = plan(JobConfig(source=path, model="unused.pt", patch_size=64, overlap=0.25), src)
        holding = windows_touching(wp.grid, bx, by, bx + 1, by + 1)
        x0, y0 = (int(v) for v in wp.grid.origins()[min(holding)])
        assert src.read(x0, y0, 64, 64).any()  # the window does hold data
    assert holding <= set(wp.window_ids.tolist())


# ---------------------------------------------------------------------------------------------------------
# non-uint8 data: one global stretch


def test_uint16_stretch_is_global_2_98_percentile(tmp_path):
    rng = np.random.default_rng(7)
    h, w = 150, 200  # <= OVERVIEW_SIZE: the "decimated" read is the full raster
    data = np.stack([rng.integers(100, 5001, (h, w)), rng.integers(1000, 2001, (h, w)),
                     rng.integers(0, 60001, (h, w))]).astype(np.uint16)
    path = write_tif(tmp_path / "u16.tif", data, tiled=True, blockxsize=64, blockysize=64)
    with RasterSource(path) as src:
        assert src.dtype == "uint16"
        expect_lo = [np.percentile(data[b], 2) for b in range(3)]
        expect_hi = [np.percentile(data[b], 98) for b in range(3)]
        np.testing.assert_allclose(src.stretch.low, expect_lo, rtol=1e-9)
        np.testing.assert_allclose(src.stretch.high, expect_hi, rtol=1e-9)
        a = src.read(0, 0, 96, 96)
        b = src.read(40, 30, 96, 96)  # overlaps a on [40, 96) x [30, 96)
        full = src.read(0, 0, w, h)
    assert a.dtype == np.uint8 and a.shape == (96, 96, 3)
    # identical across patches: the overlap reads the same, and both agree with a whole-raster read
    np.testing.assert_array_equal(a[30:96, 40:96], b[0:66, 0:56])
    np.testing.assert_array_equal(a, full[:96, :96])
    np.testing.assert_array_equal(b, full[30:126, 40:136])
    for band in range(3):
        vals, out = data[band].ravel(), full[..., band].ravel()
        # one source value -> one output value, whatever its position
        order = np.argsort(vals, kind="stable")
        v, o = vals[order], out[order]
        same = v[1:] == v[:-1]
        assert (o[1:][same] == o[:-1][same]).all()
        assert (np.diff(o.astype(int)) >= 0).all()  # monotonic
        assert (out[vals <= expect_lo[band]] == 0).all()
        assert (out[vals > expect_hi[band]] == 255).all()
        inside = (vals > expect_lo[band] + 0.05 * (expect_hi[band] - expect_lo[band])) & \
                 (vals < expect_lo[band] + 0.95 * (expect_hi[band] - expect_lo[band]))
        assert ((out[inside] > 0) & (out[inside] < 255)).all()


def test_uint16_stretch_ignores_nodata(tmp_path):
    data = np.zeros((1, 100, 100), dtype=np.uint16)
    data[0, :, 50:] = np.arange(50 * 100, dtype=np.uint16).reshape(100, 50) + 1000  # 1000..5999
    path = write_tif(tmp_path / "u16nd.tif", data, nodata=0)
    with RasterSource(path) as src:
        valid = data[0, :, 50:]
        np.testing.assert_allclose(src.stretch.low, [np.percentile(valid, 2)] * 3, rtol=1e-9)
        np.testing.assert_allclose(src.stretch.high, [np.percentile(valid, 98)] * 3, rtol=1e-9)
        out = src.read(0, 0, 100, 100)
    assert not out[:, :50].any()
    assert out[:, 50:].max() == 255 and out[-1, -1, 0] == 255
    assert out[0, 50, 0] == 0  # 1000, below the 2nd percentile


def test_float32_raster(tmp_path):
    y, x = np.mgrid[0:120, 0:160]
    data = (-1.5 + 0.01 * x + 0.02 * y).astype(np.float32)[None]  # -1.5 .. 2.47
    path = write_tif(tmp_path / "f32.tif", data)
    with RasterSource(path) as src:
        assert src.dtype == "float32"
        lo, hi = np.percentile(data[0].astype(np.float64), [2, 98])
        np.testing.assert_allclose(src.stretch.low, [lo] * 3, rtol=1e-6)
        np.testing.assert_allclose(src.stretch.high, [hi] * 3, rtol=1e-6)
        out = src.read(-8, -8, 192, 144)
    assert out.dtype == np.uint8 and out.shape == (144, 192, 3)
    img = out[8:128, 8:168, 0]
    assert img[0, 0] == 0 and img[-1, -1] == 255  # the extreme corners are beyond the percentiles
    assert (np.diff(img.astype(int), axis=1) >= 0).all() and (np.diff(img.astype(int), axis=0) >= 0).all()
    assert len(np.unique(img)) > 200  # a real ramp, not a threshold
    assert not out[:8].any() and not out[:, :8].any()


def test_float_nan_pixels_read_as_zero_without_warnings(tmp_path):
    data = np.linspace(0, 10, 60 * 50, dtype=np.float32).reshape(1, 50, 60)
    data[0, :10, :10] = np.nan
    path = write_tif(tmp_path / "nan.tif", data)
    with RasterSource(path) as src:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = src.read(0, 0, 60, 50)
    assert not out[:10, :10].any()


# ---------------------------------------------------------------------------------------------------------
# striped rasters


def test_striped_raster_warns_and_reads_correctly(tmp_path):
    width, height = STRIPED_WARN_SIZE + 52, 64
    data = gradient(width, height, bands=1)
    path = write_tif(tmp_path / "striped.tif", data)  # no tiled=True: strips
    with pytest.warns(StripedRasterWarning, match="not tiled"):
        src = RasterSource(path)
    with src:
        assert not src.tiled
        out = src.read(width - 40, 20, 64, 64)
    np.testing.assert_array_equal(out[:44, :40, 0], data[0, 20:64, width - 40:])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert not out[44:].any() and not out[:, 40:].any()


def test_tiled_and_small_striped_rasters_do_not_warn(tmp_path):
    width = STRIPED_WARN_SIZE + 52
    tiled = write_tif(tmp_path / "tiled.tif", gradient(width, 64, bands=1), tiled=True, blockxsize=256,
                      blockysize=64)
    small = write_tif(tmp_path / "small_striped.tif", gradient(600, 400, bands=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", StripedRasterWarning)
        with RasterSource(tiled) as src:
            assert src.tiled
        with RasterSource(small):
            pass


# ---------------------------------------------------------------------------------------------------------
# errors


def test_missing_file_raises_with_path(tmp_path):
    missing = tmp_path / "nope" / "missing.tif"
    with pytest.raises(RasterError) as info:
        RasterSource(missing)
    msg = str(info.value)
    assert str(missing) in msg and "\n" not in msg


@pytest.mark.parametrize("content", [b"this is not a tiff\n" * 50, b""])
def test_garbage_file_raises_one_line(tmp_path, content):
    bad = tmp_path / "garbage.tif"
    bad.write_bytes(content)
    with pytest.raises(RasterError) as info:
        RasterSource(bad)
    msg = str(info.value)
    assert str(bad) in msg and "\n" not in msg
    assert not isinstance(info.value, WindowReadError)


def test_corrupt_block_raises_window_read_error(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (1, 256, 256), dtype=np.uint8)
    path = write_tif(tmp_path / "corrupt.tif", data, tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    with rasterio.open(path) as ds:
        off = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))  # block column 1, row 1
        size = int(ds.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    raw = bytearray(open(path, "rb").read())
    raw[off + 8:off + size - 8] = b"\xff" * (size - 16)
    open(path, "wb").write(bytes(raw))
    with RasterSource(path) as src:
        np.testing.assert_array_equal(src.read(0, 0, 64, 64)[..., 0], data[0, :64, :64])  # other blocks fine
        with pytest.raises(WindowReadError) as info:
            src.read(70, 80, 32, 32, window_id=12)
    err = info.value
    assert (err.window_id, err.x0, err.y0) == (12, 70, 80)
    assert isinstance(err, RasterError) and "\n" not in str(err) and "window 12" in str(err)


# ---------------------------------------------------------------------------------------------------------
# pickling


def test_pickle_roundtrip_reads_the_same(grad_tif):
    path, data = grad_tif
    src = RasterSource(path)
    before = src.read(250, 150, 64, 64)
    blob = pickle.dumps(src)
    src.close()  # the copy must not depend on the original's open dataset
    clone = pickle.loads(blob)
    with clone:
        assert (clone.width, clone.height, clone.bands, clone.uri) == (300, 200, (1, 2, 3), path)
        after = clone.read(250, 150, 64, 64)
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(after[:50, :50], rgb(data)[150:200, 250:300])


def test_pickle_keeps_bands_and_stretch(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4000, (4, 80, 90)).astype(np.uint16)
    path = write_tif(tmp_path / "u16x4.tif", data)
    with RasterSource(path, bands=(3, 1, 4)) as src:
        before = src.read(10, 10, 64, 64)
        clone = pickle.loads(pickle.dumps(src))
    with clone:
        assert clone.bands == (3, 1, 4)
        np.testing.assert_array_equal(clone.stretch.low, src.stretch.low)
        np.testing.assert_array_equal(clone.read(10, 10, 64, 64), before)


# ---------------------------------------------------------------------------------------------------------
# strip reads (neighbouring windows of a row read once and cut in memory)


@pytest.mark.parametrize("bands,mask", [(None, False), ((3, 1, 2), False), (None, True), ((1,), False)])
def test_strip_reads_equal_window_reads(tmp_path, bands, mask):
    """A batch of a real grid (edge-shifted, rows split across batches, a raster smaller than a patch in one
    direction) read as strips gives exactly the per-window patches."""
    from tiler.pipeline import _strips, read_patches

    data = gradient(530, 140, bands=3)
    valid = None
    if mask:
        valid = np.ones((140, 530), bool)
        valid[20:60, 100:400] = False
    path = write_tif(tmp_path / "g.tif", data, mask=valid, tiled=True, blockxsize=64, blockysize=64)
    with RasterSource(path, bands=bands) as src:
        cfg = JobConfig(source=path, model="m.pt", patch_size=96, overlap=0.25)
        grid = plan(cfg, src).grid
        origins = np.asarray(grid.origins())
        ids = np.arange(len(origins))
        strips = 0
        used = np.full((5, 160, 96, 3), 7, dtype=np.uint8)  # a batch buffer holding the last batch's pixels
        for start in range(0, len(origins), 5):  # batches of 5: some strips end inside a row
            o, w = origins[start:start + 5], ids[start:start + 5]
            got = read_patches(src, (96, 160), o, w)  # taller than the raster: padded below
            assert got.shape == (len(o), 160, 96, 3) and got.dtype == np.uint8
            into = read_patches(src, (96, 160), o, w, out=used[:len(o)])
            assert into.base is used or into is used
            strips += len(_strips(o, 96))
            for (x, y), k, patch, again in zip(o, w, got, into):
                np.testing.assert_array_equal(patch, src.read(int(x), int(y), 96, 160), err_msg=f"window {k}")
                np.testing.assert_array_equal(again, patch, err_msg=f"window {k} read into a used buffer")
        assert strips <= len(origins) // 2  # most windows were cut from strips
        with pytest.raises(ValueError, match="out has shape"):
            read_patches(src, (96, 160), origins[:2], ids[:2], out=used)


def test_strips_join_only_neighbours_of_one_row():
    from tiler.pipeline import _strips

    xy = np.array([[0, 0], [72, 0], [144, 0], [400, 0], [0, 72], [72, 72], [72, 144], [50, 144]])
    assert _strips(xy, 96) == [(0, 3), (3, 4), (4, 6), (6, 7), (7, 8)]
    assert _strips(np.zeros((0, 2), np.int64), 96) == []


def test_strip_read_error_names_the_failing_window(tmp_path):
    from tiler.pipeline import read_patches

    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (1, 64, 512), dtype=np.uint8)
    path = write_tif(tmp_path / "corrupt.tif", data, tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    with rasterio.open(path) as ds:
        off = int(ds.get_tag_item("BLOCK_OFFSET_5_0", "TIFF", bidx=1))  # block column 5 (x 320-383)
        size = int(ds.get_tag_item("BLOCK_SIZE_5_0", "TIFF", bidx=1))
    raw = bytearray(open(path, "rb").read())
    raw[off + 8:off + size - 8] = b"\xff" * (size - 16)
    open(path, "wb").write(bytes(raw))
    with RasterSource(path) as src:
        origins = np.array([[0, 0], [48, 0], [96, 0], [144, 0], [192, 0], [240, 0], [288, 0]])
        with pytest.raises(WindowReadError) as info:
            read_patches(src, (64, 64), origins, np.arange(10, 17))
    assert info.value.window_id == 16 and info.value.x0 == 288  # the only window touching block 5
