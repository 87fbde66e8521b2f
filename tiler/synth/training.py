"""Training patches: labels clipped to a patch, YOLO label lines per task, Ultralytics dataset trees."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

from .layout import SceneSpec
from .objects import CLASS_NAMES

TASKS: tuple[str, ...] = ("detect", "segment", "obb")
MIN_SEGMENT_AREA = 16.0  # px²: smaller visible parts of an object are left out of segment labels


@dataclass(frozen=True)
class PatchLabel:
    class_id: int
    polygon: np.ndarray  # patch-local pixel coordinates of the visible part (the largest one's exterior)
    visible: float  # fraction of the object inside the patch (of its largest visible part)
    shape: object = field(default=None, repr=False, compare=False)  # the whole visible part, patch-local
    # (a shapely Polygon or MultiPolygon, holes included)


def patch_labels(spec: SceneSpec, x0: int, y0: int, size: int) -> list[PatchLabel]:
    """Objects touching the patch, clipped to it, in patch-local pixel coordinates."""
    box = shapely.box(x0, y0, x0 + size, y0 + size)
    labels = []
    for obj in spec.objects_in(x0, y0, x0 + size, y0 + size):
        shape = obj.shape
        if not shape.intersects(box):
            continue
        clipped = shape.intersection(box)
        if clipped.is_empty or clipped.area <= 0:
            continue
        whole = shapely.transform(clipped, lambda xy: xy - (x0, y0))
        if clipped.geom_type != "Polygon":
            clipped = max(getattr(clipped, "geoms", [clipped]), key=lambda g: g.area)
            if clipped.geom_type != "Polygon":
                continue
        ring = np.asarray(clipped.exterior.coords)[:-1] - (x0, y0)
        labels.append(PatchLabel(obj.class_id, ring, clipped.area / shape.area, whole))
    return labels


def merge_rings(rings: list[np.ndarray]) -> np.ndarray:
    """Join rings into one polygon with zero-width bridges between consecutive rings at their closest
    vertices, the way Ultralytics' `merge_multi_segment` joins COCO multi-part segments: out along each bridge,
    once around each ring, back along the bridges. cv2.fillPoly (as Ultralytics rasterises labels) then fills
    separate parts as parts and leaves inner rings (holes) empty."""
    rings = [np.asarray(r, dtype=np.float64) for r in rings]
    if len(rings) == 1:
        return rings[0]
    links = []  # (vertex of ring k, vertex of ring k + 1) closest to each other
    for a, b in zip(rings[:-1], rings[1:]):
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        links.append(np.unravel_index(int(np.argmin(d)), d.shape))
    out = [np.roll(rings[0], -links[0][0], axis=0)]  # the first ring, whole, from its bridge vertex
    out.append(out[0][:1])
    back = []
    for k in range(1, len(rings)):
        r = np.roll(rings[k], -links[k - 1][1], axis=0)  # starts at the vertex bridged from ring k - 1
        if k == len(rings) - 1:
            out += [r, r[:1]]  # the last ring, whole
        else:
            j = (links[k][0] - links[k - 1][1]) % len(r)  # the vertex bridged to ring k + 1
            out.append(r[:j + 1])  # on the way out: as far as the next bridge
            back.append(np.vstack([r[j:], r[:1]]))  # on the way back: the rest of the ring
    out += back[::-1]
    return np.vstack(out)


def segment_polygon(shape, min_area: float = MIN_SEGMENT_AREA) -> np.ndarray | None:
    """One polygon (n, 2) for a segment label of a clipped object: every part of at least `min_area` with its
    holes, joined by `merge_rings`, largest part first; None if no part is that large."""
    parts = [g for g in getattr(shape, "geoms", [shape]) if g.geom_type == "Polygon" and g.area >= min_area]
    if not parts:
        return None
    rings = []
    for part in sorted(parts, key=lambda g: -g.area):
        rings.append(np.asarray(part.exterior.coords)[:-1])
        rings += [np.asarray(r.coords)[:-1] for r in part.interiors]
    return merge_rings(rings)


def _yolo_lines(labels: list[PatchLabel], size: int, task: str, min_visible: float,
                min_area: float = MIN_SEGMENT_AREA) -> list[str]:
    """YOLO label lines. detect and obb: objects at least `min_visible` inside the patch (by their largest
    visible part), from that part's exterior. segment: those objects too, and every other object with a
    visible part of at least `min_area` px²; one polygon per object joining all its visible parts of at least
    `min_area` (or just the largest) and their holes, so that the model learns to segment what a patch shows
    of a large roof, including a patch lying entirely on it."""
    lines = []
    for lab in labels:
        if task == "segment":
            shape = lab.shape if lab.shape is not None else Polygon(lab.polygon)
            # an object labelled for detect and obb (visible enough) is labelled here too, however small
            if lab.visible >= min_visible:
                largest = max((g.area for g in getattr(shape, "geoms", [shape]) if g.geom_type == "Polygon"),
                              default=0.0)
                poly = segment_polygon(shape, min(min_area, largest))
            else:
                poly = segment_polygon(shape, min_area)
            if poly is None:
                continue
            vals = (np.clip(poly, 0, size) / size).ravel().tolist()
            lines.append(f"{lab.class_id} " + " ".join(f"{v:.6f}" for v in vals))
            continue
        if lab.visible < min_visible:
            continue
        poly = np.clip(lab.polygon, 0, size) / size
        if task == "detect":
            (x0, y0), (x1, y1) = poly.min(axis=0), poly.max(axis=0)
            vals = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
        else:  # obb
            rect = cv2.minAreaRect(lab.polygon.astype(np.float32))
            vals = (np.clip(cv2.boxPoints(rect), 0, size) / size).ravel().tolist()
        lines.append(f"{lab.class_id} " + " ".join(f"{v:.6f}" for v in vals))
    return lines


def _point_in(rng, shape) -> tuple[float, float]:
    """A random point of a polygon (rejection sampling in its bounding box; the centroid as a fallback)."""
    x0, y0, x1, y1 = shape.bounds
    for _ in range(64):
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if shapely.contains_xy(shape, x, y):
            return x, y
    c = shape.representative_point()
    return c.x, c.y


def write_training_set(root: str | os.PathLike, seeds: list[int], patches_per_scene: int, size: int = 320,
                       scene_size: int = 2048, val_seeds: list[int] | None = None,
                       min_visible: float = 0.3, tasks: tuple[str, ...] = TASKS, large_objects: bool = False,
                       centred_on_large: int = 0, min_area: float = MIN_SEGMENT_AREA) -> dict[str, Path]:
    """Write Ultralytics datasets for `tasks` (default detect, segment and obb) from the same patches.

    Returns {task: path to data.yaml}. Images are written once and hard-linked into each task's tree,
    since Ultralytics finds labels by swapping `images` for `labels` in the image path. Calling it again on
    the same root adds patches (patch names carry the seed, so use new seeds): e.g. large-object scenes for
    the segment task only. With `large_objects`, the scenes hold large buildings, and the first
    `centred_on_large` patches of each scene are centred on a random point of one of them (if it has any).
    """
    root = Path(root)
    splits = {"train": seeds, "val": val_seeds or []}
    for split, split_seeds in splits.items():
        for seed in split_seeds:
            rng = np.random.default_rng([seed, 99])
            # a third of the scenes have a nodata margin, so models learn that black borders are not objects
            margin = int(rng.integers(60, 300)) if seed % 3 == 0 else 0
            spec = SceneSpec(scene_size, scene_size, seed=seed, nodata_margin=margin, large_objects=large_objects)
            bigs = spec.large_in(0, 0, scene_size, scene_size) if centred_on_large else []
            aim = np.random.default_rng([seed, 98])  # its own stream: the random patches stay as they were
            for k in range(patches_per_scene):
                x0, y0 = (int(v) for v in rng.integers(0, scene_size - size + 1, size=2))
                if k < centred_on_large and bigs:
                    px, py = _point_in(aim, bigs[int(aim.integers(len(bigs)))].shape)
                    x0 = int(np.clip(round(px - size / 2), 0, scene_size - size))
                    y0 = int(np.clip(round(py - size / 2), 0, scene_size - size))
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
                    lines = _yolo_lines(labels, size, task, min_visible, min_area)
                    (lab_dir / f"{name}.txt").write_text("\n".join(lines))
    out = {}
    for task in tasks:
        data = root / task / "data.yaml"
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
        # Ultralytics needs a val split to exist; a second call without val seeds keeps the first one's
        val = "images/val" if (root / task / "images" / "val").is_dir() else "images/train"
        data.write_text(f"path: {(root / task).resolve()}\ntrain: images/train\nval: {val}\nnames:\n{names}\n")
        out[task] = data
    return out
