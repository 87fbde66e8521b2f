"""Columnar detections: class, score and a geometry per object, optional per-object masks, and the
patch -> global transform.

Geometries are stored ragged (all vertices in one float64 array with offsets), which is cheap to pickle
between processes, to translate (one vectorised add), and to turn into shapely geometries in one call.
Coordinates are float pixels (x right, y down, pixel edges at integers) and are never truncated.

Most detections are one simple ring (a box, a rotated box). Segmentation outlines may have holes and
several parts; for those `rings` says how each detection's vertices split into rings (see `Rings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely


def ragged_take(offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element indices of the chosen ragged rows and the new offsets, built without a Python loop."""
    idx = np.asarray(idx, dtype=np.int64)
    counts = np.diff(offsets)[idx]
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    elements = np.arange(new_offsets[-1], dtype=np.int64) - np.repeat(new_offsets[:-1] - offsets[:-1][idx], counts)
    return elements, new_offsets


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


@dataclass
class Rings:
    """How each detection's vertices split into rings: detection k owns rings offsets[k]:offsets[k+1], ring r
    has sizes[r] vertices (consecutive in `Detections.coords`, not closed), and `shell[r]` says whether it
    starts a polygon (an exterior) or is a hole of the exterior before it. A detection with several
    shells is a MultiPolygon."""

    offsets: np.ndarray  # (n + 1,) int64
    sizes: np.ndarray  # (R,) int64
    shell: np.ndarray  # (R,) bool

    @classmethod
    def simple(cls, counts: np.ndarray) -> "Rings":
        """One exterior per detection."""
        return cls(np.arange(len(counts) + 1, dtype=np.int64), np.asarray(counts, np.int64),
                   np.ones(len(counts), dtype=bool))

    @property
    def vertex_offsets(self) -> np.ndarray:
        """(R + 1,) where each ring starts in coords."""
        return _offsets(self.sizes)

    def take(self, idx: np.ndarray) -> "Rings":
        r, offsets = ragged_take(self.offsets, idx)
        return Rings(offsets, self.sizes[r], self.shell[r])

    @classmethod
    def concat(cls, parts: list["Rings"]) -> "Rings":
        return cls(_offsets(np.concatenate([np.diff(p.offsets) for p in parts])),
                   np.concatenate([p.sizes for p in parts]), np.concatenate([p.shell for p in parts]))


