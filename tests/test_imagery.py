"""Real imagery: band order from colour interpretation, a chosen 8-bit mapping, the model's ground resolution,
GCP and RPC georeferencing, STAC inputs. Rasters written by the tests from generated scenes (truth known),
the project's own OBB model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp, Resampling
from rasterio.rpc import RPC
from rasterio.transform import Affine

from tiler import TileJob
from tiler.errors import ConfigError
from tiler.evaluate import score_scene
from tiler.io.bands import choose_bands, parse_stretch
from tiler.raster import RasterSource
from tiler.synth import SceneSpec, write_scene

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiler-obb.pt"
TILER = str(Path(sys.executable).parent / "tiler")
PARAMS = dict(patch_size=320, overlap=0.25, progress=False, runner="local")


def _tiler(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["YOLO_OFFLINE"] = "1"
    return subprocess.run([TILER, "predict", *map(str, args)], env=env, capture_output=True, text=True, timeout=600)


def _coords(path: Path) -> np.ndarray:
    """Every vertex of a GeoJSON's features, in file order."""
    feats = json.loads(Path(path).read_text())["features"]
    return np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in feats])


def _without_source(path: Path) -> list[dict]:
    """The features, less the provenance `source` (the raster's path, which differs by design)."""
    feats = json.loads(Path(path).read_text())["features"]
    for f in feats:
        f["properties"].pop("source")
    return feats


def _all(scores) -> tuple[float, float]:
    s = scores["all"]
    return s.precision, s.recall


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagery")
    tif, truth = write_scene(SceneSpec(2048, 2048, seed=21), root / "scene.tif")
    out = root / "scene.geojson"
    TileJob(tif, MODEL, out=out, **PARAMS).run()
    return dict(root=root, tif=tif, truth=truth, out=out, scores=score_scene(out, truth, tif, "obb"))


def _copy(src: Path, dst: Path, data: np.ndarray, colorinterp=None, **profile) -> Path:
    with rasterio.open(src) as ds:
        p = dict(ds.profile)
    p.update(count=data.shape[0], dtype=data.dtype.name, photometric=None, **profile)
    p.pop("photometric")
    with rasterio.open(dst, "w", **p) as out:
        out.write(data)
        if colorinterp:
            out.colorinterp = colorinterp
    return dst


def test_stretch_specs_parse_or_say_what_is_wrong():
    assert str(parse_stretch("percentile:1,99")) == "percentile:1,99"
    assert parse_stretch("range:0,1000").values == (0.0, 1000.0)
    assert parse_stretch("range:0,10,0,20,0,30").values == (0, 10, 0, 20, 0, 30)
    assert parse_stretch(None) is None and parse_stretch("none").kind == "none"
    for bad in ("percentile:90,10", "range:5", "range:10,0", "gamma", "minmax:3", "range:a,b"):
        with pytest.raises(ConfigError, match="stretch"):
            parse_stretch(bad)


def test_bands_follow_colour_interpretation():
    bgrn = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    assert choose_bands(None, bgrn, 4) == ((3, 2, 1), "colorinterp")
    assert choose_bands((1, 2, 3), bgrn, 4) == ((1, 2, 3), "requested")  # asked for: as asked
    grey = [ColorInterp.gray, ColorInterp.undefined, ColorInterp.undefined]
    assert choose_bands(None, grey, 3) == ((1, 2, 3), "default")
    assert choose_bands(None, [ColorInterp.gray], 1) == ((1, 1, 1), "grey")


def test_bgrn_uint16_with_the_stretch_that_undoes_it_scores_as_the_uint8_original(scene, tmp_path):
    with rasterio.open(scene["tif"]) as ds:
        rgb = ds.read()
    # B, G, R, NIR as a sensor might store them: 4 * value + 100 in uint16
    bgrn = np.stack([rgb[2], rgb[1], rgb[0], rgb[0] // 2 + rgb[1] // 2]).astype(np.uint16) * 4 + 100
    tif = _copy(scene["tif"], tmp_path / "bgrn.tif", bgrn,
                colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined])
    out = tmp_path / "bgrn.geojson"
    result = TileJob(tif, MODEL, out=out, stretch="range:100,1120", report=tmp_path / "r.json", **PARAMS).run()
    p, r = _all(score_scene(out, scene["truth"], scene["tif"], "obb"))
    p0, r0 = _all(scene["scores"])
    assert abs(p - p0) <= 0.01 and abs(r - r0) <= 0.01, ((p, r), (p0, r0))
    frame = json.loads((tmp_path / "r.json").read_text())["frames"][0]
    assert frame["bands"] == [3, 2, 1] and frame["band_choice"] == "colorinterp"
    assert frame["stretch"] == "range:100,1120" and frame["stretch_low"] == [100.0] * 3
    assert len(result) > 100


def test_stretch_none_on_8_bit_values_in_uint16_equals_the_uint8_run(scene, tmp_path):
    with rasterio.open(scene["tif"]) as ds:
        rgb = ds.read()
    tif = _copy(scene["tif"], tmp_path / "u16.tif", rgb.astype(np.uint16))
    out = tmp_path / "u16.geojson"
    TileJob(tif, MODEL, out=out, stretch="none", **PARAMS).run()
    assert _without_source(out) == _without_source(scene["out"])


def test_palette_raster_is_expanded_to_rgb(tmp_path):
    idx = (np.arange(64 * 64).reshape(1, 64, 64) % 3).astype(np.uint8)
    path = tmp_path / "pal.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8") as ds:
        ds.write(idx)
        ds.write_colormap(1, {0: (10, 20, 30, 255), 1: (200, 0, 0, 255), 2: (0, 250, 5, 255)})
    src = RasterSource(path)
    patch = src.read(0, 0, 64, 64)
    assert src.band_choice == "palette"
    lut = np.array([(10, 20, 30), (200, 0, 0), (0, 250, 5)], dtype=np.uint8)
    assert (patch == lut[idx[0]]).all()


