"""Synthetic aerial scenes with exact ground truth, of any size, rendered window by window.

Every pixel is a pure function of its global coordinates and the seed (hash-based noise, analytic roads
and water, objects placed per fixed cell), so a window renders the same whether the scene is written in
512-pixel blocks, cut into training patches, or read back by the engine. Nothing ever holds the whole
image: the writer renders one block at a time.

Classes (ids are the models' class ids):
    0 vehicle   rotated rectangles, 6-20 px long, on roads and in parking spots
    1 building  rectangles and L-shapes, 20-80 px, with a cast shadow; with `SceneSpec(large_objects=True)`
                also large flat-roofed buildings, 300-900 px, rectangles and L/U shapes, many with courtyards
    2 boat      pointed hulls, 12-40 px, on water

Modules: `noise` (hash noise), `objects` (SceneObject, small-object placement per 256-px cell), `large`
(large buildings per 2048-px cell), `layout` (SceneSpec, roads, lakes, rivers), `render` (pixels),
`writer` (GeoTIFF), `truth` (ground-truth GeoJSON), `training` (patch labels, Ultralytics datasets).
"""

from .large import LARGE_CELL
from .layout import Road, SceneSpec, _make_layout
from .noise import _hash_u32, _lattice_noise, _unit, _value_noise
from .objects import (_BOAT_COLORS, _CAR_COLORS, _CELL_MARGIN, _OBJ_PAD, _ROOF_COLORS, CELL, CLASS_NAMES, LARGE_SIZE,
                      Paint, SceneObject, _boat, _building, _cell_objects, _rect, _rotate)
from .render import NODATA, _grain_tile, _paint, _render
from .training import (MIN_SEGMENT_AREA, TASKS, PatchLabel, _yolo_lines, merge_rings, patch_labels,
                       segment_polygon, write_training_set)
from .truth import read_truth, write_truth
from .writer import write_scene

__all__ = ["CELL", "CLASS_NAMES", "LARGE_CELL", "LARGE_SIZE", "MIN_SEGMENT_AREA", "NODATA", "TASKS", "Paint",
           "PatchLabel", "Road", "SceneObject", "SceneSpec", "merge_rings", "patch_labels", "read_truth",
           "segment_polygon", "write_scene", "write_training_set", "write_truth"]
