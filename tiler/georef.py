"""Pixel -> map CRS -> WGS84 (lon, lat), vectorised over all vertices, with RFC 7946 ring orientation."""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from .detections import Detections

WGS84 = "EPSG:4326"
DECIMALS_LONLAT = 7  # ~1 cm: finer than any pixel we handle, and what RFC 7946 suggests is plenty
DECIMALS_PIXEL = 3


class Georeferencer:
    """Maps global pixel coordinates (x right, y down, pixel edges at integers) to lon/lat."""

    def __init__(self, transform: Affine, crs):
        self.transform = transform
        self.crs = CRS.from_user_input(crs)
        self._to_wgs84 = Transformer.from_crs(self.crs, WGS84, always_xy=True)

    def pixel_to_map(self, xy: np.ndarray) -> np.ndarray:
        t = self.transform
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f])

    def pixel_to_lonlat(self, xy: np.ndarray) -> np.ndarray:
        m = self.pixel_to_map(xy)
        lon, lat = self._to_wgs84.transform(m[:, 0], m[:, 1])
        return np.column_stack([lon, lat])


def signed_areas(coords: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Shoelace signed area of each ragged ring (positive = counter-clockwise in x-right, y-up axes)."""
    if len(offsets) <= 1:
        return np.zeros(0)
    counts = np.diff(offsets)
    owner = np.repeat(np.arange(len(counts)), counts)
    nxt = np.arange(len(coords)) + 1
    ends = offsets[1:]
    nxt[ends - 1] = offsets[:-1]  # each ring wraps to its own first vertex
    cross = coords[:, 0] * coords[nxt, 1] - coords[nxt, 0] * coords[:, 1]
    return np.bincount(owner, weights=cross, minlength=len(counts)) / 2.0


def orient_ccw(coords: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Reverse the rings that are clockwise (in lon/lat axes), as RFC 7946 wants exteriors CCW."""
    area = signed_areas(coords, offsets)
    counts = np.diff(offsets)
    flip = np.repeat(area < 0, counts)
    if not flip.any():
        return coords
    owner_start = np.repeat(offsets[:-1], counts)
    owner_end = np.repeat(offsets[1:], counts)
    i = np.arange(len(coords))
    rev = owner_start + (owner_end - 1 - i)  # mirror index inside the ring
    return coords[np.where(flip, rev, i)]


def global_lonlat(dets: Detections, geo: Georeferencer) -> np.ndarray:
    """All vertices of `dets` in lon/lat, rings counter-clockwise."""
    return orient_ccw(geo.pixel_to_lonlat(dets.coords), dets.offsets)