def _gcp_copy(scene_tif: Path, dst: Path) -> Path:
    """The scene with no geotransform, georeferenced only by a grid of GCPs taken from its geotransform."""
    with rasterio.open(scene_tif) as ds:
        data, t, crs, (h, w) = ds.read(), ds.transform, ds.crs, ds.shape
    gcps = [GroundControlPoint(row=r, col=c, x=(t * (c, r))[0], y=(t * (c, r))[1])
            for r in np.linspace(0, h, 5) for c in np.linspace(0, w, 5)]
    with rasterio.open(dst, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256, gcps=gcps, crs=crs) as out:
        out.write(data)
    with rasterio.open(dst) as ds:
        assert ds.transform.is_identity and ds.gcps[0]
    return dst


def test_gcp_frame_lands_where_the_geotransform_puts_it(scene, tmp_path):
    tif = _gcp_copy(scene["tif"], tmp_path / "gcp.tif")
    out = tmp_path / "gcp.geojson"
    TileJob(tif, MODEL, out=out, **PARAMS).run()
    fc = json.loads(out.read_text())
    assert fc["tiler"]["georeferencing"] == "gcp" and "coordinate_space" not in fc
    got, ref = _coords(out), _coords(scene["out"])
    assert got.shape == ref.shape
    # 0.5 px of 0.3 m, in degrees at 45 N
    assert np.abs(got[:, 0] - ref[:, 0]).max() * 111_320 * np.cos(np.radians(45.15)) < 0.15
    assert np.abs(got[:, 1] - ref[:, 1]).max() * 111_320 < 0.15


def test_rpc_frame_lands_where_its_mapping_puts_it(scene, tmp_path):
    """RPCs for a known mapping, lon = LON0 + DLON * x, lat = LAT0 - DLAT * y (x, y: pixel edges), written as the
    RPC model defines them (line and sample at pixel centres); the same pixels with that mapping as an
    EPSG:4326 geotransform are the reference."""
    with rasterio.open(scene["tif"]) as ds:
        data, (h, w) = ds.read(), ds.shape
    lon0, lat0, d = 15.0, 45.15, 4e-6
    zeros = [0.0] * 20
    samp_num, line_num, den = list(zeros), list(zeros), [1.0] + [0.0] * 19
    samp_num[1] = 1.0  # sample = SAMP_OFF + SAMP_SCALE * L, L = (lon - LONG_OFF) / LONG_SCALE
    line_num[2] = -1.0  # line = LINE_OFF - LINE_SCALE * P, P = (lat - LAT_OFF) / LAT_SCALE
    rpc = RPC(height_off=0.0, height_scale=100.0, lat_off=lat0 - d * h / 2, lat_scale=d * h / 2,
              long_off=lon0 + d * w / 2, long_scale=d * w / 2, line_off=h / 2 - 0.5, line_scale=h / 2,
              samp_off=w / 2 - 0.5, samp_scale=w / 2, line_num_coeff=line_num, line_den_coeff=den,
              samp_num_coeff=samp_num, samp_den_coeff=den, err_bias=0.0, err_rand=0.0)
    rpc_tif = tmp_path / "rpc.tif"
    with rasterio.open(rpc_tif, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256) as out:
        out.write(data)
        out.rpcs = rpc
    ref_tif = tmp_path / "lonlat.tif"
    with rasterio.open(ref_tif, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256, crs="EPSG:4326",
                       transform=Affine(d, 0, lon0, 0, -d, lat0)) as out:
        out.write(data)
    out, ref = tmp_path / "rpc.geojson", tmp_path / "lonlat.geojson"
    TileJob(rpc_tif, MODEL, out=out, **PARAMS).run()
    TileJob(ref_tif, MODEL, out=ref, **PARAMS).run()
    assert json.loads(out.read_text())["tiler"]["georeferencing"] == "rpc"
    got, want = _coords(out), _coords(ref)
    assert got.shape == want.shape and np.abs(got - want).max() < 0.5 * d


