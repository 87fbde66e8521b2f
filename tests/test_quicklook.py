"""Tests for quicklooks: `tiler quicklook` and `JobResult.quicklook` on a generated scene, PNGs read back.

Outlines are checked against the scene's exact ground truth (written through tiler's own GeoJSON writer, in
lon/lat and in pixels), the background against the raster read independently (rasterio at full resolution,
numpy 2x2 means when decimated).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.windows import Window

from tiler import TileJob
from tiler.cli import main
from tiler.detections import Detections
from tiler.georef import Georeferencer
from tiler.synth import CLASS_NAMES, SceneSpec, read_truth, write_scene
from tiler.visualize import class_color
from tiler.writers import write_detections

REPO = Path(__file__).resolve().parents[1]
SIZE = 1024
COLORS = {c: class_color(c) for c in range(len(CLASS_NAMES))}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("quicklook")
    spec = SceneSpec(SIZE, SIZE, seed=24)  # 86 objects: 37 vehicles, 10 buildings, 39 boats
    tif, truth = write_scene(spec, d / "scene.tif")
    classes, polys = read_truth(truth)
    dets = Detections.from_geometries(polys, classes, np.ones(len(classes)), 0)
    names = dict(enumerate(CLASS_NAMES))
    lonlat = write_detections(d / "truth.geojson", dets, names, Georeferencer(spec.transform, spec.crs))
    pixel = write_detections(d / "truth-pixel.geojsonl", dets, names, None)
    with rasterio.open(tif) as ds:
        rgb = np.moveaxis(ds.read(), 0, -1)
    return SimpleNamespace(dir=d, tif=tif, truth=truth, lonlat=lonlat, pixel=pixel, classes=classes, polys=polys,
                           rgb=rgb)


def quicklook(*args) -> np.ndarray:
    """Run `tiler quicklook` in-process; return the PNG it wrote (BGR)."""
    args = [str(a) for a in args]
    assert main(["quicklook", *args]) == 0
    out = args[args.index("--out") + 1]
    img = cv2.imread(out, cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    return img


def is_class_color(img: np.ndarray) -> np.ndarray:
    """(h, w) bool: pixels exactly one of the class colours."""
    return np.any([(img == c).all(axis=-1) for c in COLORS.values()], axis=0)


def near_objects(polys: np.ndarray, origin: tuple[int, int], scale: float, shape: tuple[int, int],
                 grow: int = 2) -> np.ndarray:
    """(h, w) bool: quicklook pixels within `grow` px of any object (drawn independently with fillPoly)."""
    mask = np.zeros(shape, np.uint8)
    rings = [np.asarray(r.coords) for p in polys for r in (p.exterior, *p.interiors)]
    pts = [np.rint(((r - origin) * scale - 0.5) * 16).astype(np.int32) for r in rings]
    cv2.fillPoly(mask, pts, 1, cv2.LINE_8, 4)
    cv2.polylines(mask, pts, True, 1, 1, cv2.LINE_8, 4)
    k = 2 * grow + 1
    return cv2.dilate(mask, np.ones((k, k), np.uint8)) > 0


def objects_found(img: np.ndarray, polys: np.ndarray, classes: np.ndarray, origin, scale: float) -> np.ndarray:
    """Per object: does its class colour appear on or within 1 px of its scaled bounding box?"""
    h, w = img.shape[:2]
    b = (shapely.bounds(polys) - np.tile(origin, 2)) * scale
    found = np.zeros(len(polys), bool)
    for k, (x0, y0, x1, y1) in enumerate(b):
        xs, ys = max(0, int(np.floor(x0)) - 1), max(0, int(np.floor(y0)) - 1)
        patch = img[ys:min(h, int(np.ceil(y1)) + 2), xs:min(w, int(np.ceil(x1)) + 2)]
        found[k] = (patch == COLORS[int(classes[k])]).all(axis=-1).any()
    return found


def decimate2(rgb: np.ndarray) -> np.ndarray:
    """(h/2, w/2, 3) BGR float: the mean of each 2x2 block, as GDAL's average resampling makes it."""
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    return rgb.reshape(h, 2, w, 2, 3).astype(np.float64).mean(axis=(1, 3))[..., ::-1]


# ---------------------------------------------------------------------------------------------------------
# outlines where the objects are, nothing elsewhere