@dataclass
class Masks:
    """Per-object bitmaps at full raster resolution, each only inside its own box: O(object) memory.

    Object k's mask is data[offsets[k]:offsets[k+1]] reshaped to (h, w) = boxes[k, 3], boxes[k, 2], with its
    top-left pixel at (boxes[k, 0], boxes[k, 1]) (patch pixels before `to_global`, raster pixels after)."""

    data: np.ndarray  # (total,) bool
    offsets: np.ndarray  # (n + 1,) int64
    boxes: np.ndarray  # (n, 4) int64: x0, y0, width, height

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def from_crops(cls, crops: list[np.ndarray], origins: np.ndarray) -> "Masks":
        sizes = np.array([c.size for c in crops], dtype=np.int64)
        data = np.concatenate([c.ravel() for c in crops]).astype(bool) if crops else np.zeros(0, bool)
        shapes = np.array([c.shape for c in crops], dtype=np.int64).reshape(-1, 2)
        boxes = np.column_stack([np.asarray(origins, np.int64).reshape(-1, 2), shapes[:, 1], shapes[:, 0]])
        return cls(data, _offsets(sizes), boxes)

    def crop(self, k: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(mask (h, w) bool, (x0, y0) of its top-left pixel)."""
        x0, y0, w, h = (int(v) for v in self.boxes[k])
        return self.data[self.offsets[k]:self.offsets[k + 1]].reshape(h, w), (x0, y0)

    def take(self, idx: np.ndarray) -> "Masks":
        e, offsets = ragged_take(self.offsets, idx)
        return Masks(self.data[e], offsets, self.boxes[np.asarray(idx, np.int64)])

    def union_groups(self, order: np.ndarray, offsets: np.ndarray) -> "Masks":
        """One mask per group (CSR: group g is order[offsets[g]:offsets[g+1]]): its members' bitmaps OR-ed on
        the box that holds them all. Only groups of several members cost a Python step each."""
        sizes = np.diff(offsets)
        out = self.take(order[offsets[:-1]])
        if (sizes == 1).all():
            return out
        crops = [out.crop(g)[0] for g in range(len(sizes))]
        origins = out.boxes[:, :2].copy()
        for g in np.flatnonzero(sizes > 1):
            members = order[offsets[g]:offsets[g + 1]]
            b = self.boxes[members]
            x0, y0 = b[:, 0].min(), b[:, 1].min()
            x1, y1 = (b[:, 0] + b[:, 2]).max(), (b[:, 1] + b[:, 3]).max()
            canvas = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            for m in members:
                crop, (mx, my) = self.crop(int(m))
                canvas[my - y0:my - y0 + crop.shape[0], mx - x0:mx - x0 + crop.shape[1]] |= crop
            crops[g], origins[g] = canvas, (x0, y0)
        return Masks.from_crops(crops, origins)

    def shifted(self, dxy: np.ndarray) -> "Masks":
        boxes = self.boxes.copy()
        boxes[:, :2] += np.asarray(dxy).astype(np.int64)
        return Masks(self.data, self.offsets, boxes)

    @classmethod
    def concat(cls, parts: list["Masks"]) -> "Masks":
        return cls(np.concatenate([p.data for p in parts]), _offsets(np.concatenate([np.diff(p.offsets)
                                                                                      for p in parts])),
                   np.concatenate([p.boxes for p in parts]).reshape(-1, 4))


@dataclass
class Detections:
    class_id: np.ndarray  # (n,) int32
    score: np.ndarray  # (n,) float32
    coords: np.ndarray  # (m, 2) float64 vertices of all detections, rings not closed
    offsets: np.ndarray  # (n + 1,) int64: detection k owns coords[offsets[k]:offsets[k + 1]]
    window: np.ndarray  # (n,) int64 id of the window that produced it
    on_seam: np.ndarray | None = None  # (n,) bool: touches an inner window edge, so may be cut off
    rings: Rings | None = None  # None: every detection is one simple ring
    masks: Masks | None = None  # per-object bitmaps (segmentation models, when asked for)
    # (n, 4) float64 [x0, y0, x1, y1]: the model's own box where the geometry is not that box (segmentation:
    # the outline lies inside it); None when the geometry is the box (detect) or its rotated form (obb)
    boxes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.on_seam is None:
            self.on_seam = np.zeros(len(self.class_id), dtype=bool)

    def __len__(self) -> int:
        return int(self.class_id.shape[0])

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, 2)), np.zeros(1, np.int64),
                   np.zeros(0, np.int64))

    @classmethod
    def from_polygons(cls, polygons: list[np.ndarray] | np.ndarray, class_id, score, window=-1) -> "Detections":
        """From a (n, k, 2) array or a list of (k_i, 2) arrays; polygons with < 3 vertices are dropped. `window`:
        one for all, or one per polygon."""
        class_id = np.asarray(class_id, dtype=np.int32).ravel()
        score = np.asarray(score, dtype=np.float32).ravel()
        if isinstance(polygons, np.ndarray) and polygons.ndim == 3:
            n, k = polygons.shape[:2]
            counts = np.full(n, k, dtype=np.int64)
            coords = polygons.reshape(-1, 2).astype(np.float64)
        else:
            counts = np.array([len(p) for p in polygons], dtype=np.int64)
            coords = (np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in polygons])
                      if len(polygons) else np.zeros((0, 2)))
        window = np.broadcast_to(np.asarray(window, dtype=np.int64), (len(class_id),)).copy()
        dets = cls(class_id, score, coords, _offsets(counts), window)
        ok = counts >= 3
        return dets if ok.all() else dets.take(np.flatnonzero(ok))

    @classmethod
    def from_geometries(cls, geoms: np.ndarray, class_id, score, window, on_seam=None,
                        masks: Masks | None = None, boxes: np.ndarray | None = None) -> "Detections":
        """From shapely Polygons / MultiPolygons (non-empty), keeping holes and parts; `boxes` as the field."""
        geoms = np.asarray(geoms, dtype=object)
        n = len(geoms)
        class_id = np.asarray(class_id, dtype=np.int32).ravel()
        score = np.asarray(score, dtype=np.float32).ravel()
        window = np.broadcast_to(np.asarray(window, dtype=np.int64), (n,)).copy()
        if n == 0:
            return cls.empty()
        kind, coords, offs = shapely.to_ragged_array(geoms)
        if kind == shapely.GeometryType.POLYGON:
            ring_offsets, det_rings = offs  # one part per polygon: its first ring is the exterior
            part_starts = np.asarray(det_rings, np.int64)
        elif kind == shapely.GeometryType.MULTIPOLYGON:
            ring_offsets, part_offsets, det_parts = offs
            part_starts = np.asarray(part_offsets, np.int64)
            det_rings = part_starts[np.asarray(det_parts, np.int64)]
        else:
            raise ValueError(f"detections must be polygons, got {kind.name}")
        ring_offsets = np.asarray(ring_offsets, np.int64)
        det_rings = np.asarray(det_rings, np.int64)
        closed_sizes = np.diff(ring_offsets)
        keep = np.ones(len(coords), dtype=bool)
        keep[ring_offsets[1:] - 1] = False  # drop each ring's closing vertex
        shell = np.zeros(len(closed_sizes), dtype=bool)
        shell[part_starts[:-1][np.diff(part_starts) > 0]] = True
        rings = Rings(det_rings, closed_sizes - 1, shell)
        coords = np.asarray(coords, np.float64)[keep]
        offsets = rings.vertex_offsets[det_rings]
        simple = bool((np.diff(det_rings) == 1).all())
        return cls(class_id, score, coords, offsets, window,
                   None if on_seam is None else np.asarray(on_seam, bool), None if simple else rings, masks,
                   None if boxes is None else np.asarray(boxes, np.float64).reshape(n, 4))

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def ring_layout(self) -> Rings:
        """The ring structure, also for detections that are all simple rings."""
        return self.rings if self.rings is not None else Rings.simple(self.counts)

    def owner(self) -> np.ndarray:
        """(m,) index of the detection each vertex belongs to."""
        return np.repeat(np.arange(len(self)), self.counts)

    def take(self, idx: np.ndarray) -> "Detections":
        idx = np.asarray(idx, dtype=np.int64)
        vert, new_offsets = ragged_take(self.offsets, idx)
        return Detections(self.class_id[idx], self.score[idx], self.coords[vert], new_offsets, self.window[idx],
                          self.on_seam[idx], None if self.rings is None else self.rings.take(idx),
                          None if self.masks is None else self.masks.take(idx),
                          None if self.boxes is None else self.boxes[idx])

    def scaled(self, factor: float) -> "Detections":
        """Coordinates and model boxes multiplied by `factor` (patch pixels of a decimated read -> window
        pixels). Only without masks: bitmaps are not resampled."""
        if self.masks is not None:
            raise ValueError("detections with masks cannot be scaled")
        return Detections(self.class_id, self.score, self.coords * factor, self.offsets, self.window, self.on_seam,
                          self.rings, None, None if self.boxes is None else self.boxes * factor)

    def with_coords(self, coords: np.ndarray) -> "Detections":
        """The same detections with every vertex replaced (e.g. by its lon/lat); pixel boxes are dropped."""
        return Detections(self.class_id, self.score, coords, self.offsets, self.window, self.on_seam, self.rings,
                          self.masks)

    @classmethod
    def concat(cls, parts: list["Detections"]) -> "Detections":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        counts = np.concatenate([p.counts for p in parts])
        rings = None
        if any(p.rings is not None for p in parts):
            rings = Rings.concat([p.ring_layout() for p in parts])
        masks = None
        if all(p.masks is not None for p in parts):
            masks = Masks.concat([p.masks for p in parts])
        boxes = None
        if all(p.boxes is not None for p in parts):
            boxes = np.concatenate([p.boxes for p in parts])
        return cls(np.concatenate([p.class_id for p in parts]), np.concatenate([p.score for p in parts]),
                   np.concatenate([p.coords for p in parts]), _offsets(counts),
                   np.concatenate([p.window for p in parts]), np.concatenate([p.on_seam for p in parts]),
                   rings, masks, boxes)

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Every field as plain arrays (for `np.savez`: checkpoints); `from_arrays` restores them exactly."""
        out = {"class_id": self.class_id, "score": self.score, "coords": self.coords, "offsets": self.offsets,
               "window": self.window, "on_seam": self.on_seam}
        if self.rings is not None:
            out.update(rings_offsets=self.rings.offsets, rings_sizes=self.rings.sizes, rings_shell=self.rings.shell)
        if self.masks is not None:
            out.update(masks_data=self.masks.data, masks_offsets=self.masks.offsets, masks_boxes=self.masks.boxes)
        if self.boxes is not None:
            out["boxes"] = self.boxes
        return {prefix + k: v for k, v in out.items()}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> "Detections":
        a = {k[len(prefix):]: arrays[k] for k in arrays.keys() if k.startswith(prefix)}
        rings = Rings(a["rings_offsets"], a["rings_sizes"], a["rings_shell"]) if "rings_offsets" in a else None
        masks = Masks(a["masks_data"], a["masks_offsets"], a["masks_boxes"]) if "masks_data" in a else None
        return cls(a["class_id"], a["score"], a["coords"], a["offsets"], a["window"], a["on_seam"], rings, masks,
                   a.get("boxes"))

    def geometries(self) -> np.ndarray:
        """Shapely geometries, one per detection (Polygon, or MultiPolygon for several parts), vectorised."""
        if not len(self):
            return np.empty(0, dtype=object)
        if self.rings is None:
            return shapely.polygons(shapely.linearrings(self.coords, indices=self.owner()))
        rl = self.rings
        ring_of_vertex = np.repeat(np.arange(len(rl.sizes)), rl.sizes)
        rings = shapely.linearrings(self.coords, indices=ring_of_vertex)
        part_of_ring = np.cumsum(rl.shell) - 1
        polys = shapely.polygons(rings, indices=part_of_ring)
        det_of_ring = np.repeat(np.arange(len(self)), np.diff(rl.offsets))
        det_of_part = det_of_ring[rl.shell]
        parts_per_det = np.bincount(det_of_part, minlength=len(self))
        first_part = _offsets(parts_per_det)[:-1]
        out = np.empty(len(self), dtype=object)
        single = parts_per_det == 1
        out[single] = polys[first_part[single]]
        multi = ~single
        if multi.any():
            sel = multi[det_of_part]
            out[multi] = shapely.multipolygons(polys[sel], indices=np.unique(det_of_part[sel],
                                                                             return_inverse=True)[1])
        return out

    def bounds(self) -> np.ndarray:
        """(n, 4) float64 [x0, y0, x1, y1] per detection."""
        if not len(self):
            return np.zeros((0, 4))
        starts = self.offsets[:-1]
        lo = np.minimum.reduceat(self.coords, starts, axis=0)
        hi = np.maximum.reduceat(self.coords, starts, axis=0)
        return np.hstack([lo, hi])

    def box_bounds(self) -> np.ndarray:
        """(n, 4) the model's box per detection: `boxes` where kept (segmentation), else the geometry's bounds."""
        return self.boxes if self.boxes is not None else self.bounds()

    def sort_key(self) -> np.ndarray:
        """A total order independent of how detections were produced (for comparing runs)."""
        b = self.bounds()
        return np.lexsort((-self.score, self.class_id, b[:, 1], b[:, 0]))


SEAM_MARGIN = 2.0  # pixels: a detection this close to an inner window edge may be cut by it


def to_global(dets: Detections, origins: np.ndarray, window_ids: np.ndarray, patch_size: tuple[int, int],
              raster_size: tuple[int, int], seam_margin: float = SEAM_MARGIN) -> Detections:
    """Move patch-local detections into global pixels and flag those cut by an inner window edge.

    `origins` (n_windows, 2) and `window_ids` (n_windows,) are indexed by `dets.window`, the position of
    the patch in its batch; the result carries the global window ids.
    A detection touching an edge of its window that is not the raster's own edge may be a truncated
    view of an object the neighbouring window sees whole; the merge ranks such detections last.
    """
    if not len(dets):
        return dets
    org = np.asarray(origins, dtype=np.float64)[dets.window]
    coords = dets.coords + np.repeat(org, dets.counts, axis=0)
    masks = None if dets.masks is None else dets.masks.shifted(org)
    boxes = None if dets.boxes is None else dets.boxes + np.tile(org, 2)
    out = Detections(dets.class_id, dets.score, coords, dets.offsets,
                     np.asarray(window_ids, dtype=np.int64)[dets.window], rings=dets.rings, masks=masks, boxes=boxes)
    b = out.bounds()
    pw, ph = patch_size
    w, h = raster_size
    x0, y0 = org[:, 0], org[:, 1]
    x1, y1 = np.minimum(x0 + pw, w), np.minimum(y0 + ph, h)
    m = seam_margin
    out.on_seam = (((b[:, 0] <= x0 + m) & (x0 > 0)) | ((b[:, 1] <= y0 + m) & (y0 > 0))
                   | ((b[:, 2] >= x1 - m) & (x1 < w)) | ((b[:, 3] >= y1 - m) & (y1 < h)))
    return out