def test_gsd_brings_a_finer_frame_to_the_models_scale(scene, tmp_path):
    """A 0.3 m scene and a 0.15 m copy of it (2x upsampled), one survey with --gsd 0.3: both score as the
    original, the finer one read in patches of 640 px of its own pixels."""
    with rasterio.open(scene["tif"]) as ds:
        fine = ds.read(out_shape=(3, 2 * ds.height, 2 * ds.width), resampling=Resampling.bilinear)
        t = ds.transform
    fine_tif = _copy(scene["tif"], tmp_path / "fine.tif", fine, width=fine.shape[2], height=fine.shape[1],
                     transform=Affine(t.a / 2, 0, t.c, 0, t.e / 2, t.f))
    with rasterio.open(fine_tif, "r+") as ds:  # an overview at the model's scale serves the decimated reads
        ds.build_overviews([2], Resampling.average)
    out_dir = tmp_path / "out"
    proc = _tiler(scene["tif"], fine_tif, "--model", MODEL, "--out-dir", out_dir, "--gsd", "0.3", "--patch-size",
                  "320", "--no-dedup-frames", "--no-progress", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames = {Path(f["source"]).name: f for f in json.loads((tmp_path / "r.json").read_text())["frames"]}
    assert frames["scene.tif"]["patch_size"] == [320, 320] and frames["fine.tif"]["patch_size"] == [640, 640]
    assert frames["scene.tif"]["read_size"] is None and frames["fine.tif"]["read_size"] == [320, 320]
    p0, r0 = _all(scene["scores"])
    for name in ("scene", "fine"):
        # lon/lat back to the original scene's pixels: where its truth is
        p, r = _all(score_scene(out_dir / f"{name}.geojson", scene["truth"], scene["tif"], "obb"))
        assert abs(p - p0) <= 0.02 and abs(r - r0) <= 0.02, (name, (p, r), (p0, r0))


def test_gsd_needs_a_metric_crs(tmp_path):
    png = tmp_path / "plain.png"
    with rasterio.open(png, "w", driver="PNG", width=64, height=64, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 64, 64), np.uint8))
    proc = _tiler(png, "--model", MODEL, "--out", tmp_path / "x.geojson", "--gsd", "0.3", "--no-progress")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "projected" in proc.stderr, proc.stderr


def test_stac_item_collection_runs_as_frames(scene, tmp_path):
    from tiler.synth.frames import write_frames

    frames = write_frames(scene["tif"], tmp_path / "frames", 1024, 0.0)[:2]
    items = [{"type": "Feature", "stac_version": "1.0.0", "id": f"item{k}", "geometry": None, "properties": {},
              "links": [], "assets": {"visual": {"href": f"frames/{p.name}", "type": "image/tiff"},
                                      "thumbnail": {"href": "x.png"}}} for k, p in enumerate(frames)]
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    proc = _tiler(stac, "--model", MODEL, "--out", tmp_path / "s.geojson", "--patch-size", "320", "--no-progress",
                  "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert [Path(f["source"]).name for f in report["frames"]] == ["frame_000.tif", "frame_001.tif"]
    bad = _tiler(stac, "--model", MODEL, "--out", tmp_path / "t.geojson", "--stac-asset", "analytic")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no asset 'analytic'" in bad.stderr
    assert "thumbnail, visual" in bad.stderr and not (tmp_path / "t.geojson").exists()


@pytest.mark.parametrize("args, words", [(["--stretch", "range:9,1"], "stretch"),
                                          (["--stretch", "log"], "stretch"),
                                          (["--bands", "1,2,7"], "band(s) 7 not in raster")])
def test_bad_imagery_options_are_one_line(scene, tmp_path, args, words):
    out = tmp_path / "x.geojson"
    proc = _tiler(scene["tif"], "--model", MODEL, "--out", out, "--no-progress", *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
    assert not out.exists()


def test_decimated_read_averages_and_clips_at_the_raster_edge(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (3, 100, 90), dtype=np.uint8)
    path = tmp_path / "r.tif"
    with rasterio.open(path, "w", driver="GTiff", width=90, height=100, count=3, dtype="uint8") as ds:
        ds.write(data)
    src = RasterSource(path)
    patch = src.read(40, 60, 64, 64, out_size=(32, 32)).astype(np.int64)
    # inside the raster: 2 x 2 means; beyond its right (x >= 90) and bottom (y >= 100) edges: zero
    want = data[:, 60:100, 40:90].reshape(3, 20, 2, 25, 2).mean(axis=(2, 4)).transpose(1, 2, 0)
    assert np.abs(patch[:20, :25] - want).max() <= 1
    assert not patch[20:].any() and not patch[:, 25:].any()
