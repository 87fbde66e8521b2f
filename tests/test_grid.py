"""Tests for tiler.grid: window planning and data-window selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiler.grid import WindowGrid, axis_origins, plan_windows, select_windows_with_data

raster_len = st.integers(1, 3000)
patch_len = st.integers(1, 700)
overlaps = st.floats(0.0, 0.95, allow_nan=False)


def expected_stride(size: int, overlap: float) -> int:
    return max(1, round(size * (1 - overlap)))


def check_axis(origins: np.ndarray, length: int, size: int, stride: int) -> None:
    """Interval-logic proof that the windows along one axis cover [0, length)."""
    assert origins.dtype == np.int64
    assert origins.ndim == 1 and origins.size >= 1
    assert origins[0] == 0
    assert np.all(np.diff(origins) > 0), "origins must be strictly ascending (no duplicates)"
    if length <= size:
        assert origins.tolist() == [0]
        return
    # Inside the raster, and the last window is flush with the far edge.
    assert origins.min() >= 0 and origins.max() + size <= length
    assert origins[-1] + size == length
    gaps = np.diff(origins)
    # Consecutive windows leave no hole: each starts before the previous ends.
    assert np.all(gaps <= size)
    # Regular stride everywhere except into the final, shifted window.
    assert np.all(gaps[:-1] == stride)
    if gaps.size:
        assert 0 < gaps[-1] <= stride
    # Only the last window reaches the edge; all others end strictly inside.
    assert np.all(origins[:-1] + size < length)


@settings(max_examples=300, deadline=None)
@given(
    w=raster_len,
    h=raster_len,
    pw=patch_len,
    ph=patch_len,
    square=st.booleans(),
    ox=overlaps,
    oy=overlaps,
    same_overlap=st.booleans(),
)
def test_plan_windows_properties(w, h, pw, ph, square, ox, oy, same_overlap):
    if square:
        ph = pw
    if same_overlap:
        oy = ox
    patch = pw if square else (pw, ph)
    overlap = ox if same_overlap else (ox, oy)
    grid = plan_windows(w, h, patch, overlap)

    assert (grid.raster_width, grid.raster_height) == (w, h)
    assert (grid.patch_width, grid.patch_height) == (pw, ph)
    assert grid.stride_x == expected_stride(pw, ox)
    assert grid.stride_y == expected_stride(ph, oy)
    check_axis(grid.xs, w, pw, grid.stride_x)
    check_axis(grid.ys, h, ph, grid.stride_y)

    n = len(grid)
    assert n == grid.n_rows * grid.n_cols == grid.xs.size * grid.ys.size
    origins = grid.origins()
    assert origins.shape == (n, 2) and origins.dtype == np.int64
    # Row-major: the first n_cols entries are row 0 from left to right, and so on.
    # (Vectorised: patch 1 on a 3000² raster is 9M windows.)
    as_grid = origins.reshape(grid.n_rows, grid.n_cols, 2)
    assert np.array_equal(as_grid[..., 0], np.broadcast_to(grid.xs, (grid.n_rows, grid.n_cols)))
    assert np.array_equal(as_grid[..., 1], np.broadcast_to(grid.ys[:, None], (grid.n_rows, grid.n_cols)))
    if n <= 5000:  # spot-check the order literally on small grids
        expected = [(x, y) for y in grid.ys.tolist() for x in grid.xs.tolist()]
        assert [tuple(o) for o in origins.tolist()] == expected
    # No duplicate windows: x is strictly ascending within each row, y across rows.
    assert np.all(np.diff(as_grid[..., 0], axis=1) > 0)
    assert np.all(np.diff(as_grid[:, 0, 1]) > 0)

    bounds = grid.bounds()
    assert bounds.shape == (n, 4) and bounds.dtype == np.int64
    assert np.array_equal(bounds[:, :2], origins)
    assert np.all(bounds[:, 2] - bounds[:, 0] == pw)
    assert np.all(bounds[:, 3] - bounds[:, 1] == ph)
    if w >= pw:
        assert bounds[:, 2].max() == w
    if h >= ph:
        assert bounds[:, 3].max() == h


@settings(max_examples=150, deadline=None)
@given(
    w=st.integers(1, 200),
    h=st.integers(1, 200),
    pw=st.integers(1, 80),
    ph=st.integers(1, 80),
    overlap=overlaps,
)
def test_every_pixel_covered_bruteforce(w, h, pw, ph, overlap):
    grid = plan_windows(w, h, (pw, ph), overlap)
    hits = np.zeros((h, w), dtype=np.int32)
    for x0, y0, x1, y1 in grid.bounds().tolist():
        hits[y0:y1, x0:x1] += 1
    assert hits.min() >= 1
    if w >= pw and h >= ph:
        # Every window lies entirely inside the raster.
        assert hits.sum() == len(grid) * pw * ph


@pytest.mark.parametrize(
    ("length", "size", "overlap", "stride", "origins"),
    [
        (1000, 640, 0.25, 480, [0, 360]),
        (100, 640, 0.25, 480, [0]),
        (640, 640, 0.25, 480, [0]),  # exactly one patch
        (1120, 640, 0.25, 480, [0, 480]),  # second window already flush: no duplicate
        (1600, 640, 0.25, 480, [0, 480, 960]),  # exact stride fit
        (1280, 640, 0.0, 640, [0, 640]),  # no overlap, exact fit
        (1300, 640, 0.0, 640, [0, 640, 660]),
        (10, 3, 0.5, 2, [0, 2, 4, 6, 7]),  # round(1.5) == 2
        (5, 1, 0.95, 1, [0, 1, 2, 3, 4]),  # stride rounds to 0 -> clamped to 1
        (1, 1, 0.0, 1, [0]),
    ],
)
def test_explicit_axis_examples(length, size, overlap, stride, origins):
    grid = plan_windows(length, length, size, overlap)
    assert grid.stride_x == grid.stride_y == stride
    assert grid.xs.tolist() == origins
    assert grid.ys.tolist() == origins
    assert axis_origins(length, size, stride).tolist() == origins


def test_rectangular_patch_and_per_axis_overlap():
    grid = plan_windows(1000, 500, (640, 256), (0.25, 0.5))
    assert (grid.stride_x, grid.stride_y) == (480, 128)
    assert grid.xs.tolist() == [0, 360]
    assert grid.ys.tolist() == [0, 128, 244]
    assert (grid.n_cols, grid.n_rows, len(grid)) == (2, 3, 6)
    assert grid.origins().tolist() == [
        [0, 0], [360, 0], [0, 128], [360, 128], [0, 244], [360, 244]
    ]
    assert grid.bounds()[-1].tolist() == [360, 244, 1000, 500]


def test_raster_smaller_than_patch_pads_beyond_edge():
    grid = plan_windows(100, 50, 640)
    assert len(grid) == 1
    assert grid.bounds().tolist() == [[0, 0, 640, 640]]


def test_grid_is_immutable():
    grid = plan_windows(1000, 1000, 640)
    with pytest.raises(Exception):
        grid.patch_width = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        grid.xs[0] = 5


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(overlap=1.0), "overlap"),
        (dict(overlap=-0.1), "overlap"),
        (dict(overlap=float("nan")), "overlap"),
        (dict(overlap=(0.2, 1.5)), "overlap"),
        (dict(patch_size=0), "patch_size"),
        (dict(patch_size=-5), "patch_size"),
        (dict(patch_size=(640, 0)), "patch_size"),
        (dict(patch_size=64.0), "patch_size"),
        (dict(patch_size=(1, 2, 3)), "patch_size"),
        (dict(raster_width=0), "raster_width"),
        (dict(raster_height=0), "raster_height"),
        (dict(raster_width=-1), "raster_width"),
    ],
)
def test_invalid_params_raise(kwargs, fragment):
    params = dict(raster_width=1000, raster_height=1000, patch_size=640, overlap=0.25)
    params.update(kwargs)
    with pytest.raises(ValueError, match=fragment) as exc:
        plan_windows(**params)
    assert "\n" not in str(exc.value)


def test_error_message_names_value():
    with pytest.raises(ValueError, match=r"^patch_size must be positive, got 0$"):
        plan_windows(100, 100, 0)


def test_axis_origins_rejects_gapping_stride():
    with pytest.raises(ValueError, match="stride"):
        axis_origins(1000, 100, 101)


# --- select_windows_with_data ---------------------------------------------


def brute_force_select(grid: WindowGrid, mask: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Per-window reference: slice the mask footprint and look for any True."""
    mh, mw = mask.shape
    out = []
    for x0, y0, x1, y1 in grid.bounds().tolist():
        c0, c1 = max(0, math.floor(x0 / sx)), min(mw, math.ceil(x1 / sx))
        r0, r1 = max(0, math.floor(y0 / sy)), min(mh, math.ceil(y1 / sy))
        out.append(bool(mask[r0:r1, c0:c1].any()))
    return np.array(out, dtype=bool)


