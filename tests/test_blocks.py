"""Tests for tiler.io.blocks: windows cut from cells decoded once and shared by several reader threads equal
windows read straight from the raster, bit for bit, for every block layout; each cell is decoded once; a corrupt
block still gives the error naming a window; a stopped job wakes readers waiting for cells."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tiler.config import JobConfig
from tiler.errors import WindowReadError
from tiler.io.blocks import FrameBlocks
from tiler.pipeline import BatchSpec, plan
from tiler.raster import RasterSource
from tiler.runners.local import BatchReader

from .helpers import corrupt_block
from .test_raster import gradient, write_tif


def read_job(src: RasterSource, origins: np.ndarray, patch: tuple[int, int], batch: int, threads: int):
    """Read `origins` in batches of `batch` with the in-process runner's `BatchReader` (`threads` readers, each
    with its own handle, two batches in flight). Returns the patches, the frame's cells (`FrameBlocks`), and the
    most cells held at once."""
    specs = [BatchSpec(0, k, np.arange(k, k + len(o)), o, patch)
             for k, o in ((k, origins[k:k + batch]) for k in range(0, len(origins), batch))]
    reader = BatchReader({0: src}, threads, lambda n, h, w: np.full((n, h, w, 3), 7, np.uint8), batch)
    out, held, blocks = [], 0, None
    for got in reader.batches(specs):
        blocks = reader.blocks.frames.get(0, blocks)  # (dropped with the frame's last batch)
        held = max(held, len(blocks.cells) if blocks is not None else 0)
        if got.error is not None:
            raise got.error
        out.append(got.buffer[:len(got.spec.origins)].copy())
        reader.give_back(got.buffer)
    return np.concatenate(out), blocks, held


LAYOUTS = {
    "tiles 64": dict(tiled=True, blockxsize=64, blockysize=64, compress="deflate"),
    "tiles 256, band-interleaved": dict(tiled=True, blockxsize=256, blockysize=256, interleave="band"),
    "strips of 3 rows": dict(blockysize=3),
    "one strip": dict(blockysize=1100),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bands,mask", [(None, False), ((3, 1, 2), False), (None, True), ((1,), False)])
def test_windows_cut_from_shared_cells_equal_window_reads(tmp_path, layout, bands, mask):
    data = gradient(1300, 1100, bands=3)
    valid = None
    if mask:
        valid = np.ones((1100, 1300), bool)
        valid[300:700, 100:900] = False
    path = write_tif(tmp_path / "g.tif", data, mask=valid, **LAYOUTS[layout])
    with RasterSource(path, bands=bands) as src:
        cfg = JobConfig(source=path, model="m.pt", patch_size=300, overlap=0.25)
        origins = np.asarray(plan(cfg, src).grid.origins())
        origins = np.concatenate([origins, [[1150, 1000], [-40, -30]]])  # windows reaching past the raster
        got, blocks, held = read_job(src, origins, (300, 300), batch=5, threads=3)
        for k, (x, y) in enumerate(origins.tolist()):
            np.testing.assert_array_equal(got[k], src.read(x, y, 300, 300), err_msg=f"window {k} at {x}, {y}")
    assert not blocks.cells  # every cell dropped after its last batch


def test_each_pixel_is_decoded_once_and_only_about_two_rows_of_windows_held(tmp_path):
    path = write_tif(tmp_path / "g.tif", gradient(1100, 4000), tiled=True, blockxsize=256, blockysize=256)
    decoded = []

    class Counting(RasterSource):
        def read(self, x0, y0, width, height, window_id=-1, out_size=None, into=None):
            if window_id == -1:  # a run of cells (window reads name their window)
                decoded.append((x0, y0, width, height))
            return super().read(x0, y0, width, height, window_id, out_size, into)

    with Counting(path) as src:
        origins = np.asarray(plan(JobConfig(source=path, model="m.pt", patch_size=400, overlap=0.25),
                                  src).grid.origins())
        got, blocks, held = read_job(src, origins, (400, 400), batch=3, threads=4)
        runs = list(decoded)
        for k, (x, y) in enumerate(origins.tolist()):
            np.testing.assert_array_equal(got[k], src.read(x, y, 400, 400), err_msg=f"window {k}")
    area = np.zeros((4000, 1100), np.int64)
    for x, y, w, h in runs:
        area[y:y + h, x:x + w] += 1
    assert area.max() == 1 and area.min() == 1  # every pixel decoded once, none twice
    assert blocks.cols == 3 and held <= 3 * blocks.cols  # of 8 rows of cells: those under two rows of windows


def test_a_corrupt_block_names_the_first_window_over_it(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (1, 640, 1280), dtype=np.uint8)
    path = write_tif(tmp_path / "corrupt.tif", data, tiled=True, blockxsize=128, blockysize=128, compress="deflate")
    corrupt_block(path, 6, 0)  # x 768-895
    origins = np.array([[x, 0] for x in range(0, 1280 - 200 + 1, 150)])  # 0, 150, ... 1050
    with RasterSource(path) as src:
        with pytest.raises(WindowReadError) as info:
            read_job(src, origins, (200, 200), batch=len(origins), threads=1)
        # the cell of 512 px holding the bad block spans x 512-1023: windows before it come out whole
        first_bad = next(k for k, x in enumerate(origins[:, 0]) if x + 200 > 768)
    assert info.value.window_id == first_bad and info.value.x0 == origins[first_bad, 0]


def test_abandoning_wakes_a_reader_waiting_for_a_cell(tmp_path):
    path = write_tif(tmp_path / "g.tif", gradient(600, 600), tiled=True, blockxsize=64, blockysize=64)
    with RasterSource(path) as src:
        origins = np.array([[0, 0], [400, 0]])
        blocks = FrameBlocks(src.width, src.height, (64, 64), (200, 200), [origins])
        cells = blocks.claim(0, [(0, 1), (1, 2)], origins)  # reader 1's cells are never decoded
        out = np.zeros((2, 200, 200, 3), np.uint8)
        waiting = threading.Thread(target=blocks.cut, args=(src, origins[1:], np.array([1]), cells.cells, out[1:]))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()
        blocks.abandon()
        waiting.join(10)
        assert not waiting.is_alive()  # it read its window from the raster instead
        np.testing.assert_array_equal(out[1], src.read(400, 0, 200, 200))
