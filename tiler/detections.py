"""Columnar detections: class, score and a polygon per object, plus the patch -> global transform.

Polygons are stored ragged (all vertices in one float64 array with offsets), which is cheap to pickle
between processes, to translate (one vectorised add), and to turn into shapely geometries in one call.
Coordinates are float pixels (x right, y down, pixel edges at integers) and are never truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely


@dataclass
class Detections:
    class_id: np.ndarray  # (n,) int32
    score: np.ndarray  # (n,) float32
    coords: np.ndarray  # (m, 2) float64 polygon vertices of all detections, rings not closed
    offsets: np.ndarray  # (n + 1,) int64: detection k owns coords[offsets[k]:offsets[k + 1]]
    window: np.ndarray  # (n,) int64 id of the window that produced it
    on_seam: np.ndarray | None = None  # (n,) bool: touches an inner window edge, so may be cut off

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
    def from_polygons(cls, polygons: list[np.ndarray] | np.ndarray, class_id, score, window: int = -1
                      ) -> "Detections":
        """From a (n, k, 2) array or a list of (k_i, 2) arrays; polygons with < 3 vertices are dropped."""
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
        dets = cls(class_id, score, coords, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                   np.full(len(class_id), window, dtype=np.int64))
        ok = counts >= 3
        return dets if ok.all() else dets.take(np.flatnonzero(ok))

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def owner(self) -> np.ndarray:
        """(m,) index of the detection each vertex belongs to."""
        return np.repeat(np.arange(len(self)), self.counts)

    def take(self, idx: np.ndarray) -> "Detections":
        idx = np.asarray(idx, dtype=np.int64)
        counts = self.counts[idx]
        starts = self.offsets[:-1][idx]
        # vertex indices of the chosen detections, built without a Python loop
        new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        vert = np.arange(new_offsets[-1]) - np.repeat(new_offsets[:-1] - starts, counts)
        return Detections(self.class_id[idx], self.score[idx], self.coords[vert], new_offsets, self.window[idx],
                          self.on_seam[idx])

    @classmethod
    def concat(cls, parts: list["Detections"]) -> "Detections":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        counts = np.concatenate([p.counts for p in parts])
        return cls(np.concatenate([p.class_id for p in parts]), np.concatenate([p.score for p in parts]),
                   np.concatenate([p.coords for p in parts]),
                   np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                   np.concatenate([p.window for p in parts]), np.concatenate([p.on_seam for p in parts]))

    def geometries(self) -> np.ndarray:
        """Shapely polygons, one per detection, in one vectorised call."""
        if not len(self):
            return np.empty(0, dtype=object)
        rings = shapely.linearrings(self.coords, indices=self.owner())
        return shapely.polygons(rings)

    def bounds(self) -> np.ndarray:
        """(n, 4) float64 [x0, y0, x1, y1] per detection."""
        if not len(self):
            return np.zeros((0, 4))
        starts = self.offsets[:-1]
        lo = np.minimum.reduceat(self.coords, starts, axis=0)
        hi = np.maximum.reduceat(self.coords, starts, axis=0)
        return np.hstack([lo, hi])

    def sort_key(self) -> np.ndarray:
        """A total order independent of how detections were produced (for comparing runs)."""
        b = self.bounds()
        return np.lexsort((-self.score, self.class_id, b[:, 1], b[:, 0]))


def to_global(dets: Detections, origins: np.ndarray, window_ids: np.ndarray, patch_size: tuple[int, int],
              raster_size: tuple[int, int], seam_margin: float = 2.0) -> Detections:
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
    out = Detections(dets.class_id, dets.score, coords, dets.offsets,
                     np.asarray(window_ids, dtype=np.int64)[dets.window])
    b = out.bounds()
    pw, ph = patch_size
    w, h = raster_size
    x0, y0 = org[:, 0], org[:, 1]
    x1, y1 = np.minimum(x0 + pw, w), np.minimum(y0 + ph, h)
    m = seam_margin
    out.on_seam = (((b[:, 0] <= x0 + m) & (x0 > 0)) | ((b[:, 1] <= y0 + m) & (y0 > 0))
                   | ((b[:, 2] >= x1 - m) & (x1 < w)) | ((b[:, 3] >= y1 - m) & (y1 < h)))
    return out
