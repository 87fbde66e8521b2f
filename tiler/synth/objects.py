"""Scene objects and their placement in fixed 256-px cells (small objects: vehicles, buildings, boats)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import Polygon

CLASS_NAMES: tuple[str, ...] = ("vehicle", "building", "boat")
CELL = 256  # objects live entirely inside one cell, so cells never need each other's objects
_CELL_MARGIN = 4  # keeps shapes of neighbouring cells apart
_OBJ_PAD = 2.0  # minimum gap between objects inside a cell (and between a small and a large object)
LARGE_SIZE = 300.0  # an object at least this many pixels across is "large" (truth property `large`)


@dataclass(frozen=True)
class Paint:
    """One drawing operation of an object's surface detail, in global pixel coordinates.

    `rings` are filled together with the even-odd rule (so inner rings cut holes), or, with `line`,
    drawn as 1-px anti-aliased segments (each ring is then a 2-point segment)."""
    rings: tuple[np.ndarray, ...]
    color: tuple[int, int, int]
    line: bool = False


@dataclass(frozen=True)
class SceneObject:
    class_id: int
    polygon: np.ndarray  # (k, 2) float64 global pixel coordinates (x right, y down), pixel edges at integers
    color: tuple[int, int, int]
    shadow: bool = False
    holes: tuple[np.ndarray, ...] = ()  # interior rings (courtyards), global pixel coordinates
    details: tuple[Paint, ...] = field(default=(), repr=False, compare=False)  # drawn over the body

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]

    @property
    def rings(self) -> list[np.ndarray]:
        """[exterior, *holes]."""
        return [self.polygon, *self.holes]

    @property
    def shape(self) -> Polygon:
        """The footprint as a shapely Polygon, holes included."""
        return Polygon(self.polygon, [h for h in self.holes]) if self.holes else Polygon(self.polygon)

    @property
    def large(self) -> bool:
        return bool(np.ptp(self.polygon, axis=0).max() >= LARGE_SIZE)


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


def _cell_objects(spec, cx: int, cy: int) -> list[SceneObject]:
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
    # large objects (an option) are placed first, on their own coarse grid; small ones keep clear of them
    bigs = spec._large_shapes(bx0, by0, bx1, by1) if spec.large_objects else []

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
        if bigs and any(shape.distance(big) < _OBJ_PAD for big in bigs):
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