def test_decimated_quicklook_outlines_every_object_and_nothing_else(scene):
    img = quicklook(scene.lonlat, "--raster", scene.tif, "--out", scene.dir / "ql.png", "--max-size", 512)
    assert img.shape == (512, 512, 3)
    found = objects_found(img, scene.polys, scene.classes, (0, 0), 0.5)
    assert found.mean() >= 0.98, f"{(~found).sum()} of {len(found)} objects without their class colour"
    near = near_objects(scene.polys, (0, 0), 0.5, img.shape[:2])
    far = ~near
    assert far.mean() > 0.5
    assert not is_class_color(img)[far].any()
    diff = np.abs(img.astype(np.float64) - decimate2(scene.rgb))
    assert diff[far].max() <= 1.0  # the raster itself, averaged 2x2, untouched by any outline
    assert (diff[near] > 8).any(axis=-1).sum() > 5 * len(scene.polys)  # outlines were drawn


def test_full_resolution_window_only_that_region(scene):
    x0, y0, x1, y1 = 200, 300, 712, 684
    img = quicklook(scene.lonlat, "--raster", scene.tif, "--out", scene.dir / "win.png", "--window",
                    f"{x0},{y0},{x1},{y1}")
    assert img.shape == (y1 - y0, x1 - x0, 3)  # no decimation: the window is under --max-size
    b = shapely.bounds(scene.polys)
    inside = (b[:, 0] >= x0) & (b[:, 1] >= y0) & (b[:, 2] <= x1) & (b[:, 3] <= y1)
    assert inside.sum() >= 10
    found = objects_found(img, scene.polys[inside], scene.classes[inside], (x0, y0), 1.0)
    assert found.all()
    far = ~near_objects(scene.polys, (x0, y0), 1.0, img.shape[:2])
    off_object = is_class_color(img) & ~near_objects(scene.polys, (x0, y0), 1.0, img.shape[:2], grow=1)
    assert not off_object.any()  # every outline pixel within a pixel of its object
    expected = scene.rgb[y0:y1, x0:x1, ::-1]
    np.testing.assert_array_equal(img[far], expected[far])  # exactly the raster's pixels there
    full = quicklook(scene.lonlat, "--raster", scene.tif, "--out", scene.dir / "full.png")
    assert full.shape == (SIZE, SIZE, 3)
    same = (full[y0:y1, x0:x1] == img).all(axis=-1)
    assert same.mean() > 0.999  # the window is a crop of the whole (outlines clipped at its edges may step)


def test_max_size_bounds_the_longer_side_and_never_upscales(scene):
    out = scene.dir / "size.png"
    assert quicklook(scene.lonlat, "--raster", scene.tif, "--out", out, "--max-size", 300).shape == (300, 300, 3)
    wide = quicklook(scene.lonlat, "--raster", scene.tif, "--out", out, "--max-size", 300, "--window",
                     "0,0,1024,512")
    assert wide.shape == (150, 300, 3)
    small = quicklook(scene.lonlat, "--raster", scene.tif, "--out", out, "--window", "10,20,110,70")
    assert small.shape == (50, 100, 3)
    tall = quicklook(scene.lonlat, "--raster", scene.tif, "--out", out, "--max-size", 64, "--window",
                     "0,0,100,1000")
    assert tall.shape == (64, 6, 3)


def test_pixel_sequence_truth_with_crs_and_lonlat_agree(scene, tmp_path):
    """tiler's pixel-space GeoJSON text sequence (on the same pixels, unreferenced), the scene's ground truth
    (map coordinates, `crs` member) and the lon/lat output draw the same outlines."""
    png = tmp_path / "scene.png"
    cv2.imwrite(str(png), scene.rgb[..., ::-1])
    lonlat = quicklook(scene.lonlat, "--raster", scene.tif, "--out", tmp_path / "a.png", "--max-size", 512)
    pixel = quicklook(scene.pixel, "--raster", png, "--out", tmp_path / "b.png", "--max-size", 512)
    truth = quicklook(scene.truth, "--raster", scene.tif, "--out", tmp_path / "c.png", "--max-size", 512)
    assert (lonlat == pixel).all(axis=-1).mean() > 0.999
    assert (lonlat == truth).all(axis=-1).mean() > 0.999
    assert is_class_color(pixel).sum() > 3 * len(scene.polys)


@pytest.mark.parametrize("suffix, crs", [(".gpkg", "auto"), (".fgb", "EPSG:3857"), (".parquet", "wgs84"),
                                         (".parquet", "pixel")])
