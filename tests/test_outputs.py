"""GIS outputs: GeoPackage, FlatGeobuf, GeoParquet and GeoJSON of one real job, read back by their own
libraries (pyogrio, pyarrow, geopandas); CRS choice, provenance, run report, errors, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import rasterio
import shapely
from pyproj import CRS, Transformer

from tiler.errors import OutputError
from tiler.job import TileJob
from tiler.synth import SceneSpec, write_scene

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiler-obb.pt"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tif, _ = write_scene(SceneSpec(1280, 1280, seed=33), tmp_path_factory.mktemp("scene") / "scene.tif")
    result = TileJob(tif, MODEL, patch_size=320, overlap=0.25, progress=False, runner="local").run()
    assert len(result) > 50
    return result


def read(path: Path):
    import geopandas as gpd

    return gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)


def vertices(geoms) -> list[np.ndarray]:
    return [shapely.get_coordinates(g) for g in geoms]


def pixel_to_native(result, xy):
    return result.georeferencer.pixel_to_map(xy)


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb", ".parquet"])
def test_each_format_reads_back_as_the_same_features_in_the_native_crs(job, tmp_path, suffix):
    ref = read(job.to_file(tmp_path / "ref.geojson"))
    got = read(job.to_file(tmp_path / f"out{suffix}"))
    assert len(got) == len(ref) == len(job)
    if suffix == ".fgb":  # FlatGeobuf's spatial index stores features in Hilbert order: back to the job's order
        key = lambda b, c, s: list(zip(*np.round(b, 3).T.tolist(), c.tolist(), np.round(s, 5).tolist()))  # noqa
        where = {k: i for i, k in enumerate(key(got[["x0", "y0", "x1", "y1"]].to_numpy(), got["class_id"].to_numpy(),
                                                 got["score"].to_numpy()))}
        order = [where[k] for k in key(job.detections.bounds(), job.detections.class_id,
                              job.detections.score.astype(np.float64))]
        got = got.iloc[order].reset_index(drop=True)
    assert CRS.from_user_input(got.crs) == CRS.from_user_input(job.crs)  # the raster's own, not WGS84
    assert list(got["class_name"]) == list(ref["class_name"])
    assert np.array_equal(got["class_id"], ref["class_id"])
    assert np.allclose(got["score"], ref["score"], atol=1e-5)
    # provenance on every feature
    assert set(got["model"]) == {"tiler-obb.pt"} and set(got["tiler_version"]) == {"0.1.0"}
    assert set(got["source"]) == {str(Path(job.config.source).resolve())}
    assert len(set(got["model_sha256"])) == 1 and len(got["model_sha256"][0]) == 12
    assert np.array_equal(got["window"], job.detections.window)
    # geometries: exactly the detections mapped by the raster's affine (no trip through WGS84)...
    d = job.detections
    want = [pixel_to_native(job, d.coords[a:b]) for a, b in zip(d.offsets[:-1], d.offsets[1:])]
    for g, w in zip(got.geometry, want):
        v = shapely.get_coordinates(g)[:-1]
        assert len(v) == len(w)
        # the same ring, maybe reversed to RFC 7946 orientation: compare as sets of vertices
        assert np.abs(np.sort(v, axis=0) - np.sort(w, axis=0)).max() < 1e-6
    # ... and the same places as the GeoJSON's lon/lat, to its 1e-7 degree precision
    to_wgs = Transformer.from_crs(job.crs, "EPSG:4326", always_xy=True)
    for g, r in zip(got.geometry[:50], ref.geometry[:50]):
        lon, lat = to_wgs.transform(*shapely.get_coordinates(g).T)
        assert np.abs(np.column_stack([lon, lat]) - shapely.get_coordinates(r)).max() < 2e-7
    assert got.geometry.is_valid.all() and not got.geometry.is_empty.any()
    assert np.allclose(got[["x0", "y0", "x1", "y1"]].to_numpy(), np.round(d.bounds(), 3))


def test_crs_as_asked(job, tmp_path):
    wgs = read(job.to_file(tmp_path / "wgs.parquet", crs="wgs84"))
    assert CRS.from_user_input(wgs.crs).equals(CRS.from_user_input("EPSG:4326"), ignore_axis_order=True)
    merc = read(job.to_file(tmp_path / "merc.gpkg", crs="EPSG:3857"))
    assert CRS.from_user_input(merc.crs).to_epsg() == 3857
    direct = Transformer.from_crs(job.crs, "EPSG:3857", always_xy=True)
    native = read(job.to_file(tmp_path / "native.gpkg"))
    x, y = direct.transform(*shapely.get_coordinates(native.geometry[0]).T)
    assert np.abs(np.column_stack([x, y]) - shapely.get_coordinates(merc.geometry[0])).max() < 1e-6
    with pytest.raises(OutputError, match="GeoJSON output is always EPSG:4326"):
        job.to_file(tmp_path / "x.geojson", crs="EPSG:3857")
    assert not (tmp_path / "x.geojson").exists()


def test_geoparquet_metadata_follows_the_spec(job, tmp_path):
    path = job.to_file(tmp_path / "out.parquet")
    meta = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert meta["version"] == "1.1.0" and meta["primary_column"] == "geometry"
    col = meta["columns"]["geometry"]
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["Polygon"]
    assert CRS.from_json_dict(col["crs"]) == CRS.from_user_input(job.crs)  # PROJJSON
    assert col["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    table = pq.read_table(path)
    geoms = shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))
    bbox = table["bbox"].combine_chunks()
    assert np.allclose(bbox.field("xmin").to_numpy(), shapely.bounds(geoms)[:, 0])
    assert np.allclose(bbox.field("ymax").to_numpy(), shapely.bounds(geoms)[:, 3])
    assert np.allclose(col["bbox"], shapely.total_bounds(geoms))


def test_to_arrow_and_geodataframe(job):
    table = job.to_arrow()
    assert table.num_rows == len(job) and table.schema.field("geometry").type == "binary"
    assert json.loads(table.schema.metadata[b"geo"])["columns"]["geometry"]["encoding"] == "WKB"
    gdf = job.to_geodataframe()
    assert len(gdf) == len(job) and CRS.from_user_input(gdf.crs).to_epsg() == 4326
    lean = job.to_arrow(provenance=False)
    assert "source" not in lean.column_names and "model_sha256" not in lean.column_names


def test_no_provenance_and_run_report_from_the_cli(job, tmp_path):
    out, report = tmp_path / "lean.fgb", tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "tiler.cli", "predict", job.config.source, "--model", str(MODEL),
                        "--patch-size", "320", "--out", str(out), "--no-provenance", "--report", str(report),
                        "--no-progress"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    info = pyogrio.read_info(out)
    assert list(info["fields"]) == ["class_id", "class_name", "score", "x0", "y0", "x1", "y1"]
    rep = json.loads(report.read_text())
    s = rep["stats"]
    assert s["windows_planned"] == s["windows_run"] == 25 and s["runner"] == "local" and s["backend"] == "torch"
    assert sum(s["kept_per_class"].values()) == info["features"] == len(job)
    assert sum(s["raw_per_class"].values()) == s["raw_detections"] > s["kept_detections"]
    assert {"plan", "load_model", "predict", "merge", "write", "total"} <= set(s["seconds"])
    assert rep["config"]["patch_size"] == [320, 320] and rep["config"]["provenance"] is False
    from tiler.model.backends import file_sha256

    assert rep["input_sha256"] == file_sha256(job.config.source) and rep["model_sha256"] == file_sha256(MODEL)
    assert rep["tiler_version"] == "0.1.0" and rep["crs"] == "EPSG:32633"


def test_pixel_space_outputs_have_no_crs_and_say_so(tmp_path):
    tif, _ = write_scene(SceneSpec(640, 640, seed=34), tmp_path / "scene.tif")
    png = tmp_path / "scene.png"
    with rasterio.open(tif) as src:
        data = src.read()
    with rasterio.open(png, "w", driver="PNG", width=640, height=640, count=3, dtype="uint8") as dst:
        dst.write(data)
    result = TileJob(png, MODEL, patch_size=320, overlap=0.25, progress=False, runner="local").run()
    assert len(result) > 10
    pq_path = result.to_file(tmp_path / "pix.parquet")
    meta = json.loads(pq.read_schema(pq_path).metadata[b"geo"])
    assert meta["columns"]["geometry"]["crs"] is None
    assert json.loads(pq.read_schema(pq_path).metadata[b"tiler"])["coordinate_space"] == "pixel"
    gpkg = result.to_file(tmp_path / "pix.gpkg")
    info = pyogrio.read_info(gpkg)
    assert info["crs"] is None and json.loads(info["layer_metadata"]["tiler"])["coordinate_space"] == "pixel"
    g = read(gpkg)
    assert np.abs(np.sort(shapely.get_coordinates(g.geometry[0])[:-1], axis=0)
                  - np.sort(result.detections.coords[:result.detections.offsets[1]], axis=0)).max() < 1e-9
    fgb = pyogrio.read_info(result.to_file(tmp_path / "pix.fgb"))
    assert fgb["crs"] is None and "pixel coordinates" in fgb["layer_metadata"]["DESCRIPTION"]
    with pytest.raises(OutputError, match="no georeferencing"):
        result.to_file(tmp_path / "x.gpkg", crs="EPSG:32633")


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/out.shp"], "unsupported output format .shp"),
    (["--out", "{tmp}/missing/out.gpkg"], "output folder does not exist"),
    (["--out", "{tmp}/folder.gpkg"], "exists and is not a file"),
    (["--out", "{tmp}/out.geojson", "--crs", "EPSG:3857"], "GeoJSON output is always EPSG:4326"),
    (["--out", "{tmp}/out.gpkg", "--crs", "EPSG:999999"], "crs must be auto, native, wgs84"),
])
def test_bad_outputs_exit_2_with_one_line_and_no_file(job, tmp_path, args, message):
    (tmp_path / "folder.gpkg").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = subprocess.run([sys.executable, "-m", "tiler.cli", "predict", job.config.source, "--model", str(MODEL),
                        "--patch-size", "320", "--no-progress", *args], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.gpkg"]


@pytest.mark.parametrize("suffix", [".gpkg", ".parquet", ".geojson"])
def test_interrupted_while_writing_leaves_no_file(job, tmp_path, monkeypatch, suffix):
    """Ctrl-C arrives after the writer has put real bytes in its temporary file: nothing is left."""
    import pyarrow.parquet

    def interrupt_after(real, calls=1):
        count = [0]

        def call(*args, **kwargs):
            out = real(*args, **kwargs)
            count[0] += 1
            if count[0] >= calls:
                raise KeyboardInterrupt
            return out
        return call

    import orjson

    monkeypatch.setattr(pyogrio, "write_arrow", interrupt_after(pyogrio.write_arrow))
    monkeypatch.setattr(pyarrow.parquet, "write_table", interrupt_after(pyarrow.parquet.write_table))
    monkeypatch.setattr(orjson, "dumps", interrupt_after(orjson.dumps, calls=20))  # mid-way through the features
    with pytest.raises(KeyboardInterrupt):
        job.to_file(tmp_path / f"out{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_features_crossing_the_antimeridian_are_split(tmp_path):
    """A raster in UTM zone 60 straddling 180 degrees: in WGS84 outputs every geometry stays within
    [-180, 180], those crossing are MultiPolygons with a part on each side, and none is lost."""
    tif, _ = write_scene(SceneSpec(1280, 1280, seed=35), tmp_path / "scene.tif")
    east, north = Transformer.from_crs("EPSG:4326", "EPSG:32660", always_xy=True).transform(180.0, 10.0)
    with rasterio.open(tif, "r+") as ds:
        ds.crs = "EPSG:32660"
        ds.transform = rasterio.transform.from_origin(east - 640 * 0.3, north + 640 * 0.3, 0.3, 0.3)
    result = TileJob(tif, MODEL, patch_size=320, overlap=0.25, progress=False, runner="local").run()
    for suffix in (".geojson", ".parquet"):
        path = result.to_file(tmp_path / f"out{suffix}", crs="wgs84")
        g = read(path)
        assert len(g) == len(result)
        xy = shapely.get_coordinates(g.geometry.values)
        assert (np.abs(xy[:, 0]) <= 180).all()
        multi = g[g.geom_type == "MultiPolygon"]
        assert len(multi) >= 1, "no detection straddles the antimeridian: move the scene"
        for geom in multi.geometry:
            lons = [shapely.get_coordinates(p)[:, 0] for p in geom.geoms]
            assert any((lon > 179).all() for lon in lons) and any((lon < -179).all() for lon in lons)
        assert g.geometry.is_valid.all()


def test_numpy_wkb_of_quadrilaterals_equals_shapely_and_odd_ones_are_repaired():
    """Detect/OBB outputs skip shapely: their WKB, bounds and validity must be exactly what shapely gives;
    a self-intersecting quadrilateral (a bow-tie) leaves that path and comes out valid."""
    from tiler.detections import Detections
    from tiler.writers import FeatureSet
    from tiler.writers.arrow import _quads_fast, encode_geometries

    rng = np.random.default_rng(5)
    c = rng.uniform(0, 1000, (500, 1, 2))
    quads = c + np.array([[0, 0], [10, 1], [11, 9], [1, 8]]) * rng.uniform(0.5, 3, (500, 1, 1))
    dets = Detections.from_polygons(quads, rng.integers(0, 3, 500), rng.uniform(0, 1, 500), window=0)
    fs = FeatureSet.build(dets, {0: "a", 1: "b", 2: "c"}, None, None)
    fast = _quads_fast(fs)
    assert fast is not None and fast.types == ["Polygon"]
    geoms = fs.geometries()
    assert fast.wkb.to_pylist() == list(shapely.to_wkb(geoms))
    assert np.array_equal(fast.bounds, shapely.bounds(geoms))
    bowtie = quads.copy()
    bowtie[7] = [[0, 0], [10, 10], [10, 0], [0, 10]]
    fs = FeatureSet.build(Detections.from_polygons(bowtie, np.zeros(500, int), np.ones(500), window=0),
                          {0: "a"}, None, None)
    assert _quads_fast(fs) is None
    enc = encode_geometries(fs)
    out = shapely.from_wkb(enc.wkb.to_numpy(zero_copy_only=False))
    assert shapely.is_valid(out).all() and not shapely.is_empty(out).any()
    assert enc.types == ["MultiPolygon"]  # the bow-tie became two triangles, so the layer is MultiPolygon


@pytest.mark.parametrize("n", [1, 16, 17, 300, 5000])
def test_tiler_flatgeobuf_reads_back_in_gdal_with_a_working_spatial_index(tmp_path, n):
    """Quadrilaterals are written by tiler's own FlatGeobuf writer (faster than GDAL's): GDAL must read every
    feature back exactly, and its index-driven bbox reads must return what brute force finds; tree sizes
    around the node size (1, 16, 17) included. Pixel space for some, a CRS for the others."""
    from rasterio.transform import from_origin

    from tiler.detections import Detections
    from tiler.georef import Georeferencer
    from tiler.writers import FeatureSet, output_crs
    from tiler.writers.flatgeobuf import write_flatgeobuf

    rng = np.random.default_rng(n)
    c = rng.uniform(0, 5000, (n, 1, 2))
    a = rng.uniform(0, np.pi, (n, 1))
    w, h = rng.uniform(4, 40, (n, 1)), rng.uniform(4, 40, (n, 1))
    corners = np.stack([c[:, 0] + np.column_stack([sx * w[:, 0] / 2 * np.cos(a[:, 0]) - sy * h[:, 0] / 2 * np.sin(a[:, 0]),
                                                   sx * w[:, 0] / 2 * np.sin(a[:, 0]) + sy * h[:, 0] / 2 * np.cos(a[:, 0])])
                        for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))], axis=1)
    dets = Detections.from_polygons(corners, rng.integers(0, 3, n), rng.uniform(0.2, 1, n), window=0)
    dets.window[:] = rng.integers(0, 1000, n)
    geo = Georeferencer(from_origin(500000, 5000000, 0.3, 0.3), "EPSG:32633") if n % 2 else None
    prov = {"source": "/data/a.tif", "model": "m.pt", "model_sha256": "0123456789ab", "tiler_version": "0.1.0"}
    fs = FeatureSet.build(dets, {0: "vehicle", 1: "building", 2: "boat"}, geo,
                          output_crs("flatgeobuf", "auto", geo.crs if geo else None), prov if n != 300 else None)
    assert fs.all_convex_quads()
    path = write_flatgeobuf(tmp_path / "t.fgb", fs, chunk=97)  # several chunks, a short last one
    info = pyogrio.read_info(path)
    assert info["features"] == n and info["geometry_type"] == "Polygon"
    assert (info["crs"] == "EPSG:32633") if geo else info["crs"] is None
    df = pyogrio.read_dataframe(path)
    b = fs.bbox_px()
    got = np.lexsort((df["y0"].to_numpy(), df["x0"].to_numpy()))
    want = np.lexsort((b[:, 1], b[:, 0]))
    geoms = fs.dets.with_coords(fs.coords).geometries()
    assert shapely.equals_exact(np.asarray(df.geometry.values)[got], geoms[want], 0).all()
    assert np.array_equal(df["score"].to_numpy()[got], fs.dets.score.astype(np.float64)[want])
    assert list(df["class_name"].to_numpy()[got]) == [("vehicle", "building", "boat")[i] for i in fs.dets.class_id[want]]
    if n != 300:
        assert np.array_equal(df["window"].to_numpy()[got], fs.dets.window[want])
        assert set(df["model_sha256"]) == {"0123456789ab"}
    else:
        assert "source" not in df.columns
    env = shapely.envelope(geoms)
    lo, hi = shapely.total_bounds(geoms).reshape(2, 2)
    for _ in range(5):
        x0, y0 = rng.uniform(lo, hi)
        box = (x0, y0, x0 + (hi[0] - lo[0]) / 7, y0 + (hi[1] - lo[1]) / 5)
        hits = pyogrio.read_dataframe(path, bbox=box)
        assert len(hits) == shapely.intersects(shapely.box(*box), env).sum()