def full_res_reference(grid: WindowGrid, mask: np.ndarray, sx: int, sy: int) -> np.ndarray:
    """Upsample the mask to full resolution and test each window there (integer scales)."""
    full = np.repeat(np.repeat(mask, sy, axis=0), sx, axis=1)
    return np.array(
        [full[y0:y1, x0:x1].any() for x0, y0, x1, y1 in grid.bounds().tolist()], dtype=bool
    )


@settings(max_examples=200, deadline=None)
@given(
    w=st.integers(1, 1500),
    h=st.integers(1, 1500),
    pw=st.integers(1, 300),
    ph=st.integers(1, 300),
    overlap=overlaps,
    sx=st.floats(0.5, 64.0, allow_nan=False),
    sy=st.floats(0.5, 64.0, allow_nan=False),
    density=st.sampled_from([0.0, 0.001, 0.02, 0.3, 1.0]),
    jitter=st.tuples(st.integers(-2, 2), st.integers(-2, 2)),
    seed=st.integers(0, 2**32 - 1),
)
def test_select_matches_bruteforce(w, h, pw, ph, overlap, sx, sy, density, jitter, seed):
    grid = plan_windows(w, h, (pw, ph), overlap)
    if len(grid) > 2000:  # keep the per-window reference quick
        grid = plan_windows(w, h, (max(pw, 100), max(ph, 100)), overlap)
    # Jitter the mask size a little so clipping at its edges is exercised too.
    mh = max(1, math.ceil(h / sy) + jitter[0])
    mw = max(1, math.ceil(w / sx) + jitter[1])
    rng = np.random.default_rng(seed)
    mask = rng.random((mh, mw)) < density
    got = select_windows_with_data(grid, mask, sx, sy)
    assert got.shape == (len(grid),) and got.dtype == bool
    assert np.array_equal(got, brute_force_select(grid, mask, sx, sy))


