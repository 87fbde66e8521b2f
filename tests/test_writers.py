"""Tests for tiler.writers: GeoJSON / GeoJSON text sequences, atomic writes, output-path checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import Affine

from tiler.detections import Detections
from tiler.errors import OutputError
from tiler.georef import Georeferencer
from tiler.writers import check_output_path, output_format, write_detections

NAMES = {0: "car", 1: "truck", 2: "boat"}
POLYGONS = [
    np.array([[10.25, 20.5], [30.125, 20.5], [30.125, 40.0625], [10.25, 40.0625]]),  # axis-aligned box
    np.array([[100.1, 100.2], [140.7, 110.3], [120.4, 150.9]]),  # triangle
    np.array([[5.0, 5.0], [9.5, 4.0], [12.0, 8.0], [8.0, 12.5], [4.0, 9.0]]),  # pentagon
]
CLASSES = [1, 0, 2]
SCORES = [0.91234, 0.5, 0.25]


def make_dets() -> Detections:
    return Detections.from_polygons(POLYGONS, CLASSES, SCORES)


def read_seq(path: Path) -> list[dict]:
    raw = path.read_bytes().decode("utf-8")
    assert raw.startswith("\x1e")
    records = raw.split("\x1e")[1:]
    assert all(r.endswith("\n") and r.count("\n") == 1 for r in records), "one LF-terminated text per record"
    return [json.loads(r) for r in records]


def check_pixel_features(feats: list[dict]) -> None:
    assert len(feats) == len(POLYGONS)
    for feat, poly, cls, score in zip(feats, POLYGONS, CLASSES, SCORES):
        assert feat["type"] == "Feature"
        assert feat["geometry"]["type"] == "Polygon"
        ring = np.array(feat["geometry"]["coordinates"][0])
        assert len(ring) == len(poly) + 1
        assert ring[0].tolist() == ring[-1].tolist(), "rings are closed"
        np.testing.assert_allclose(ring[:-1], poly, atol=5e-4)  # pixel coordinates keep 3 decimals
        props = feat["properties"]
        assert props["class_id"] == cls
        assert props["class_name"] == NAMES[cls]
        assert props["score"] == pytest.approx(score, abs=1e-5)
        np.testing.assert_allclose(props["bbox_px"], [*poly.min(0), *poly.max(0)], atol=5e-4)


def test_geojson_round_trip_pixel_space(tmp_path):
    out = tmp_path / "dets.geojson"
    meta = {"source": "x.png", "patch_size": [640, 640]}
    assert write_detections(out, make_dets(), NAMES, None, meta) == out
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection"
    assert doc["coordinate_space"] == "pixel"
    assert "crs" not in doc
    assert doc["tiler"] == meta
    check_pixel_features(doc["features"])
    # non-integer coordinates survive (3 decimals)
    assert doc["features"][0]["geometry"]["coordinates"][0][0] == [10.25, 20.5]
    assert doc["features"][1]["geometry"]["coordinates"][0][0] == [100.1, 100.2]
    assert os.listdir(tmp_path) == ["dets.geojson"]


@pytest.mark.parametrize("suffix", [".geojsonl", ".geojsons", ".geojsonseq"])
def test_geojson_text_sequence_round_trip(tmp_path, suffix):
    out = tmp_path / f"dets{suffix}"
    write_detections(out, make_dets(), NAMES, None)
    check_pixel_features(read_seq(out))
    assert os.listdir(tmp_path) == [out.name]


def test_unknown_class_name_falls_back_to_id(tmp_path):
    out = tmp_path / "dets.geojson"
    write_detections(out, make_dets(), {0: "car"}, None)
    names = [f["properties"]["class_name"] for f in json.loads(out.read_text())["features"]]
    assert names == ["1", "car", "2"]


def test_empty_detections(tmp_path):
    out = tmp_path / "none.geojson"
    write_detections(out, Detections.empty(), NAMES, None)
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"] == []
    seq = tmp_path / "none.geojsonl"
    write_detections(seq, Detections.empty(), NAMES, None)
    assert seq.read_bytes() == b""


def test_georeferenced_output_is_lonlat_ccw_without_crs(tmp_path):
    # EPSG:32633 (UTM 33N), 0.3 m pixels, north up
    geo = Georeferencer(Affine(0.3, 0.0, 500000.0, 0.0, -0.3, 5_000_000.0), "EPSG:32633")
    out = tmp_path / "geo.geojson"
    write_detections(out, make_dets(), NAMES, geo)
    doc = json.loads(out.read_text())
    assert "crs" not in doc and "coordinate_space" not in doc
    from pyproj import Transformer

    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    for feat, poly in zip(doc["features"], POLYGONS):
        ring = np.array(feat["geometry"]["coordinates"][0])
        assert ring[0].tolist() == ring[-1].tolist()
        # RFC 7946: exterior rings counter-clockwise (positive shoelace area in lon/lat)
        x, y = ring[:-1, 0], ring[:-1, 1]
        assert (x * np.roll(y, -1) - np.roll(x, -1) * y).sum() > 0
        # the same vertices as an independent projection of the pixel polygon (orientation aside)
        mx, my = 500000.0 + 0.3 * poly[:, 0], 5_000_000.0 - 0.3 * poly[:, 1]
        lon, lat = to_ll.transform(mx, my)
        expected = np.column_stack([lon, lat])
        got = ring[:-1]
        # same ring, kept or reversed (orientation fixed); 7 decimals written
        assert (np.allclose(got, expected, rtol=0, atol=1e-7)
                or np.allclose(got, expected[::-1], rtol=0, atol=1e-7)), (got, expected)
        assert 14.9 < ring[:, 0].min() and ring[:, 0].max() < 15.1 and 45.0 < ring[:, 1].mean() < 45.3
        # bbox_px stays in pixels
        np.testing.assert_allclose(feat["properties"]["bbox_px"], [*poly.min(0), *poly.max(0)], atol=5e-4)


# -- atomic writing ------------------------------------------------------------------------------------------

class ExplodingNames(dict):
    """A names mapping whose lookup fails part-way through writing."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at

    def get(self, key, default=None):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("names lookup exploded")
        return f"class {key}"