def test_gis_formats_draw_the_same_outlines_as_the_geojson(scene, tmp_path, suffix, crs):
    """GeoPackage, FlatGeobuf and GeoParquet outputs, in the raster's CRS, another one, lon/lat or pixels
    (no CRS, on an unreferenced copy of the raster), draw what the lon/lat GeoJSON draws."""
    spec = SceneSpec(SIZE, SIZE, seed=24)
    dets = Detections.from_geometries(scene.polys, scene.classes, np.ones(len(scene.classes)), 0)
    names = dict(enumerate(CLASS_NAMES))
    raster = scene.tif
    if crs == "pixel":
        path = write_detections(tmp_path / f"t{suffix}", dets, names, None)
        raster = tmp_path / "scene.png"
        cv2.imwrite(str(raster), scene.rgb[..., ::-1])
    else:
        path = write_detections(tmp_path / f"t{suffix}", dets, names, Georeferencer(spec.transform, spec.crs), crs=crs)
    ref = quicklook(scene.lonlat, "--raster", scene.tif, "--out", tmp_path / "a.png", "--max-size", 512)
    got = quicklook(path, "--raster", raster, "--out", tmp_path / "b.png", "--max-size", 512)
    assert (ref == got).all(axis=-1).mean() > 0.999
    assert is_class_color(got).sum() > 3 * len(scene.polys)


