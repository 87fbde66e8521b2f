"""Synthetic aerial scenes with exact ground truth, of any size, rendered window by window.

Every pixel is a pure function of its global coordinates and the seed (hash-based noise, analytic roads
and water, objects placed per fixed cell), so a window renders the same whether the scene is written in
512-pixel blocks, cut into training patches, or read back by the engine. Nothing ever holds the whole
image: the writer renders one block at a time.

Classes (ids are the models' class ids):
    0 vehicle   rotated rectangles, 6-20 px long, on roads and in parking spots
    1 building  rectangles and L-shapes, 20-80 px, with a cast shadow
    2 boat      pointed hulls, 12-40 px, on water
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

from .errors import ConfigError

CLASS_NAMES: tuple[str, ...] = ("vehicle", "building", "boat")
NODATA = 0
CELL = 256  # objects live entirely inside one cell, so cells never need each other's objects
_CELL_MARGIN = 4  # keeps shapes of neighbouring cells apart
_OBJ_PAD = 2.0  # minimum gap between objects inside a cell


# ---------------------------------------------------------------------------------------------------------
# deterministic, window-independent noise


def _hash_u32(*parts: np.ndarray | int) -> np.ndarray:
    """Vectorised integer hash (xorshift-multiply), stable across platforms."""
    h = np.uint64(0x9E3779B97F4A7C15)
    out = None
    with np.errstate(over="ignore"):  # wrap-around multiplication is the point of a hash
        for p in parts:
            v = np.asarray(p).astype(np.int64).astype(np.uint64)
            if out is None:
                out = v * h
            else:
                out = out ^ (v + np.uint64(0x7F4A7C15) + (out << np.uint64(6)) + (out >> np.uint64(2)))
            out = out ^ (out >> np.uint64(33))
            out = out * np.uint64(0xFF51AFD7ED558CCD)
            out = out ^ (out >> np.uint64(33))
    return (out & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _unit(*parts) -> np.ndarray:
    return _hash_u32(*parts).astype(np.float32) / np.float32(2**32)


def _lattice_noise(xs: np.ndarray, ys: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1) on the grid xs (w,) x ys (h,): a hashed lattice with spacing `scale`,
    smoothstep-interpolated. Only the few lattice nodes under the window are hashed."""
    gx, gy = np.asarray(xs, np.float64) / scale, np.asarray(ys, np.float64) / scale
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = (gx - ix).astype(np.float32), (gy - iy).astype(np.float32)
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep hides the lattice
    lx, ly = np.arange(ix.min(), ix.max() + 2), np.arange(iy.min(), iy.max() + 2)
    nodes = _unit(seed, lx[None, :], ly[:, None])
    jx, jy = ix - lx[0], iy - ly[0]
    top = nodes[np.ix_(jy, jx)] * (1 - fx) + nodes[np.ix_(jy, jx + 1)] * fx
    bottom = nodes[np.ix_(jy + 1, jx)] * (1 - fx) + nodes[np.ix_(jy + 1, jx + 1)] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def _value_noise(xs: np.ndarray, ys: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth noise at scattered points (used for a handful of footprint samples)."""
    gx, gy = np.asarray(xs, np.float64) / scale, np.asarray(ys, np.float64) / scale
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = (gx - ix).astype(np.float32), (gy - iy).astype(np.float32)
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = _unit(seed, ix, iy) * (1 - fx) + _unit(seed, ix + 1, iy) * fx
    bottom = _unit(seed, ix, iy + 1) * (1 - fx) + _unit(seed, ix + 1, iy + 1) * fx
    return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------------------------------------------------
# scene layout


@dataclass(frozen=True)
class Road:
    px: float  # a point on the centre line
    py: float
    angle: float  # radians
    half_width: float

    def distance(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        nx, ny = -math.sin(self.angle), math.cos(self.angle)
        return np.abs((xs - self.px) * nx + (ys - self.py) * ny)


@dataclass(frozen=True)
class SceneObject:
    class_id: int
    polygon: np.ndarray  # (k, 2) float64 global pixel coordinates (x right, y down), pixel edges at integers
    color: tuple[int, int, int]
    shadow: bool = False

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]


@dataclass(frozen=True)
class SceneSpec:
    width: int
    height: int
    seed: int = 0
    pixel_size: float = 0.3
    crs: str = "EPSG:32633"
    origin: tuple[float, float] = (500_000.0, 5_000_000.0)  # map x, y of the top-left corner
    nodata_margin: int = 0  # pixels of nodata along the left and top edges
    _layout: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ConfigError(f"scene size must be positive, got {self.width}x{self.height}")
        if self.nodata_margin < 0:
            raise ConfigError(f"nodata_margin must be >= 0, got {self.nodata_margin}")
        object.__setattr__(self, "_layout", _make_layout(self))

    @property
    def roads(self) -> list[Road]:
        return self._layout["roads"]

    @property
    def transform(self):
        from rasterio.transform import Affine

        return Affine(self.pixel_size, 0.0, self.origin[0], 0.0, -self.pixel_size, self.origin[1])

    # terrain predicates, vectorised over pixel coordinates ------------------------------------------------
    def water(self, xs: np.ndarray, ys: np.ndarray, wobble: np.ndarray | None = None) -> np.ndarray:
        """True where (xs, ys) is water. `wobble` (lake-shore noise at those points) may be passed in."""
        lay = self._layout
        shape = np.broadcast(xs, ys).shape
        wet = np.zeros(shape, dtype=bool)
        if wobble is None and lay["lakes"]:
            wobble = _value_noise(*np.broadcast_arrays(xs, ys), 90.0, self.seed + 11)
        x_lo, x_hi, y_lo, y_hi = np.min(xs), np.max(xs), np.min(ys), np.max(ys)
        for cx, cy, r in lay["lakes"]:
            reach = r * 1.1
            if cx + reach < x_lo or cx - reach > x_hi or cy + reach < y_lo or cy - reach > y_hi:
                continue  # cheap rejection: this lake cannot touch these points
            rr = r * (1 + 0.15 * (wobble - 0.5))
            wet |= (xs - cx) ** 2 + (ys - cy) ** 2 < rr * rr
        for y0, amp, wavelength, phase, half in lay["rivers"]:
            centre = y0 + amp * np.sin(2 * np.pi * xs / wavelength + phase)
            wet |= np.abs(ys - centre) < half
        return wet

    def road_distance(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        d = np.full(np.broadcast(xs, ys).shape, np.inf, dtype=np.float32)
        for road in self.roads:
            d = np.minimum(d, road.distance(xs, ys) - road.half_width)
        return d

    def in_nodata(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        m = self.nodata_margin
        return (xs < m) | (ys < m)

    # objects -----------------------------------------------------------------------------------------------
    def cell_objects(self, cx: int, cy: int) -> list[SceneObject]:
        return _cell_objects(self, cx, cy)

    def objects_in(self, x0: int, y0: int, x1: int, y1: int) -> Iterator[SceneObject]:
        """Objects whose cell overlaps the pixel box [x0, x1) x [y0, y1)."""
        n_cx, n_cy = math.ceil(self.width / CELL), math.ceil(self.height / CELL)
        for cy in range(max(0, y0 // CELL), min(n_cy, (y1 - 1) // CELL + 1)):
            for cx in range(max(0, x0 // CELL), min(n_cx, (x1 - 1) // CELL + 1)):
                yield from self.cell_objects(cx, cy)

    def all_objects(self) -> Iterator[SceneObject]:
        return self.objects_in(0, 0, self.width, self.height)

    # pixels ------------------------------------------------------------------------------------------------
    def render(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 array (height, width, 3) of the window; pixels outside the scene are nodata."""
        return _render(self, x0, y0, width, height)


def _make_layout(spec: SceneSpec) -> dict:
    rng = np.random.default_rng([spec.seed, 1])
    w, h = spec.width, spec.height
    area_tiles = max(1.0, w * h / 2048**2)
    roads = []
    n_roads = int(rng.integers(2, 4) * math.sqrt(area_tiles)) + 1
    for _ in range(n_roads):
        kind = rng.random()
        angle = 0.0 if kind < 0.35 else (math.pi / 2 if kind < 0.7 else float(rng.uniform(0, math.pi)))
        roads.append(Road(float(rng.uniform(0, w)), float(rng.uniform(0, h)), angle, float(rng.uniform(6, 11))))
    lakes = []
    for _ in range(int(rng.poisson(1.2 * area_tiles)) + 1):
        lakes.append((float(rng.uniform(0, w)), float(rng.uniform(0, h)), float(rng.uniform(120, 420))))
    rivers = []
    if rng.random() < 0.7:
        rivers.append((float(rng.uniform(0.2, 0.8) * h), float(rng.uniform(40, 200)),
                       float(rng.uniform(900, 2500)), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(50, 130))))
    return {"roads": roads, "lakes": lakes, "rivers": rivers}