@pytest.mark.parametrize("suffix", [".geojson", ".geojsonl"])
@pytest.mark.parametrize("fail_at", [1, 3])
def test_failure_while_writing_leaves_nothing(tmp_path, suffix, fail_at):
    out = tmp_path / f"dets{suffix}"
    with pytest.raises(RuntimeError, match="exploded"):
        write_detections(out, make_dets(), ExplodingNames(fail_at), None)
    assert os.listdir(tmp_path) == [], "no output and no hidden .part file after a failure"


def test_failure_keeps_previous_file(tmp_path):
    out = tmp_path / "dets.geojson"
    out.write_text("previous\n")
    with pytest.raises(RuntimeError):
        write_detections(out, make_dets(), ExplodingNames(2), None)
    assert out.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["dets.geojson"]


def test_nan_coordinate_fails_without_leaving_a_file(tmp_path):
    dets = make_dets()
    dets.coords[dets.offsets[2] + 1, 1] = np.nan  # the last feature is written last: the file is half done
    out = tmp_path / "dets.geojson"
    with pytest.raises(OutputError, match="1 detection.*non-finite coordinates"):
        write_detections(out, dets, NAMES, None)
    assert os.listdir(tmp_path) == []


def test_success_replaces_existing_file(tmp_path):
    out = tmp_path / "dets.geojson"
    out.write_text("old")
    write_detections(out, make_dets(), NAMES, None)
    assert json.loads(out.read_text())["type"] == "FeatureCollection"
    assert os.listdir(tmp_path) == ["dets.geojson"]


# -- output path checks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [("a.geojson", "geojson"), ("a.json", "geojson"), ("A.GeoJSON", "geojson"),
                                       ("a.geojsonl", "geojsonseq"), ("a.geojsons", "geojsonseq"),
                                       ("a.geojsonseq", "geojsonseq")])
def test_output_formats(tmp_path, name, fmt):
    assert output_format(name) == fmt
    assert check_output_path(tmp_path / name) == tmp_path / name


def test_relative_path_in_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output_path("out.geojson") == Path("out.geojson")


@pytest.mark.parametrize("name, pattern", [("a.txt", r"\.txt"), ("a.shp", r"\.shp"), ("noext", r"\(none\)"),
                                           ("a.geojson.gz", r"\.gz")])