def test_installed_entry_point(scene, tmp_path):
    exe = Path(sys.executable).with_name("tiler")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tiler.cli"]
    out = tmp_path / "ep.png"
    proc = subprocess.run([*cmd, "quicklook", str(scene.lonlat), "--raster", str(scene.tif), "--out", str(out),
                           "--max-size", "256"], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    assert cv2.imread(str(out)).shape == (256, 256, 3)


# ---------------------------------------------------------------------------------------------------------
# JobResult.quicklook from a real job


def test_job_result_quicklook_matches_the_cli_on_its_geojson(scene, tmp_path):
    result = TileJob(scene.tif, REPO / "models" / "tiler-detect.pt", patch_size=320, overlap=0.25,
                     progress=False, runner="local").run()
    assert len(result) > 0.8 * len(scene.polys)
    path = result.quicklook(tmp_path / "api.png", max_size=512)
    assert path == tmp_path / "api.png"
    api = cv2.imread(str(path))
    assert api.shape == (512, 512, 3)
    geoms = result.detections.geometries()
    found = objects_found(api, geoms, result.detections.class_id, (0, 0), 0.5)
    assert found.mean() >= 0.98
    far = ~near_objects(geoms, (0, 0), 0.5, api.shape[:2])
    assert not is_class_color(api)[far].any()
    result.to_file(tmp_path / "det.geojson")
    cli = quicklook(tmp_path / "det.geojson", "--raster", scene.tif, "--out", tmp_path / "cli.png", "--max-size",
                    512)
    assert (api == cli).all(axis=-1).mean() > 0.999
    win = cv2.imread(str(result.quicklook(tmp_path / "w.png", window=(100, 200, 400, 300))))
    assert win.shape == (100, 300, 3)
    np.testing.assert_array_equal(win, cv2.imread(str(result.quicklook(tmp_path / "w2.png",
                                                                       raster=scene.tif,
                                                                       window="100,200,400,300"))))


# ---------------------------------------------------------------------------------------------------------
# other rasters


def empty_features(tmp_path: Path) -> Path:
    feats = tmp_path / "empty.geojson"
    feats.write_text(json.dumps({"type": "FeatureCollection", "coordinate_space": "pixel", "features": []}))
    return feats


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("count", [3, 1])
def test_chunked_decimated_read_equals_one_gdal_read(tmp_path, count):
    """Small blocks, an odd window and a non-integer factor: the quicklook is read in many chunks (float
    windows), and must equal one whole-window GDAL read (up to a rounding of .5 at a few pixels, where the
    chunk's fractional offset changes the last bit of the weights); one band is shown as grey."""
    data = np.random.default_rng(1).integers(0, 256, (count, 1500, 3000), dtype=np.uint8)
    tif = tmp_path / "blocks.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=3000, height=1500, count=count, dtype="uint8", tiled=True,
                       blockxsize=64, blockysize=64) as dst:
        dst.write(data)
    x0, y0, x1, y1 = 37, 53, 2937, 1411
    img = quicklook(empty_features(tmp_path), "--raster", tif, "--out", tmp_path / "q.png", "--max-size", 1100,
                    "--window", f"{x0},{y0},{x1},{y1}")
    assert img.shape == (515, 1100, 3)
    with rasterio.open(tif) as ds:
        bands = [3, 2, 1] if count == 3 else [1, 1, 1]
        expected = ds.read(bands, window=Window(x0, y0, x1 - x0, y1 - y0), out_shape=(3, 515, 1100),
                           resampling=Resampling.average)
    diff = np.abs(np.moveaxis(img, -1, 0).astype(int) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.9999


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_uint16_single_band_is_stretched_grey(tmp_path):
    y, x = np.mgrid[0:200, 0:300]
    data = (1000 + 10 * x + 5 * y).astype(np.uint16)[None]
    tif = tmp_path / "u16.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=300, height=200, count=1, dtype="uint16") as dst:
        dst.write(data)
    img = quicklook(empty_features(tmp_path), "--raster", tif, "--out", tmp_path / "g.png")
    assert img.shape == (200, 300, 3)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert img.min() == 0 and img.max() == 255  # the 2-98 % stretch saturates both ends
    assert img[100, 20, 0] < img[100, 150, 0] < img[100, 280, 0]


def test_overviews_give_the_same_picture(scene, tmp_path):
    tif = tmp_path / "ovr.tif"
    shutil.copy(scene.tif, tif)
    with rasterio.open(tif, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.average)
    with rasterio.open(tif) as ds:
        assert ds.overviews(1) == [2, 4]
    a = quicklook(scene.lonlat, "--raster", scene.tif, "--out", tmp_path / "a.png", "--max-size", 256)
    b = quicklook(scene.lonlat, "--raster", tif, "--out", tmp_path / "b.png", "--max-size", 256)
    assert a.shape == b.shape == (256, 256, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0
    assert (is_class_color(a) == is_class_color(b)).mean() > 0.999


# ---------------------------------------------------------------------------------------------------------
# errors: one line, non-zero exit, no PNG


@pytest.mark.parametrize("case, message", [
    ("missing_features", "features file not found"),
    ("missing_raster", "input raster not found"),
    ("not_a_raster", "cannot open raster"),
    ("window_outside", "not inside the 1024x1024 raster"),
    ("window_bad", "window must be x0,y0,x1,y1"),
    ("window_empty", "is empty"),
    ("not_png", "must be a .png"),
    ("no_folder", "output folder does not exist"),
    ("max_size", "max_size must be a positive integer"),
    ("not_geojson", "not valid GeoJSON"),
    ("lonlat_on_unreferenced", "the raster has no georeferencing"),
])
def test_errors_one_line_no_png(scene, tmp_path, capsys, case, message):
    feats, raster, out = scene.lonlat, scene.tif, tmp_path / "ql.png"
    extra: list[str] = []
    if case == "missing_features":
        feats = tmp_path / "nope.geojson"
    elif case == "missing_raster":
        raster = tmp_path / "nope.tif"
    elif case == "not_a_raster":
        raster = tmp_path / "text.tif"
        raster.write_text("not a raster\n")
    elif case == "window_outside":
        extra = ["--window", "900,900,1100,1000"]
    elif case == "window_bad":
        extra = ["--window", "1,2,3"]
    elif case == "window_empty":
        extra = ["--window", "100,100,100,200"]
    elif case == "not_png":
        out = tmp_path / "ql.jpg"
    elif case == "no_folder":
        out = tmp_path / "missing" / "ql.png"
    elif case == "max_size":
        extra = ["--max-size", "0"]
    elif case == "not_geojson":
        feats = tmp_path / "bad.geojson"
        feats.write_text("{not json")
    elif case == "lonlat_on_unreferenced":
        raster = tmp_path / "frame.jpg"
        cv2.imwrite(str(raster), scene.rgb[:256, :256])
    capsys.readouterr()
    rc = main(["quicklook", str(feats), "--raster", str(raster), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiler: error:") and message in lines[0], err
    assert not out.exists()
    assert not [p for p in tmp_path.rglob("*.png")] and not [p for p in tmp_path.rglob("*.part*")]


def test_failed_write_leaves_no_png(scene, tmp_path, capsys):
    out = tmp_path / "ql.png"
    out.mkdir()  # a folder where the PNG should go
    assert main(["quicklook", str(scene.lonlat), "--raster", str(scene.tif), "--out", str(out)]) == 2
    assert "not a file" in capsys.readouterr().err
    assert not [p for p in tmp_path.rglob("*.part*")]
