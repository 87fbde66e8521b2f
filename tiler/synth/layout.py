"""Scene layout: the SceneSpec, its roads, lakes and rivers, and the terrain predicates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import ConfigError
from .large import _large_in
from .noise import _value_noise
from .objects import CELL, _OBJ_PAD, SceneObject, _cell_objects
from .render import _render


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
class SceneSpec:
    width: int
    height: int
    seed: int = 0
    pixel_size: float = 0.3
    crs: str = "EPSG:32633"
    origin: tuple[float, float] = (500_000.0, 5_000_000.0)  # map x, y of the top-left corner
    nodata_margin: int = 0  # pixels of nodata along the left and top edges
    large_objects: bool = False  # also large buildings (300-900 px, many with courtyards) on 2048-px cells
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
        """The small objects of one 256-px cell."""
        return _cell_objects(self, cx, cy)

    def large_in(self, x0: float, y0: float, x1: float, y1: float) -> list[SceneObject]:
        """Large objects whose bounding box (shadow included) overlaps [x0, x1) x [y0, y1); [] unless
        `large_objects`."""
        return _large_in(self, x0, y0, x1, y1) if self.large_objects else []

    def _large_shapes(self, x0: float, y0: float, x1: float, y1: float) -> list:
        """Shapely footprints of the large objects that a small object inside the box could come near."""
        return _large_in(self, x0 - _OBJ_PAD, y0 - _OBJ_PAD, x1 + _OBJ_PAD, y1 + _OBJ_PAD, shapes=True)

    def objects_in(self, x0: int, y0: int, x1: int, y1: int) -> Iterator[SceneObject]:
        """Large objects overlapping the pixel box [x0, x1) x [y0, y1) (if any), then the small objects
        whose cell overlaps it."""
        if self.large_objects:
            yield from _large_in(self, x0, y0, x1, y1)
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