# ---------------------------------------------------------------------------------------------------------
# object placement


_CAR_COLORS = [(200, 30, 30), (235, 235, 235), (30, 60, 170), (25, 25, 25), (230, 200, 40), (160, 165, 170),
               (20, 120, 60), (240, 120, 20)]
_ROOF_COLORS = [(170, 80, 60), (120, 120, 125), (200, 200, 195), (80, 70, 65), (150, 110, 80), (90, 110, 140)]
_BOAT_COLORS = [(245, 245, 245), (230, 230, 210), (200, 40, 40), (250, 200, 40), (240, 240, 250)]


def _rect(cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    hl, hw = length / 2, width / 2
    local = np.array([[-hl, -hw], [hl, -hw], [hl, hw], [-hl, hw]])
    return local @ np.array([[c, s], [-s, c]]) + (cx, cy)


def _rotate(local: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return local @ np.array([[c, s], [-s, c]]) + (cx, cy)


def _building(rng, cx, cy, angle) -> np.ndarray:
    a, b = rng.uniform(20, 80), rng.uniform(20, 80)
    if rng.random() < 0.35 and min(a, b) > 30:  # L-shape
        ca, cb = a * rng.uniform(0.4, 0.6), b * rng.uniform(0.4, 0.6)
        local = np.array([[0, 0], [a, 0], [a, cb], [ca, cb], [ca, b], [0, b]]) - (a / 2, b / 2)
    else:
        local = np.array([[0, 0], [a, 0], [a, b], [0, b]]) - (a / 2, b / 2)
    return _rotate(local, cx, cy, angle)


def _boat(rng, cx, cy, angle) -> np.ndarray:
    length, width = rng.uniform(12, 40), 0.0
    width = length * rng.uniform(0.25, 0.35)
    hl, hw = length / 2, width / 2
    local = np.array([[-hl, -hw], [hl * 0.55, -hw], [hl, 0], [hl * 0.55, hw], [-hl, hw]])
    return _rotate(local, cx, cy, angle)


def _cell_objects(spec: SceneSpec, cx: int, cy: int) -> list[SceneObject]:
    cache = spec._layout.setdefault("cells", {})
    key = (cx, cy)
    if key in cache:
        return cache[key]
    rng = np.random.default_rng([spec.seed, 2, cx, cy])
    bx0, by0 = cx * CELL + _CELL_MARGIN, cy * CELL + _CELL_MARGIN
    bx1 = min((cx + 1) * CELL, spec.width) - _CELL_MARGIN
    by1 = min((cy + 1) * CELL, spec.height) - _CELL_MARGIN
    placed: list[SceneObject] = []
    shapes: list[Polygon] = []

    def fits(poly: np.ndarray, terrain: str) -> bool:
        if poly[:, 0].min() < bx0 or poly[:, 1].min() < by0 or poly[:, 0].max() > bx1 or poly[:, 1].max() > by1:
            return False
        # sample the footprint: corners, edge midpoints and centre
        pts = np.vstack([poly, (poly + np.roll(poly, -1, axis=0)) / 2, poly.mean(axis=0, keepdims=True)])
        xs, ys = pts[:, 0], pts[:, 1]
        if spec.in_nodata(xs, ys).any():
            return False
        wet = spec.water(xs, ys)
        road = spec.road_distance(xs, ys)
        if terrain == "water" and not wet.all():
            return False
        if terrain == "road" and not (road < -1.0).all():
            return False
        if terrain == "ground" and (wet.any() or (road < 3.0).any()):
            return False
        if terrain == "parking" and (wet.any() or (road < 1.0).any()):
            return False
        shape = Polygon(poly)
        if any(shape.distance(other) < _OBJ_PAD for other in shapes):
            return False
        shapes.append(shape)
        return True

    if bx1 - bx0 > 40 and by1 - by0 > 40:
        # vehicles along roads: orient with the road, in a lane
        for road in spec.roads:
            for _ in range(int(rng.poisson(6.0))):
                t = rng.uniform(-CELL, CELL)
                ccx, ccy = (bx0 + bx1) / 2, (by0 + by1) / 2
                # project the cell centre on the road, then move along it
                d = (ccx - road.px) * math.cos(road.angle) + (ccy - road.py) * math.sin(road.angle)
                lane = rng.choice([-1, 1]) * road.half_width * 0.45
                px = road.px + (d + t) * math.cos(road.angle) - lane * math.sin(road.angle)
                py = road.py + (d + t) * math.sin(road.angle) + lane * math.cos(road.angle)
                length = rng.uniform(9, 20)
                poly = _rect(px, py, length, length * rng.uniform(0.42, 0.55), road.angle + rng.normal(0, 0.03))
                if fits(poly, "road"):
                    placed.append(SceneObject(0, poly, _CAR_COLORS[rng.integers(len(_CAR_COLORS))]))
        # buildings on dry ground, sometimes with a parked vehicle beside
        for _ in range(int(rng.poisson(2.2))):
            angle = rng.choice([0.0, rng.uniform(0, math.pi)]) if rng.random() < 0.5 else spec.roads[0].angle
            poly = _building(rng, rng.uniform(bx0, bx1), rng.uniform(by0, by1), float(angle))
            if fits(poly, "ground"):
                placed.append(SceneObject(1, poly, _ROOF_COLORS[rng.integers(len(_ROOF_COLORS))], shadow=True))
        for _ in range(int(rng.poisson(2.0))):
            length = rng.uniform(6, 18)
            poly = _rect(rng.uniform(bx0, bx1), rng.uniform(by0, by1), length,
                         max(3.0, length * rng.uniform(0.42, 0.55)), rng.uniform(0, math.pi))
            if fits(poly, "parking"):
                placed.append(SceneObject(0, poly, _CAR_COLORS[rng.integers(len(_CAR_COLORS))]))
        # boats on water
        if spec.water(np.array([(bx0 + bx1) / 2]), np.array([(by0 + by1) / 2]))[0] or rng.random() < 0.5:
            for _ in range(int(rng.poisson(8.0))):
                poly = _boat(rng, rng.uniform(bx0, bx1), rng.uniform(by0, by1), rng.uniform(0, 2 * math.pi))
                if fits(poly, "water"):
                    placed.append(SceneObject(2, poly, _BOAT_COLORS[rng.integers(len(_BOAT_COLORS))]))
    if len(cache) > 4096:  # bound memory on gigapixel scenes; cells are cheap to recompute
        cache.clear()
    cache[key] = placed
    return placed


# ---------------------------------------------------------------------------------------------------------
# rendering


_FIELD = 520  # nominal field size in pixels
_FIELD_COLORS = np.array([[96, 128, 60], [120, 140, 70], [150, 130, 90], [110, 100, 70], [80, 110, 55],
                          [170, 160, 110], [130, 150, 90]], dtype=np.float32)


_GRAIN = 512
_SHIFT = 4  # sub-pixel bits for OpenCV drawing


def _paint(img: np.ndarray, x0: int, y0: int, poly: np.ndarray, color, line: bool = False) -> None:
    """Blend an anti-aliased polygon (or a 2-point line) given in global pixels into the window at (x0, y0).

    Coverage is drawn on a canvas fixed to the shape's own global bounding box, never clipped by the window,
    so every window (and every 512-px block of a written scene) gets exactly the same pixels."""
    gx0, gy0 = int(np.floor(poly[:, 0].min())) - 2, int(np.floor(poly[:, 1].min())) - 2
    gx1, gy1 = int(np.ceil(poly[:, 0].max())) + 2, int(np.ceil(poly[:, 1].max())) + 2
    h, w = img.shape[:2]
    ox0, oy0, ox1, oy1 = max(gx0, x0), max(gy0, y0), min(gx1, x0 + w), min(gy1, y0 + h)
    if ox1 <= ox0 or oy1 <= oy0:
        return
    canvas = np.zeros((gy1 - gy0, gx1 - gx0), np.uint8)
    pts = np.round((poly - (gx0, gy0) - 0.5) * (1 << _SHIFT)).astype(np.int32)
    if line:
        cv2.line(canvas, tuple(pts[0]), tuple(pts[1]), 255, 1, lineType=cv2.LINE_AA, shift=_SHIFT)
    else:
        cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_AA, shift=_SHIFT)
    alpha = canvas[oy0 - gy0:oy1 - gy0, ox0 - gx0:ox1 - gx0, None].astype(np.float32) / 255.0
    region = img[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
    region[:] = np.rint(alpha * np.asarray(color, np.float32) + (1.0 - alpha) * region)


@lru_cache(maxsize=8)
def _grain_tile(seed: int) -> np.ndarray:
    return (np.random.default_rng([seed, 17]).random((_GRAIN, _GRAIN), dtype=np.float32) - 0.5)


def _render(spec: SceneSpec, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    # 1-D pixel-centre coordinates; per-pixel arrays only where a quantity really varies in 2-D
    x1d = np.arange(x0, x0 + width, dtype=np.float32) + 0.5
    y1d = np.arange(y0, y0 + height, dtype=np.float32) + 0.5
    xs, ys = x1d[None, :], y1d[:, None]
    seed = spec.seed
    # fields: a warped grid of parcels, each with its own crop colour and row direction
    warp = (_lattice_noise(x1d, y1d, 700.0, seed + 3) - 0.5) * 160
    fx = np.floor((xs + warp) / _FIELD).astype(np.int64)
    fy = np.floor((ys - warp) / _FIELD).astype(np.int64)
    fx0, fy0 = fx.min(), fy.min()
    ux, uy = np.arange(fx0, fx.max() + 1), np.arange(fy0, fy.max() + 1)
    colour_table = (_hash_u32(seed, ux[None, :], uy[:, None]) % len(_FIELD_COLORS)).astype(np.int64)
    dir_table = _unit(seed + 5, ux[None, :], uy[:, None]) * np.float32(np.pi)
    fx -= fx0
    fy -= fy0
    img = _FIELD_COLORS[colour_table[fy, fx]]
    direction = dir_table[fy, fx]
    rows = np.sin((xs * np.cos(direction) + ys * np.sin(direction)) * np.float32(2 * np.pi / 7.0))
    shade = (1 + 0.06 * rows) * (0.85 + 0.3 * _lattice_noise(x1d, y1d, 240.0, seed + 7))
    # per-pixel grain from a fixed random tile indexed by global position, so windows agree
    grain = _grain_tile(seed)[np.ix_(np.arange(y0, y0 + height) % _GRAIN, np.arange(x0, x0 + width) % _GRAIN)]
    img = img * shade[..., None] + (grain * 18)[..., None]
    # water
    wet = spec.water(xs, ys, _lattice_noise(x1d, y1d, 90.0, seed + 11) if spec._layout["lakes"] else None)
    if wet.any():
        ripple = _lattice_noise(x1d, y1d, 25.0, seed + 13)[wet]
        img[wet] = np.array([40, 75, 110], dtype=np.float32) + (ripple * 22)[:, None]
    # roads with a faint centre line
    for road in spec.roads:
        d = road.distance(xs, ys)
        on = d < road.half_width
        if on.any():
            img[on] = np.array([92, 92, 96], dtype=np.float32) + (grain[on] * 10)[:, None]
            img[d < 0.6] = (200, 200, 190)
    img = np.clip(img, 1, 255).astype(np.uint8)
    # objects: shadows first, then bodies; polygons drawn with sub-pixel precision
    # objects: shadows first, then bodies. The reach covers shadows cast across a cell border.
    reach = 8
    objects = list(spec.objects_in(x0 - reach, y0 - reach, x0 + width + reach, y0 + height + reach))
    for obj in objects:
        if obj.shadow:
            _paint(img, x0, y0, obj.polygon + (3.0, 4.0), (35, 38, 30))
    for obj in objects:
        p = obj.polygon
        _paint(img, x0, y0, p, obj.color)
        if obj.class_id == 0:  # windscreen: a dark band across the front third
            front = np.array([p[1] * 0.7 + p[0] * 0.3, p[1] * 0.85 + p[0] * 0.15, p[2] * 0.85 + p[3] * 0.15,
                              p[2] * 0.7 + p[3] * 0.3])
            _paint(img, x0, y0, front, (30, 40, 50))
        elif obj.class_id == 1:  # roof ridge
            ridge = np.array([(p[0] + p[-1]) / 2, (p[1] + p[2]) / 2])
            _paint(img, x0, y0, ridge, tuple(int(c * 0.75) for c in obj.color), line=True)
    # nodata: the margin, and anything outside the scene
    outside = np.broadcast_to(spec.in_nodata(xs, ys) | (xs >= spec.width) | (ys >= spec.height), (height, width))
    if outside.any():
        img[outside] = NODATA
    return img


# ---------------------------------------------------------------------------------------------------------
# writing scenes


def write_scene(spec: SceneSpec, path: str | os.PathLike, truth_path: str | os.PathLike | None = None,
                block: int = 512) -> tuple[Path, Path]:
    """Write a tiled, deflate-compressed, georeferenced GeoTIFF block by block, and its ground truth.

    Ground truth is a GeoJSON FeatureCollection in the raster's CRS (`crs` member, as GDAL writes it), one
    feature per object with `class_id`, `class_name` and `pixel_polygon` (global pixel coordinates).
    Both files are written to temporary names and renamed, so a failure leaves nothing half-written.
    """
    import rasterio
    from rasterio.windows import Window

    path = Path(path)
    truth_path = Path(truth_path) if truth_path else path.with_suffix(".truth.geojson")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    profile = dict(driver="GTiff", width=spec.width, height=spec.height, count=3, dtype="uint8", crs=spec.crs,
                   transform=spec.transform, tiled=True, blockxsize=block, blockysize=block, compress="deflate",
                   predictor=2, nodata=NODATA if spec.nodata_margin else None, photometric="RGB",
                   BIGTIFF="IF_SAFER")
    try:
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(tmp, "w", **profile) as dst:
            for by in range(0, spec.height, block):
                for bx in range(0, spec.width, block):
                    w, h = min(block, spec.width - bx), min(block, spec.height - by)
                    tile = spec.render(bx, by, w, h)
                    dst.write(np.moveaxis(tile, -1, 0), window=Window(bx, by, w, h))
        write_truth(spec, truth_path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path, truth_path


def write_truth(spec: SceneSpec, truth_path: str | os.PathLike) -> Path:
    truth_path = Path(truth_path)
    tmp = truth_path.with_name(truth_path.name + ".part")
    t = spec.transform
    try:
        with open(tmp, "w") as f:
            f.write('{"type":"FeatureCollection","crs":{"type":"name","properties":{"name":"%s"}},"features":[\n'
                    % spec.crs)
            first = True
            for obj in spec.all_objects():
                p = obj.polygon
                mx, my = t.c + p[:, 0] * t.a, t.f + p[:, 1] * t.e
                ring = np.column_stack([mx, my])
                ring = np.vstack([ring, ring[:1]])
                feat = {"type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 4).tolist()]},
                        "properties": {"class_id": obj.class_id, "class_name": obj.class_name,
                                       "pixel_polygon": np.round(p, 4).tolist()}}
                f.write(("" if first else ",\n") + json.dumps(feat, separators=(",", ":")))
                first = False
            f.write("\n]}\n")
        os.replace(tmp, truth_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return truth_path


def read_truth(truth_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(class_ids, pixel polygons as a shapely array) from a ground-truth file."""
    with open(truth_path) as f:
        feats = json.load(f)["features"]
    classes = np.array([ft["properties"]["class_id"] for ft in feats], dtype=np.int64)
    polys = np.array([Polygon(ft["properties"]["pixel_polygon"]) for ft in feats], dtype=object)
    return classes, polys


# ---------------------------------------------------------------------------------------------------------
# training patches


@dataclass(frozen=True)
class PatchLabel:
    class_id: int
    polygon: np.ndarray  # patch-local pixel coordinates of the visible part
    visible: float  # fraction of the object inside the patch


def patch_labels(spec: SceneSpec, x0: int, y0: int, size: int) -> list[PatchLabel]:
    """Objects touching the patch, clipped to it, in patch-local pixel coordinates."""
    box = shapely.box(x0, y0, x0 + size, y0 + size)
    labels = []
    for obj in spec.objects_in(x0, y0, x0 + size, y0 + size):
        shape = Polygon(obj.polygon)
        if not shape.intersects(box):
            continue
        clipped = shape.intersection(box)
        if clipped.is_empty or clipped.area <= 0:
            continue
        if clipped.geom_type != "Polygon":
            clipped = max(getattr(clipped, "geoms", [clipped]), key=lambda g: g.area)
            if clipped.geom_type != "Polygon":
                continue
        ring = np.asarray(clipped.exterior.coords)[:-1] - (x0, y0)
        labels.append(PatchLabel(obj.class_id, ring, clipped.area / shape.area))
    return labels


def _yolo_lines(labels: list[PatchLabel], size: int, task: str, min_visible: float) -> list[str]:
    lines = []
    for lab in labels:
        if lab.visible < min_visible:
            continue
        poly = np.clip(lab.polygon, 0, size) / size
        if task == "detect":
            (x0, y0), (x1, y1) = poly.min(axis=0), poly.max(axis=0)
            vals = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
        elif task == "obb":
            rect = cv2.minAreaRect(lab.polygon.astype(np.float32))
            vals = (np.clip(cv2.boxPoints(rect), 0, size) / size).ravel().tolist()
        else:  # segment
            vals = poly.ravel().tolist()
        lines.append(f"{lab.class_id} " + " ".join(f"{v:.6f}" for v in vals))
    return lines


def write_training_set(root: str | os.PathLike, seeds: list[int], patches_per_scene: int, size: int = 320,
                       scene_size: int = 2048, val_seeds: list[int] | None = None,
                       min_visible: float = 0.3) -> dict[str, Path]:
    """Write Ultralytics datasets for detect, segment and obb from the same patches.

    Returns {task: path to data.yaml}. Images are written once and hard-linked into each task's tree,
    since Ultralytics finds labels by swapping `images` for `labels` in the image path.
    """
    root = Path(root)
    tasks = ("detect", "segment", "obb")
    splits = {"train": seeds, "val": val_seeds or []}
    for split, split_seeds in splits.items():
        for seed in split_seeds:
            rng = np.random.default_rng([seed, 99])
            # a third of the scenes have a nodata margin, so models learn that black borders are not objects
            margin = int(rng.integers(60, 300)) if seed % 3 == 0 else 0
            spec = SceneSpec(scene_size, scene_size, seed=seed, nodata_margin=margin)
            for k in range(patches_per_scene):
                x0, y0 = (int(v) for v in rng.integers(0, scene_size - size + 1, size=2))
                img = spec.render(x0, y0, size, size)
                labels = patch_labels(spec, x0, y0, size)
                name = f"s{seed}_{k:04d}"
                first_img = None
                for task in tasks:
                    img_dir, lab_dir = root / task / "images" / split, root / task / "labels" / split
                    img_dir.mkdir(parents=True, exist_ok=True)
                    lab_dir.mkdir(parents=True, exist_ok=True)
                    img_path = img_dir / f"{name}.png"
                    if first_img is None:
                        cv2.imwrite(str(img_path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                        first_img = img_path
                    elif not img_path.exists():
                        os.link(first_img, img_path)
                    (lab_dir / f"{name}.txt").write_text("\n".join(_yolo_lines(labels, size, task, min_visible)))
    out = {}
    for task in tasks:
        data = root / task / "data.yaml"
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
        val = "images/val" if val_seeds else "images/train"  # Ultralytics needs a val split to exist
        data.write_text(f"path: {(root / task).resolve()}\ntrain: images/train\nval: {val}\nnames:\n{names}\n")
        out[task] = data
    return out