def test_unsupported_suffix(tmp_path, name, pattern):
    with pytest.raises(OutputError, match=pattern) as info:
        check_output_path(tmp_path / name)
    assert "\n" not in str(info.value)
    with pytest.raises(OutputError):
        write_detections(tmp_path / name, make_dets(), NAMES, None)
    assert os.listdir(tmp_path) == []


def test_missing_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist") as info:
        check_output_path(tmp_path / "missing" / "a.geojson")
    assert "missing" in str(info.value)
    with pytest.raises(OutputError):
        write_detections(tmp_path / "missing" / "a.geojson", make_dets(), NAMES, None)
    assert os.listdir(tmp_path) == []


def test_parent_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError):
        check_output_path(tmp_path / "afile" / "a.geojson")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_path(ro / "a.geojson")
    finally:
        ro.chmod(0o755)


def test_output_path_that_is_a_directory(tmp_path):
    (tmp_path / "out.geojson").mkdir()
    with pytest.raises(OutputError):
        check_output_path(tmp_path / "out.geojson")


@pytest.mark.parametrize("georeferenced", [False, True])
def test_holes_and_parts_are_written_valid_and_rfc7946_oriented(tmp_path, georeferenced):
    """Polygons with holes and MultiPolygons: exteriors counter-clockwise, holes clockwise, valid, and
    read back by GDAL (pyogrio) as the same geometries."""
    import pyogrio
    import shapely

    # rings given with the "wrong" orientation on purpose: exteriors clockwise, holes counter-clockwise
    yard = shapely.Polygon([(0, 0), (0, 10), (10, 10), (10, 0)], [[(3, 3), (6, 3), (6, 6), (3, 6)]])
    multi = shapely.MultiPolygon([shapely.box(20, 0, 25, 5, ccw=False), shapely.orient_polygons(yard, exterior_cw=True)])
    geoms = np.array([yard, multi, shapely.box(40, 40, 44, 43)], dtype=object)
    dets = Detections.from_geometries(geoms, [0, 1, 2], [0.9, 0.8, 0.7], window=0)
    geo = Georeferencer(Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000), "EPSG:32633") if georeferenced else None
    out = tmp_path / "holes.geojson"
    write_detections(out, dets, NAMES, geo)
    feats = json.loads(out.read_text())["features"]
    assert [f["geometry"]["type"] for f in feats] == ["Polygon", "MultiPolygon", "Polygon"]
    read = [shapely.geometry.shape(f["geometry"]) for f in feats]
    assert all(g.is_valid and not g.is_empty for g in read)
    for g in read:
        for part in getattr(g, "geoms", [g]):
            assert part.exterior.is_ccw
            assert all(not ring.is_ccw for ring in part.interiors)
    assert len(read[0].interiors) == 1 and len(read[1].geoms) == 2 and len(read[1].geoms[1].interiors) == 1
    back = np.array(list(pyogrio.read_dataframe(out).geometry), dtype=object)
    if georeferenced:  # lon/lat -> map -> pixels
        from pyproj import Transformer

        to_map = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)

        def to_pixels(xy):
            x, y = to_map.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([(x - 500_000) / 0.5, (5_000_000 - y) / 0.5])

        back = shapely.transform(back, to_pixels)
    for a, b in zip(back, geoms):  # 7 decimals of a degree are ~1 cm: 0.02 px here
        assert shapely.area(shapely.symmetric_difference(a, b)) < 0.03 * b.length


def test_a_geometry_broken_by_rounding_is_written_valid(tmp_path):
    """Two parts 0.0002 px apart touch once rounded to 3 decimals: the writer snaps the exact geometry to the
    output grid instead of writing an invalid MultiPolygon."""
    import shapely

    near = shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(1.0002, 0, 2, 1)])
    dets = Detections.from_geometries(np.array([near, shapely.box(5, 5, 6, 6)], dtype=object), [0, 1], [0.9, 0.8], 0)
    out = tmp_path / "near.geojson"
    write_detections(out, dets, NAMES, None)
    feats = json.loads(out.read_text())["features"]
    geoms = [shapely.geometry.shape(f["geometry"]) for f in feats]
    assert all(g.is_valid and not g.is_empty for g in geoms)
    assert geoms[0].area == pytest.approx(2.0, abs=1e-3) and geoms[1].equals(shapely.box(5, 5, 6, 6))
    assert all(p.exterior.is_ccw for g in geoms for p in getattr(g, "geoms", [g]))
