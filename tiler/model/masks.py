"""Instance masks from a YOLO segmentation head: per-object bitmaps at full resolution and exact outlines.

A YOLO-seg model predicts, per object, coefficients for a set of low-resolution prototype masks (1/4 of the
model input). Ultralytics upsamples every object's mask to the whole input image and traces pixel *centres*
with cv2.findContours, joining the contours of a mask into one ring: outlines lose half a pixel all round
and can self-intersect. Here, per object and only inside its own box:

- the mask logits are sampled at the centre of every patch pixel of the box (plus a 2 px margin) by the same
  bilinear rule as Ultralytics' `F.interpolate(..., mode="bilinear")` upsampling, so memory is O(object);
- the bitmap is `logit > 0` on the pixels whose index lies in the box (Ultralytics' own crop rule);
- the outline is the 0 iso-line of the logits (probability 0.5) at sub-pixel precision, traced by contourpy's
  filled marching squares (exteriors with their holes, every part of the mask), then cut exactly by the
  box, simplified, and checked valid.

Pure numpy, contourpy and shapely: no torch, no Ultralytics.
"""

from __future__ import annotations

from dataclasses import dataclass

import contourpy
import numpy as np
import shapely

from ..geometry import polygonal_parts

def training_dilation(mask_ratio: int | None) -> float:
    """How much too wide (in model-input pixels, all round) an Ultralytics-trained model's masks are.

    Ultralytics rasterises each training polygon with cv2.fillPoly on vertices truncated to whole pixels,
    boundary included (ultralytics.data.utils.polygon2mask): masks wider than the objects. With mask_ratio > 1
    (default 4) that mask is then shrunk by cv2.resize, whose bilinear sample between two pixels rounds a
    half-covered pixel up: about another half input pixel. Models learn the masks they are shown, so their
    0.5 iso-lines lie outside the objects; outlines are moved inward by as much. Measured on the project's
    models on the held-out validation scenes (bench/README.md "Segmentation outlines", models/README.md):
    best median IoU at 1.0 px for a mask_ratio-2 model (0.75 and 1.25 worse), at 0.75 px for a mask_ratio-1
    model (0.5 and 1.0 worse; 0.75 px, not the half pixel fillPoly alone would suggest)."""
    return 0.75 if mask_ratio == 1 else 1.0


MARGIN = 2  # pixels sampled beyond the box, so the iso-line crossing the box edge is found, then cut exactly
_CLOSED = -100.0  # logit written on the outermost sampled ring so every contour closes


@dataclass(frozen=True)
class Letterbox:
    """How patch pixels map into the model input: input = patch * gain + pad (as Ultralytics' scale_boxes)."""

    gain: float
    pad_x: float
    pad_y: float
    input_w: int
    input_h: int

    @classmethod
    def between(cls, patch_hw: tuple[int, int], input_hw: tuple[int, int]) -> "Letterbox":
        ph, pw = patch_hw
        ih, iw = input_hw
        gain = min(ih / ph, iw / pw)
        # Ultralytics' own rounding of the letterbox border (ops.scale_boxes)
        return cls(gain, round((iw - pw * gain) / 2 - 0.1), round((ih - ph * gain) / 2 - 0.1), iw, ih)


def _bilinear_weights(pos: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """(len(pos), k) interpolation matrix over prototype rows/columns lo..lo+k-1, and lo.

    PyTorch's align_corners=False rule: negative source positions clamp to 0, the upper neighbour to the edge."""
    pos = np.maximum(pos, 0.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), size - 1)
    frac = pos - i0
    i1 = np.minimum(i0 + 1, size - 1)
    lo, hi = int(i0.min()), int(i1.max())
    w = np.zeros((len(pos), hi - lo + 1), dtype=np.float32)
    rows = np.arange(len(pos))
    np.add.at(w, (rows, i0 - lo), (1.0 - frac).astype(np.float32))
    np.add.at(w, (rows, i1 - lo), frac.astype(np.float32))
    return w, lo


