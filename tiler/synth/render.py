"""Rendering a window of a scene: terrain, water, roads, then objects, all from global coordinates."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .noise import _hash_u32, _lattice_noise, _unit

NODATA = 0

_FIELD = 520  # nominal field size in pixels
_FIELD_COLORS = np.array([[96, 128, 60], [120, 140, 70], [150, 130, 90], [110, 100, 70], [80, 110, 55],
                          [170, 160, 110], [130, 150, 90]], dtype=np.float32)


_GRAIN = 512
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_SHADOW = (35, 38, 30)
_BIG = 256  # shapes wider or taller than this (padded) are drawn tile by tile
_TILE = 256  # global tiles for big shapes
_TILE_PAD = 8  # each tile's canvas reaches this far beyond the tile


def _blend(img: np.ndarray, x0: int, y0: int, rings: list[np.ndarray], color, line: bool,
           canvas_box: tuple[int, int, int, int], out_box: tuple[int, int, int, int]) -> None:
    """Draw `rings` on a canvas covering `canvas_box` (global pixels) and blend its `out_box` part into the
    window at (x0, y0)."""
    cx0, cy0, cx1, cy1 = canvas_box
    ox0, oy0, ox1, oy1 = out_box
    canvas = np.zeros((cy1 - cy0, cx1 - cx0), np.uint8)
    pts = [np.round((r - (cx0, cy0) - 0.5) * (1 << _SHIFT)).astype(np.int32) for r in rings]
    if line:
        for p in pts:
            cv2.line(canvas, tuple(p[0]), tuple(p[1]), 255, 1, lineType=cv2.LINE_AA, shift=_SHIFT)
    else:
        cv2.fillPoly(canvas, pts, 255, lineType=cv2.LINE_AA, shift=_SHIFT)
    alpha = canvas[oy0 - cy0:oy1 - cy0, ox0 - cx0:ox1 - cx0, None].astype(np.float32) / 255.0
    region = img[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
    region[:] = np.rint(alpha * np.asarray(color, np.float32) + (1.0 - alpha) * region)


def _paint(img: np.ndarray, x0: int, y0: int, poly, color, line: bool = False) -> None:
    """Blend an anti-aliased polygon (or a 2-point line) given in global pixels into the window at (x0, y0).

    `poly` is one (k, 2) ring, or a list of rings filled together with the even-odd rule (holes), or with
    `line` a list of 2-point segments. Coverage is drawn on a canvas fixed to the shape's own global bounding
    box, never clipped by the window, so every window (and every 512-px block of a written scene) gets
    exactly the same pixels. A big shape (large buildings) is drawn on canvases fixed to global 256-px tiles
    instead, only those the window overlaps: just as window-independent, and never larger than a tile."""
    if isinstance(poly, np.ndarray):
        rings, xy = [poly], poly
    else:
        rings = list(poly)
        xy = np.vstack(rings)
    gx0, gy0 = int(np.floor(xy[:, 0].min())) - 2, int(np.floor(xy[:, 1].min())) - 2
    gx1, gy1 = int(np.ceil(xy[:, 0].max())) + 2, int(np.ceil(xy[:, 1].max())) + 2
    h, w = img.shape[:2]
    ox0, oy0, ox1, oy1 = max(gx0, x0), max(gy0, y0), min(gx1, x0 + w), min(gy1, y0 + h)
    if ox1 <= ox0 or oy1 <= oy0:
        return
    if gx1 - gx0 <= _BIG and gy1 - gy0 <= _BIG:
        _blend(img, x0, y0, rings, color, line, (gx0, gy0, gx1, gy1), (ox0, oy0, ox1, oy1))
        return
    t, pad = _TILE, _TILE_PAD
    for ty in range(oy0 // t, (oy1 - 1) // t + 1):
        for tx in range(ox0 // t, (ox1 - 1) // t + 1):
            canvas_box = (max(gx0, tx * t - pad), max(gy0, ty * t - pad),
                          min(gx1, (tx + 1) * t + pad), min(gy1, (ty + 1) * t + pad))
            out_box = (max(ox0, tx * t), max(oy0, ty * t), min(ox1, (tx + 1) * t), min(oy1, (ty + 1) * t))
            _blend(img, x0, y0, rings, color, line, canvas_box, out_box)


@lru_cache(maxsize=8)
def _grain_tile(seed: int) -> np.ndarray:
    return (np.random.default_rng([seed, 17]).random((_GRAIN, _GRAIN), dtype=np.float32) - 0.5)


def _render(spec, x0: int, y0: int, width: int, height: int) -> np.ndarray:
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
    # objects: shadows first, then bodies; polygons drawn with sub-pixel precision.
    # The reach covers shadows cast across a cell border.
    reach = 8
    objects = list(spec.objects_in(x0 - reach, y0 - reach, x0 + width + reach, y0 + height + reach))
    for obj in objects:
        if obj.shadow:
            if obj.holes:
                _paint(img, x0, y0, [r + (3.0, 4.0) for r in obj.rings], _SHADOW)
            else:
                _paint(img, x0, y0, obj.polygon + (3.0, 4.0), _SHADOW)
    for obj in objects:
        p = obj.polygon
        _paint(img, x0, y0, obj.rings if obj.holes else p, obj.color)
        if obj.details:  # large roofs: parapet, seams, HVAC boxes, skylights
            for d in obj.details:
                _paint(img, x0, y0, list(d.rings), d.color, line=d.line)
        elif obj.class_id == 0:  # windscreen: a dark band across the front third
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
