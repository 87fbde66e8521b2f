"""Merge detections from overlapping windows in global pixel coordinates.

Windows overlap, so an object near a window edge is seen two or more times, and an object larger than a
window is seen in pieces. Two methods, picked by name (``MERGE_METHODS``):

* ``"suppress"`` (`suppress.py`): greedy non-maximum suppression keeps the best detection of each cluster
  of overlapping ones. Right for objects smaller than the overlap between windows.
* ``"union"`` (`union.py`): groups the views of one object that different windows saw (linked by their
  overlap inside the zone both windows cover, at most one detection per window and group) and returns
  one geometry per group (`groups.py`): a duplicate's best view, or the union of an object's fragments.

With a coarse pass, `coarse.py` first keeps the coarse pass's detections of objects no window held whole and
joins to each the fine detections that are pieces of it (`coarse_groups`). `windows.py` says what the windows
could see: which objects none held whole, and which cut views another window saw whole.

Both work on the real geometries (boxes, rotated boxes, segmentation polygons as shapely objects), never
on their bounding boxes, and share `overlaps.py`: candidate pairs, overlap metrics and geometry
repair, with `dop.py`'s numpy bounds (from each geometry's k-DOP) that spare most pairs a GEOS intersection.
Nothing builds an n x n matrix.

Pure package: numpy and shapely >= 2 only.
"""

from __future__ import annotations

from .coarse import coarse_groups
from .overlaps import MATCH_METRICS, pair_overlaps
from .suppress import SORTERS, nms, sort_order
from .groups import GEOMETRY_KINDS, group_leaders, member_positions, merge_group_geometries, merge_group_scores
from .union import union_groups
from .windows import cut_views_seen_whole_elsewhere, larger_than_window

__all__ = [
    "MERGE_METHODS", "MATCH_METRICS", "SORTERS", "GEOMETRY_KINDS",
    "pair_overlaps", "sort_order", "nms",
    "union_groups", "merge_group_geometries", "merge_group_scores", "group_leaders", "member_positions",
    "coarse_groups", "larger_than_window", "cut_views_seen_whole_elsewhere",
]

MERGE_METHODS: tuple[str, ...] = ("suppress", "union")
"""``"suppress"``: `nms`; ``"union"``: `union_groups` + `merge_group_geometries` + `merge_group_scores`."""