def mask_logits(protos: np.ndarray, coef: np.ndarray, xs: np.ndarray, ys: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Mask logits of one object at the centres of patch pixels xs (columns) and ys (rows): (len(ys), len(xs))."""
    c, mh, mw = protos.shape
    u = ((xs + 0.5) * lb.gain + lb.pad_x) * (mw / lb.input_w) - 0.5
    v = ((ys + 0.5) * lb.gain + lb.pad_y) * (mh / lb.input_h) - 0.5
    wx, cx = _bilinear_weights(u, mw)
    wy, cy = _bilinear_weights(v, mh)
    sub = protos[:, cy:cy + wy.shape[1], cx:cx + wx.shape[1]]
    logits = coef.astype(np.float32) @ sub.reshape(c, -1)
    return wy @ logits.reshape(wy.shape[1], wx.shape[1]) @ wx.T


def _outline(logits: np.ndarray, x0: int, y0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Filled 0-level contours of `logits` sampled at pixel centres with its top-left pixel at (x0, y0):
    (points with closed rings, ring offsets, polygon offsets into rings)."""
    z = logits.astype(np.float64)
    z[0, :] = z[-1, :] = z[:, 0] = z[:, -1] = _CLOSED
    xs = x0 + np.arange(z.shape[1]) + 0.5
    ys = y0 + np.arange(z.shape[0]) + 0.5
    gen = contourpy.contour_generator(xs, ys, z, name="serial",
                                      fill_type=contourpy.FillType.ChunkCombinedOffsetOffset)
    points, offsets, outer = gen.filled(0.0, np.inf)
    if points[0] is None:
        return np.zeros((0, 2)), np.zeros(1, np.int64), np.zeros(1, np.int64)
    return points[0], offsets[0].astype(np.int64), outer[0].astype(np.int64)


@dataclass
class InstanceMasks:
    """Per-object results for one patch, aligned with the boxes passed in; `keep` marks non-empty masks."""

    keep: np.ndarray  # (n,) bool
    crops: list[np.ndarray]  # bitmaps of the kept objects
    origins: np.ndarray  # (n_kept, 2) int64 top-left pixel of each crop
    outlines: np.ndarray  # (n_kept,) shapely Polygon / MultiPolygon in patch pixels


def instance_masks(protos: np.ndarray, coefs: np.ndarray, boxes: np.ndarray, patch_hw: tuple[int, int],
                   lb: Letterbox, simplify: float = 0.0, largest_part: bool = False,
                   inset: float = 0.0) -> InstanceMasks:
    """Bitmaps and outlines for objects with mask coefficients `coefs` (n, c) and boxes (n, 4) x0 y0 x1 y1 in
    patch pixels, from one image's prototypes (c, mh, mw). `inset` moves outlines inward by that many model-input
    pixels (`training_dilation` undoes Ultralytics' training bias); bitmaps stay as Ultralytics makes them."""
    ph, pw = patch_hw
    n = len(boxes)
    keep = np.zeros(n, dtype=bool)
    crops, origins = [], []
    ring_points, ring_sizes, ring_poly, poly_obj = [], [], [], []
    n_rings = n_polys = 0
    for k in range(n):
        bx0, by0, bx1, by1 = (float(v) for v in boxes[k])
        # Ultralytics' crop rule: pixel index i is in the box when x0 <= i < x1
        cx0, cy0 = max(0, int(np.ceil(bx0))), max(0, int(np.ceil(by0)))
        cx1, cy1 = min(pw, int(np.ceil(bx1))), min(ph, int(np.ceil(by1)))
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        rx0, ry0 = int(np.floor(bx0)) - MARGIN, int(np.floor(by0)) - MARGIN
        rx1, ry1 = int(np.ceil(bx1)) + MARGIN, int(np.ceil(by1)) + MARGIN
        logits = mask_logits(protos, coefs[k], np.arange(rx0, rx1, dtype=np.float64),
                             np.arange(ry0, ry1, dtype=np.float64), lb)
        bitmap = logits[cy0 - ry0:cy1 - ry0, cx0 - rx0:cx1 - rx0] > 0
        if not bitmap.any():  # as Ultralytics: an object whose mask is empty inside its box is dropped
            continue
        points, offs, outer = _outline(logits, rx0, ry0)
        if len(outer) < 2:
            continue
        keep[k] = True
        crops.append(bitmap)
        origins.append((cx0, cy0))
        sizes = np.diff(offs) - 1  # rings come closed; drop the closing vertex
        ring_points.append(np.delete(points, offs[1:] - 1, axis=0))
        ring_sizes.append(sizes)
        ring_poly.append(n_polys + np.repeat(np.arange(len(outer) - 1), np.diff(outer)))
        poly_obj.append(np.full(len(outer) - 1, len(crops) - 1))
        n_rings += len(sizes)
        n_polys += len(outer) - 1
    if not crops:
        return InstanceMasks(keep, [], np.zeros((0, 2), np.int64), np.empty(0, dtype=object))
    sizes = np.concatenate(ring_sizes)
    rings = shapely.linearrings(np.concatenate(ring_points), indices=np.repeat(np.arange(n_rings), sizes))
    polys = shapely.polygons(rings, indices=np.concatenate(ring_poly))
    geoms = shapely.multipolygons(polys, indices=np.concatenate(poly_obj))
    if inset > 0:
        inner = shapely.buffer(geoms, -inset / lb.gain, join_style="mitre")
        geoms = np.where(shapely.is_empty(inner), geoms, inner)  # a sliver thinner than the inset stays as traced
    geoms = shapely.intersection(geoms, shapely.box(*boxes[keep].T))
    geoms = clean_outlines(geoms, simplify, largest_part)
    return InstanceMasks(keep, crops, np.array(origins, dtype=np.int64), geoms)


def largest_parts(geoms: np.ndarray) -> np.ndarray:
    """Each geometry's largest polygon."""
    parts, owner = shapely.get_parts(geoms, return_index=True)
    order = np.lexsort((-shapely.area(parts), owner))
    first = np.ones(len(order), dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    out = geoms.copy()
    out[owner[order][first]] = parts[order][first]
    return out


def clean_outlines(geoms: np.ndarray, simplify: float = 0.0, largest_part: bool = False) -> np.ndarray:
    """Valid, non-empty (or empty where nothing polygonal is left), optionally simplified and single-part.

    A filled marching-squares outline is valid by construction except where two parts of a mask meet at a
    single saddle point; those few are repaired with make_valid, keeping only polygonal parts (never a line
    or a GeometryCollection). Simplification keeps topology, and falls back to the unsimplified outline
    in the rare case where it would still break validity."""
    geoms = polygonal_parts(geoms)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms[bad] = polygonal_parts(shapely.make_valid(geoms[bad]))
    if simplify > 0:
        simple = shapely.simplify(geoms, simplify, preserve_topology=True)
        ok = shapely.is_valid(simple) & ~shapely.is_empty(simple)
        geoms = np.where(ok, polygonal_parts(simple), geoms)
    if largest_part:
        geoms = largest_parts(geoms)
    return geoms
