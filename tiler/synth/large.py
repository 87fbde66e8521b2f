"""Large buildings (an option of SceneSpec): 300-900 px flat roofs, rectangles and L/U shapes, many with
courtyards, placed on a coarse grid of 2048-px "large cells" on dry ground away from roads and water.

Each large cell's objects are a pure function of (seed, cell), like the small objects' cells. A large object
lies entirely inside its large cell, so a window only needs the large cells it overlaps. The roof carries a
cheap visible structure (a parapet band along every edge, faint panel seams, HVAC boxes with shadows,
rows of skylights), so that a patch lying entirely on a roof still looks like a building.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely.geometry import Polygon, box

from .objects import Paint, SceneObject, _rect, _rotate

LARGE_CELL = 2048
_EDGE = 16  # kept free along the large cell's edges and the nodata margin
_CLEAR = 12  # kept free of roads and water around the footprint
_GAP = 48  # between two large objects
_WALL = 40  # roof width around a courtyard, and between courtyards
_PARAPET = 5  # width of the edge band
_ROOF_COLORS = [(188, 188, 182), (214, 214, 208), (108, 108, 114), (152, 142, 124), (122, 132, 144),
                (168, 98, 78)]
_SKYLIGHT = (70, 88, 110)


def _ring(coords) -> np.ndarray:
    """A shapely ring's vertices without the closing repeat."""
    return np.asarray(coords, dtype=np.float64)[:-1]


