"""Tests for tiler.georef: pixel -> lon/lat and RFC 7946 ring orientation, against pyproj and shapely."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from rasterio.transform import Affine

from tiler.detections import Detections
from tiler.georef import Georeferencer, global_lonlat, orient_ccw, signed_areas

UTM33 = "EPSG:32633"
NORTH_UP = Affine(0.3, 0.0, 399960.0, 0.0, -0.3, 5_800_020.0)  # 0.3 m pixels, Sentinel-like origin
# rotated by 20 degrees and sheared a little: b and d non-zero, so swapped terms would show
ROTATED = NORTH_UP @ Affine.rotation(20.0) @ Affine.shear(3.0, 0.0)


def independent_lonlat(transform: Affine, xy: np.ndarray) -> np.ndarray:
    to_ll = Transformer.from_crs(UTM33, "EPSG:4326", always_xy=True)
    out = []
    for x, y in xy:
        mx, my = transform @ (float(x), float(y))
        out.append(to_ll.transform(mx, my))
    return np.array(out)


def shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum())


@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED], ids=["north-up", "rotated"])
def test_pixel_corners_match_pyproj(transform):
    geo = Georeferencer(transform, UTM33)
    w, h = 40000, 30000
    xy = np.array([[0, 0], [w, 0], [w, h], [0, h], [0.5, 0.5], [1234.567, 8901.234]], dtype=np.float64)
    got = geo.pixel_to_lonlat(xy)
    expected = independent_lonlat(transform, xy)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    # map coordinates too
    np.testing.assert_allclose(geo.pixel_to_map(xy), np.array([transform @ tuple(p) for p in xy]), rtol=0,
                               atol=1e-6)


def test_lonlat_is_in_zone_33_and_axis_order_is_lon_lat():
    geo = Georeferencer(NORTH_UP, UTM33)
    lon, lat = geo.pixel_to_lonlat(np.array([[0.0, 0.0]]))[0]
    assert 12.0 <= lon <= 18.0  # UTM zone 33 spans 12..18 E
    assert 52.0 < lat < 53.0
    # x to the right goes east, y down goes south
    east = geo.pixel_to_lonlat(np.array([[1000.0, 0.0]]))[0]
    south = geo.pixel_to_lonlat(np.array([[0.0, 1000.0]]))[0]
    assert east[0] > lon and south[1] < lat


def test_accepts_crs_objects():
    from pyproj import CRS

    a = Georeferencer(NORTH_UP, CRS.from_epsg(32633)).pixel_to_lonlat(np.array([[10.0, 20.0]]))
    b = Georeferencer(NORTH_UP, UTM33).pixel_to_lonlat(np.array([[10.0, 20.0]]))
    np.testing.assert_array_equal(a, b)


def _rings(rng: np.random.Generator, counts: list[int]) -> list[np.ndarray]:
    """Star-shaped (hence simple) rings in pixel space, alternately clockwise and counter-clockwise."""
    rings = []
    for k, n in enumerate(counts):
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(5, 20, n)
        centre = rng.uniform(100, 3000, 2)
        ring = centre + np.column_stack([rad * np.cos(ang), rad * np.sin(ang)])
        rings.append(ring if k % 2 else ring[::-1].copy())
    return rings


@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED], ids=["north-up", "rotated"])
def test_orient_ccw_makes_every_lonlat_ring_ccw(transform):
    rng = np.random.default_rng(7)
    counts = [3, 4, 5, 7, 4, 12, 3, 6, 9, 4]
    rings = _rings(rng, counts)
    dets = Detections.from_polygons(rings, np.zeros(len(rings)), np.ones(len(rings)))
    assert len(dets) == len(rings)
    geo = Georeferencer(transform, UTM33)
    lonlat = geo.pixel_to_lonlat(dets.coords)
    # both orientations present before orienting (the test would be vacuous otherwise)
    before = [shapely.Polygon(lonlat[dets.offsets[k]:dets.offsets[k + 1]]).exterior.is_ccw for k in range(len(dets))]
    assert any(before) and not all(before)

    oriented = orient_ccw(lonlat, dets.offsets)
    assert oriented.shape == lonlat.shape
    via_dets = global_lonlat(dets, geo)
    np.testing.assert_array_equal(via_dets, oriented)
    for k in range(len(dets)):
        s, e = dets.offsets[k], dets.offsets[k + 1]
        ring, orig = oriented[s:e], lonlat[s:e]
        assert shoelace(ring) > 0
        assert shapely.Polygon(ring).exterior.is_ccw
        if before[k]:
            np.testing.assert_array_equal(ring, orig)  # already CCW: untouched
        else:
            np.testing.assert_array_equal(ring, orig[::-1])  # CW: the same vertices, reversed
        assert shapely.Polygon(ring).equals(shapely.Polygon(orig))


def test_orient_ccw_all_ccw_is_identity():
    ring = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    coords = np.concatenate([ring, ring + 5, ring[:3] + 10])
    offsets = np.array([0, 4, 8, 11])
    np.testing.assert_array_equal(orient_ccw(coords, offsets), coords)


def test_signed_areas_against_shapely():
    rng = np.random.default_rng(11)
    counts = [3, 4, 5, 8, 3, 17, 4, 6]
    rings = _rings(rng, counts)
    coords = np.concatenate(rings)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    areas = signed_areas(coords, offsets)
    assert areas.shape == (len(rings),)
    for a, ring in zip(areas, rings):
        poly = shapely.Polygon(ring)
        assert abs(a) == pytest.approx(poly.area, rel=1e-9)
        assert (a > 0) == poly.exterior.is_ccw


def test_signed_areas_simple_cases():
    unit_ccw = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 3.0], [0.0, 3.0]])
    tri_cw = np.array([[0.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    coords = np.concatenate([unit_ccw, tri_cw])
    np.testing.assert_allclose(signed_areas(coords, np.array([0, 4, 7])), [6.0, -8.0])
    assert signed_areas(np.zeros((0, 2)), np.array([0])).shape == (0,)