@settings(max_examples=100, deadline=None)
@given(
    w=st.integers(1, 400),
    h=st.integers(1, 400),
    pw=st.integers(1, 120),
    ph=st.integers(1, 120),
    overlap=overlaps,
    sx=st.integers(1, 16),
    sy=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
)
def test_select_is_conservative_at_full_resolution(w, h, pw, ph, overlap, sx, sy, seed):
    # Mask pixels cover whole sx × sy blocks, so the selection must equal the
    # answer computed on the upsampled, full-resolution mask.
    grid = plan_windows(w, h, (pw, ph), overlap)
    mask = np.random.default_rng(seed).random((math.ceil(h / sy), math.ceil(w / sx))) < 0.05
    got = select_windows_with_data(grid, mask, sx, sy)
    assert np.array_equal(got, full_res_reference(grid, mask, sx, sy))


def test_select_data_only_in_one_corner():
    grid = plan_windows(4000, 3000, 640, 0.25)
    scale = 8.0
    mask = np.zeros((3000 // 8, 4000 // 8), dtype=bool)
    mask[-1, -1] = True  # full-res pixels x in [3992, 4000), y in [2992, 3000)
    got = select_windows_with_data(grid, mask, scale, scale)
    b = grid.bounds()
    expected = (b[:, 2] > 3992) & (b[:, 3] > 2992)
    assert expected.sum() == 1 and np.array_equal(got, expected)
    # The only kept window is the bottom-right one, last in row-major order.
    assert got[-1] and not got[:-1].any()


def test_select_non_integer_scale_touching_edge_is_kept():
    # One mask pixel spans 2.5 full-res pixels; pixel 1 covers x in [2.5, 5).
    grid = plan_windows(10, 1, 3, 0.0)  # xs = [0, 3, 6, 7]
    mask = np.zeros((1, 4), dtype=bool)
    mask[0, 1] = True
    got = select_windows_with_data(grid, mask, 2.5, 1.0)
    # [0,3) touches [2.5,3); [3,6) touches [3,5); [6,9) and [7,10) do not.
    assert got.tolist() == [True, True, False, False]


def test_select_all_or_nothing_and_validation():
    grid = plan_windows(1000, 800, 256, 0.1)
    assert select_windows_with_data(grid, np.ones((10, 13), bool), 80, 80).all()
    assert not select_windows_with_data(grid, np.zeros((10, 13), bool), 80, 80).any()
    with pytest.raises(ValueError, match="valid_mask"):
        select_windows_with_data(grid, np.ones(5, bool), 1, 1)
    with pytest.raises(ValueError, match="scale_x"):
        select_windows_with_data(grid, np.ones((5, 5), bool), 0, 1)
    with pytest.raises(ValueError, match="scale_y"):
        select_windows_with_data(grid, np.ones((5, 5), bool), 1, float("inf"))


def test_clipped_bounds_stop_at_the_raster_edge():
    g = plan_windows(500, 300, (640, 200), (0.25, 0.25))
    b = g.clipped_bounds()
    assert (b[:, 2] <= 500).all() and (b[:, 3] <= 300).all() and (b[:, :2] >= 0).all()
    assert b[:, 3].max() == 300 and b[:, 2].max() == 500
    np.testing.assert_array_equal(b[:, :2], g.bounds()[:, :2])