def _footprint(rng, top: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Exterior and courtyards in local coordinates centred on 0, long side along x."""
    a = rng.uniform(300.0, top)
    b = rng.uniform(max(200.0, 0.4 * a), a)
    kind = rng.random()
    if kind < 0.4:  # rectangle
        ext = np.array([[0, 0], [a, 0], [a, b], [0, b]], dtype=np.float64)
        n_holes = int(rng.choice([0, 1, 1, 2, 2, 3]))  # most have courtyards
    elif kind < 0.7:  # L: one corner cut away
        ca, cb = a * rng.uniform(0.35, 0.6), b * rng.uniform(0.35, 0.6)
        ext = np.array([[0, 0], [a, 0], [a, cb], [ca, cb], [ca, b], [0, b]], dtype=np.float64)
        n_holes = int(rng.choice([0, 1, 1, 2]))
    else:  # U: a notch in one long side
        n0, n1 = a * rng.uniform(0.25, 0.4), a * (1 - rng.uniform(0.25, 0.4))
        d = b * rng.uniform(0.35, 0.6)
        ext = np.array([[0, 0], [a, 0], [a, b], [n1, b], [n1, b - d], [n0, b - d], [n0, b], [0, b]],
                       dtype=np.float64)
        n_holes = int(rng.choice([0, 1, 1, 2]))
    body = Polygon(ext)
    core = body.buffer(-_WALL, join_style="mitre")
    holes: list[np.ndarray] = []
    hole_shapes: list[Polygon] = []
    for _ in range(n_holes):
        for _ in range(25):
            w = rng.uniform(50.0, max(60.0, min(220.0, 0.4 * a)))
            h = rng.uniform(50.0, max(60.0, min(220.0, 0.4 * b)))
            hx, hy = rng.uniform(0, a - w), rng.uniform(0, b - h)
            cand = box(hx, hy, hx + w, hy + h)
            if core.contains(cand) and all(cand.distance(o) >= _WALL for o in hole_shapes):
                hole_shapes.append(cand)
                holes.append(np.array([[hx, hy], [hx + w, hy], [hx + w, hy + h], [hx, hy + h]]))
                break
    centre = (a / 2, b / 2)
    return ext - centre, [h - centre for h in holes]


def _clear_ground(spec, shape: Polygon) -> bool:
    """True if the footprint (courtyards included) and a _CLEAR band around it are dry, off the roads and
    outside the nodata margin. Sampled on a 16-px grid inside and every 8 px along the band's edge: roads
    (>= 12 px wide, infinite) and water (>= 100 px across) cannot slip between the samples."""
    zone = Polygon(shape.exterior.coords).buffer(_CLEAR, join_style="mitre")
    x0, y0, x1, y1 = zone.bounds
    gx, gy = np.meshgrid(np.arange(x0, x1 + 16, 16.0), np.arange(y0, y1 + 16, 16.0))
    gx, gy = gx.ravel(), gy.ravel()
    inside = shapely.contains_xy(zone, gx, gy)
    edge = shapely.get_coordinates(shapely.line_interpolate_point(zone.exterior,
                                                                  np.arange(0.0, zone.exterior.length, 8.0)))
    xs = np.concatenate([gx[inside], edge[:, 0]])
    ys = np.concatenate([gy[inside], edge[:, 1]])
    if spec.in_nodata(xs, ys).any() or spec.water(xs, ys).any():
        return False
    return not (spec.road_distance(xs, ys) < 0).any()


def _scale(color, f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(1, round(c * f)))) for c in color)


def _roof_details(rng, shape: Polygon, angle: float, color) -> tuple[Paint, ...]:
    """Parapet band, panel seams along the long axis, HVAC boxes with their shadows, skylight rows."""
    light = sum(color) > 420
    inset = shape.buffer(-_PARAPET, join_style="mitre")
    parts = [g for g in getattr(inset, "geoms", [inset]) if g.geom_type == "Polygon"]
    band = [_ring(shape.exterior.coords), *(_ring(r.coords) for r in shape.interiors)]
    for p in parts:  # even-odd: the outer rings minus the inset rings is the band along every edge
        band += [_ring(p.exterior.coords), *(_ring(r.coords) for r in p.interiors)]
    details = [Paint(tuple(band), _scale(color, 0.8 if light else 1.22))]
    # faint seams: parallel lines along the long axis, clipped to the roof inside the parapet
    u = np.array([math.cos(angle), math.sin(angle)])
    n = np.array([-u[1], u[0]])
    c = np.asarray(shape.centroid.coords[0])
    x0, y0, x1, y1 = shape.bounds
    reach = math.hypot(x1 - x0, y1 - y0)
    spacing = rng.uniform(28.0, 60.0)
    inner = inset.buffer(-6, join_style="mitre")
    lines = []
    for t in np.arange(-reach / 2 + rng.uniform(0, spacing), reach / 2, spacing):
        seg = shapely.LineString([c + t * n - reach * u, c + t * n + reach * u]).intersection(inner)
        for g in getattr(seg, "geoms", [seg]):
            if g.geom_type == "LineString" and g.length > 4:
                xy = np.asarray(g.coords)
                lines.append(np.array([xy[0], xy[-1]]))
    if lines:
        details.append(Paint(tuple(lines), _scale(color, 0.9 if light else 1.1), line=True))
    # HVAC boxes (light grey, with a small shadow) and skylight rows, kept inside the parapet
    room = inset.buffer(-8, join_style="mitre")
    boxes: list[np.ndarray] = []
    box_shapes: list[Polygon] = []
    n_box = int(rng.integers(2, 9))
    for _ in range(4 * n_box):
        if len(boxes) >= n_box:
            break
        p = _rect(rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(8, 26), rng.uniform(8, 20), angle)
        s = Polygon(p)
        if room.contains(s) and all(s.distance(o) > 4 for o in box_shapes):
            boxes.append(p)
            box_shapes.append(s)
    skylights: list[np.ndarray] = []
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 4))):
            start = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
            for i in range(int(rng.integers(4, 12))):
                q = start + i * 22.0 * u
                p = _rect(q[0], q[1], 8.0, 14.0, angle)
                s = Polygon(p)
                if room.contains(s) and all(s.distance(o) > 3 for o in box_shapes):
                    skylights.append(p)
                    box_shapes.append(s)
    if boxes:
        grey = int(rng.integers(185, 226))
        details.append(Paint(tuple(b + (2.0, 3.0) for b in boxes), _scale(color, 0.62)))
        details.append(Paint(tuple(boxes), (grey, grey, min(255, grey + 4))))
    if skylights:
        details.append(Paint(tuple(skylights), _SKYLIGHT))
    return tuple(details)


def _large_cell(spec, lcx: int, lcy: int) -> tuple[list[SceneObject], list[Polygon], list[tuple]]:
    """(objects, their shapely footprints, their bounding boxes with the shadow) of one large cell."""
    cache = spec._layout.setdefault("large", {})
    key = (lcx, lcy)
    if key in cache:
        return cache[key]
    rng = np.random.default_rng([spec.seed, 3, lcx, lcy])
    m = spec.nodata_margin
    bx0, by0 = max(lcx * LARGE_CELL, m) + _EDGE, max(lcy * LARGE_CELL, m) + _EDGE
    bx1 = min((lcx + 1) * LARGE_CELL, spec.width) - _EDGE
    by1 = min((lcy + 1) * LARGE_CELL, spec.height) - _EDGE
    objects: list[SceneObject] = []
    shapes: list[Polygon] = []
    want = int(rng.integers(1, 3))
    for attempt in range(64):
        if len(objects) >= want or bx1 - bx0 < 200 or by1 - by0 < 200:
            break
        ext, holes = _footprint(rng, max(320.0, 900.0 - 9.0 * attempt))
        r = rng.random()
        angle = 0.0 if r < 0.4 else (spec.roads[0].angle if r < 0.7 else float(rng.uniform(0, math.pi)))
        cx, cy = rng.uniform(bx0, bx1), rng.uniform(by0, by1)
        poly = _rotate(ext, cx, cy, angle)
        if poly[:, 0].min() < bx0 or poly[:, 1].min() < by0 or poly[:, 0].max() > bx1 or poly[:, 1].max() > by1:
            continue
        holes = [_rotate(h, cx, cy, angle) for h in holes]
        shape = Polygon(poly, holes)
        if any(shape.distance(o) < _GAP for o in shapes) or not _clear_ground(spec, shape):
            continue
        color = _ROOF_COLORS[int(rng.integers(len(_ROOF_COLORS)))]
        objects.append(SceneObject(1, poly, color, shadow=True, holes=tuple(holes),
                                   details=_roof_details(rng, shape, angle, color)))
        shapes.append(shape)
    boxes = [(o.polygon[:, 0].min(), o.polygon[:, 1].min(), o.polygon[:, 0].max() + 3.0,
              o.polygon[:, 1].max() + 4.0) for o in objects]  # the shadow is cast by (+3, +4)
    cache[key] = (objects, shapes, boxes)
    return cache[key]


def _large_in(spec, x0: float, y0: float, x1: float, y1: float, shapes: bool = False):
    """Large objects (or their shapely footprints) whose bounding box, shadow included, overlaps the box."""
    n_lx, n_ly = math.ceil(spec.width / LARGE_CELL), math.ceil(spec.height / LARGE_CELL)
    out = []
    for lcy in range(max(0, int(y0 // LARGE_CELL)), min(n_ly, int((y1 - 1) // LARGE_CELL) + 1)):
        for lcx in range(max(0, int(x0 // LARGE_CELL)), min(n_lx, int((x1 - 1) // LARGE_CELL) + 1)):
            for obj, shape, (a, b, c, d) in zip(*_large_cell(spec, lcx, lcy)):
                if a < x1 and c > x0 and b < y1 and d > y0:
                    out.append(shape if shapes else obj)
    return out
