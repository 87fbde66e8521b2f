"""The stages every runner composes: plan windows, infer a batch of windows, merge.

These know nothing of Ray or threads. The in-process runner calls them in a loop; the Ray runner calls the
same objects inside tasks and actors, which is why both produce identical results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .config import JobConfig
from .detections import SEAM_MARGIN, Detections, to_global
from .errors import RasterError, WindowReadError
from .grid import WindowGrid, plan_windows, select_windows_with_data
from .merge import (coarse_groups, cut_views_seen_whole_elsewhere, group_leaders, larger_than_window, member_positions,
                    merge_group_geometries, merge_group_scores, nms, union_groups)
from .model import Predictor

if TYPE_CHECKING:  # rasterio is imported by the jobs that open rasters, not by merge-only users (tiler.compat)
    from .raster import RasterSource


@dataclass(frozen=True)
class BatchSpec:
    """One model batch: up to `batch_size` consecutive windows of one frame's plan, starting at `start`.
    Batches are fixed by the job alone, so every runner (and a resumed run) feeds the model the same ones."""

    frame: int
    start: int
    window_ids: np.ndarray  # (n,) int64 ids in the frame's grid
    origins: np.ndarray  # (n, 2) int64 x0, y0
    patch_size: tuple[int, int]  # the frame's windows, in its pixels (per frame with `gsd`)
    read_size: tuple[int, int] | None = None  # read decimated to this (the model's input) when set


@dataclass
class BatchResult:
    """What an executor returns for a `BatchSpec`: raw detections in the frame's global pixels, or the error
    that made its frame unreadable (a frame's failure is data: the survey records it and goes on)."""

    frame: int
    start: int
    window_ids: np.ndarray
    detections: Detections | None
    empty: int = 0  # windows read back holding no data (the model did not run on them)
    seconds: float = 0.0  # reading and predicting this batch
    error: RasterError | None = None  # a WindowReadError naming the window, or the frame gone since planning
    restarted: int = 0  # actor restarts first reported with this batch (Ray)


@dataclass(frozen=True)
class WindowPlan:
    grid: WindowGrid
    origins: np.ndarray  # (n_run, 2) int64 x0, y0 of windows to run, row-major
    window_ids: np.ndarray  # (n_run,) int64 ids in the full grid
    skipped: int  # windows holding only nodata

    @property
    def planned(self) -> int:
        return len(self.grid)


def open_source(cfg: JobConfig) -> RasterSource:
    """The configured raster (one frame), opened with its bands and stretch."""
    from .raster import RasterSource

    return RasterSource(cfg.source, bands=cfg.bands, stretch=cfg.stretch)


@dataclass(frozen=True)
class CoarsePass:
    """A frame's coarse pass (`coarse_factor`): windows F times the patch, read decimated to the size the fine
    windows reach the model at, so the model sees whole the objects that the fine windows only see in pieces.
    Its window ids follow the fine grid's (the id minus `first_id` is the id in its own grid), so one
    detection's `window` says which pass and window it comes from; its batches' starts follow the fine plan's."""

    plan: WindowPlan
    patch_size: tuple[int, int]
    read_size: tuple[int, int]
    first_id: int  # the number of windows in the fine grid
    first_start: int  # the number of windows the fine pass runs

    def window_boxes(self) -> np.ndarray:
        return self.plan.grid.clipped_bounds()


def coarse_pass(cfg: JobConfig, source: RasterSource, fine: WindowPlan, patch_size: tuple[int, int],
                read_size: tuple[int, int] | None) -> CoarsePass | None:
    """The frame's coarse pass, or None without `coarse_factor`."""
    f = cfg.coarse_factor
    if f is None:
        return None
    size = (patch_size[0] * f, patch_size[1] * f)
    coarse = plan(cfg, source, size)
    ids = coarse.window_ids + len(fine.grid)
    return CoarsePass(WindowPlan(coarse.grid, coarse.origins, ids, coarse.skipped), size, read_size or patch_size,
                      len(fine.grid), len(fine.window_ids))


def batch_specs(frame: int, window_plan: WindowPlan, batch_size: int, patch_size: tuple[int, int],
                read_size: tuple[int, int] | None = None, first_start: int = 0) -> list[BatchSpec]:
    """The model batches of one frame's pass, in window order; `start` counts from `first_start`."""
    ids, origins = window_plan.window_ids, window_plan.origins
    return [BatchSpec(frame, first_start + s, ids[s:s + batch_size], origins[s:s + batch_size], patch_size,
                      read_size) for s in range(0, len(ids), batch_size)]


def frame_read_size(cfg: JobConfig, patch_size: tuple[int, int]) -> tuple[int, int] | None:
    """With `gsd`, a window larger than the model's input is read decimated to it (from an overview where
    the raster has one at that scale) rather than read whole and shrunk by the model; not when per-object
    masks are kept (they are bitmaps at full resolution)."""
    side = cfg.model_imgsz
    if cfg.gsd is None or cfg.keep_masks or max(patch_size) <= side:
        return None
    return side, side


def frame_patch_size(cfg: JobConfig, source: RasterSource) -> tuple[int, int]:
    """The patch in this raster's pixels: as configured, or with `gsd` the square that covers the model's
    input (imgsz) at the ground resolution it was trained at, so objects reach it at the scale it knows."""
    if cfg.gsd is None:
        return cfg.patch_size
    res = source.metres_per_pixel()
    side = max(32, int(round(cfg.model_imgsz * cfg.gsd / res)))
    return side, side


def plan(cfg: JobConfig, source: RasterSource, patch_size: tuple[int, int] | None = None) -> WindowPlan:
    """All windows of the grid (of `patch_size`, default the configured one), minus those that are entirely
    nodata (judged on a decimated mask)."""
    grid = plan_windows(source.width, source.height, patch_size or cfg.patch_size, cfg.overlap)
    origins = grid.origins()
    ids = np.arange(len(grid), dtype=np.int64)
    if source.has_mask:
        mask, sx, sy = source.coarse_valid_mask()
        keep = select_windows_with_data(grid, mask, sx, sy)
        origins, ids = origins[keep], ids[keep]
    return WindowPlan(grid, origins, ids, len(grid) - len(ids))


def make_predictor(cfg: JobConfig) -> Predictor:
    return Predictor(cfg.model, conf=cfg.conf, iou=cfg.iou, imgsz=cfg.model_imgsz, classes=cfg.classes,
                     max_det=cfg.max_det, device=cfg.device, threads=cfg.threads, precision=cfg.precision,
                     simplify=cfg.simplify, largest_part=cfg.largest_part, keep_masks=cfg.keep_masks,
                     backend=cfg.backend, batch=cfg.batch_size)


def read_patches(source: RasterSource, patch_size: tuple[int, int], origins: np.ndarray, window_ids: np.ndarray,
                 read_size: tuple[int, int] | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """The windows' patches as one (n, h, w, 3) uint8 batch, each `read_size` (decimated) when given, else
    `patch_size`; written into `out` (a batch buffer of that shape, e.g. the model's pinned host memory) when given.

    Neighbouring windows of one grid row (consecutive in the batch, same top, overlapping or touching) are
    read as one strip and cut in memory, so the pixels they share are decoded once (at 25 % overlap a row's
    windows cover each pixel 1.33 times; the rows above and below share blocks through GDAL's block cache).
    The patches equal per-window reads bit for bit (tested). Decimated reads stay per window: averaging a strip
    would mix pixels across window edges."""
    pw, ph = patch_size
    xy = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
    ids = np.asarray(window_ids).reshape(-1)
    ow, oh = read_size or patch_size
    if out is None:
        out = np.empty((len(xy), oh, ow, 3), dtype=np.uint8)
    elif out.shape != (len(xy), oh, ow, 3) or out.dtype != np.uint8:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}, expected ({len(xy)}, {oh}, {ow}, 3) uint8")
    if read_size is not None:
        for k, ((x, y), w) in enumerate(zip(xy.tolist(), ids.tolist())):
            source.read(x, y, pw, ph, window_id=w, out_size=read_size, into=out[k])
        return out
    for a, b in _strips(xy, pw):  # a lone window is a strip of one
        x0, y0 = int(xy[a, 0]), int(xy[a, 1])
        if b - a == 1:
            source.read(x0, y0, pw, ph, window_id=int(ids[a]), into=out[a])
            continue
        try:
            strip = source.read(x0, y0, int(xy[b - 1, 0]) + pw - x0, ph, window_id=int(ids[a]))
        except WindowReadError:
            # read the strip's windows one by one, so the error names the failing one
            for k in range(a, b):
                source.read(int(xy[k, 0]), int(xy[k, 1]), pw, ph, window_id=int(ids[k]), into=out[k])
            continue
        for k, x in zip(range(a, b), xy[a:b, 0].tolist()):
            out[k] = strip[:, x - x0:x - x0 + pw]
    return out


def live_patches(patches: np.ndarray) -> np.ndarray:
    """Which patches of a batch hold any data (bool per patch): those read back entirely empty (nodata the coarse
    mask could not rule out) skip the model."""
    return patches.reshape(len(patches), -1).max(axis=1, initial=0) > 0  # uint8 max: ~3x `any`'s speed


def _strips(xy: np.ndarray, width: int) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive windows with the same top whose left edges step right by at most
    `width` (each overlaps or touches the one before)."""
    if len(xy) == 0:
        return []
    step = np.diff(xy[:, 0])
    joined = (np.diff(xy[:, 1]) == 0) & (step > 0) & (step <= width)
    cuts = np.flatnonzero(~joined) + 1
    bounds = np.concatenate([[0], cuts, [len(xy)]])
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def infer_patches(predictor: Predictor, patch_size: tuple[int, int], raster_size: tuple[int, int],
                  patches: np.ndarray, origins: np.ndarray, window_ids: np.ndarray,
                  live: np.ndarray | None = None) -> Detections:
    """Predict a batch of patches ((n, h, w, 3), as `read_patches` gives) and return detections in global pixel
    coordinates. Patches that are not `live` (default: `live_patches`) skip the model."""
    live = live_patches(patches) if live is None else live
    if not live.any():
        return Detections.empty()
    batch = patches if live.all() else patches[live]
    local = predictor.predict(batch)
    scale = patch_size[0] / patches.shape[2]
    if scale != 1:  # patches read decimated: the model saw them smaller than the window
        local = local.scaled(scale)
    # an outline cut by the window edge ends within a pixel or two of it in the model's pixels: `scale` times
    # that in the raster's, or a cut view would pass for a whole one and win the merge
    return to_global(local, np.asarray(origins)[live], np.asarray(window_ids)[live], patch_size, raster_size,
                     seam_margin=SEAM_MARGIN * max(scale, 1.0))


def merge(cfg: JobConfig, dets: Detections, task: str, window_boxes: np.ndarray,
          coarse_from: int | None = None) -> Detections:
    """Global merge on the real geometries. Objects larger than a window rank first and detections cut by inner
    window edges last; a cut one that another window saw whole, left alone by the union, is dropped.

    suppress: greedy NMS keeps the best of overlapping detections. union: first the pieces of one object (the
    overlapping parts one window saw, then the fragments different windows saw, which overlap inside the
    windows' shared zone) become one detection whose geometry is their union (a box's envelope, a rotated box's
    minimum rotated rectangle) and whose score is the best; then the same NMS as suppress removes what remains
    doubled. `window_boxes` (n_windows, 4) are the windows' [x0, y0, x1, y1] cut to the raster, indexed by
    `dets.window`. With a coarse pass, windows from `coarse_from` on are its windows, and its detections
    first go through `_coarse` (see merge/coarse.py)."""
    return merge_indexed(cfg, dets, task, window_boxes, coarse_from)[0]


def merge_indexed(cfg: JobConfig, dets: Detections, task: str, window_boxes: np.ndarray,
                  coarse_from: int | None = None) -> tuple[Detections, np.ndarray]:
    """`merge`, and for each merged detection the index in `dets` of the detection it comes from (its best
    fragment when union joined several)."""
    source = np.arange(len(dets), dtype=np.int64)
    if not len(dets):
        return dets, source
    window_boxes = np.asarray(window_boxes)
    if coarse_from is not None:
        dets, source = _coarse(cfg, dets, task, window_boxes, coarse_from)
        if not len(dets):
            return dets, source
    fine_boxes = window_boxes[:coarse_from]
    if cfg.merge_method(task) == "union":
        dets, joined = _union(cfg, dets, task, window_boxes, fine_boxes)
        source = source[joined]
    # A view cut by its window's edge, still alone here (not joined into a larger object), that another window saw
    # whole with a margin: that window's own view, if it has one, is the better one, and if it has none it saw
    # those pixels whole and found nothing (merge/windows.py)
    bounds = dets.bounds()
    drop = cut_views_seen_whole_elsewhere(bounds, dets.on_seam, dets.window, fine_boxes, SEAM_MARGIN)
    if drop.any():
        kept = np.flatnonzero(~drop)
        dets, source, bounds = dets.take(kept), source[kept], bounds[kept]
    # Rank tiers for the NMS: first objects larger than a window (joined from several windows' pieces, or the
    # coarse pass's), so a detail on one (a roof's plant taken for a small building, often scored higher than
    # any one piece of the roof) is suppressed by it instead of suppressing it; then whole views; cut ones last.
    tier = np.where(larger_than_window(bounds, fine_boxes), 0, 1 + dets.on_seam.astype(np.int64))
    keep = nms(dets.geometries(), dets.score, dets.class_id, threshold=cfg.nms_threshold, metric=cfg.match_metric,
               class_agnostic=cfg.class_agnostic, sorter=cfg.sorter, demote=tier, bins=cfg.sorter_bins)
    merged, source = dets.take(keep), source[keep]
    order = merged.sort_key()
    return merged.take(order), source[order]


def _geometry_kind(task: str) -> str:
    """What a joined object's geometry is: boxes stay boxes, rotated boxes rotated boxes (merge_group_geometries)."""
    return {"detect": "box", "obb": "rotated"}.get(task, "polygon")


def _coarse(cfg: JobConfig, dets: Detections, task: str, boxes: np.ndarray, coarse_from: int
            ) -> tuple[Detections, np.ndarray]:
    """The coarse pass's detections of objects no fine window saw whole, each joined with the fine detections
    that are pieces of it; its other detections dropped (merge/coarse.py). Also returns each detection's
    source in `dets` (a joined one's: its coarse detection)."""
    geoms = dets.geometries()
    order, offsets = coarse_groups(geoms, dets.class_id, dets.window >= coarse_from, dets.window, boxes[:coarse_from],
                                   cfg.class_agnostic)
    lead = group_leaders(order, offsets)  # the coarse detection of a joined group: its window, flags and class
    sizes = np.diff(offsets)
    alone = lead[sizes == 1]
    if len(alone) == len(dets):  # nothing dropped, nothing joined
        return dets, alone
    if len(alone) == len(lead):  # coarse detections dropped, none joined
        return dets.take(alone), alone
    # only the joined groups are rebuilt (most detections are left as they are)
    multi = np.flatnonzero(sizes > 1)
    sub_order, sub_offsets = order[member_positions(offsets, multi)], np.r_[0, np.cumsum(sizes[multi])]
    merged = merge_group_geometries(geoms, sub_order, sub_offsets, kind=_geometry_kind(task), keep_covering=False)
    joined_lead = group_leaders(sub_order, sub_offsets)
    joined = _grouped(dets, sub_order, sub_offsets, merged, joined_lead, dets.on_seam[joined_lead])
    return Detections.concat([dets.take(alone), joined]), np.r_[alone, joined_lead]


def _grouped(dets: Detections, order: np.ndarray, offsets: np.ndarray, geoms: np.ndarray, lead: np.ndarray,
             on_seam: np.ndarray) -> Detections:
    """One detection per group: the given geometry and flags, the leader's class and window, the best score,
    the envelope of the members' model boxes, the union of their masks."""
    masks = None if dets.masks is None else dets.masks.union_groups(order, offsets)
    scores = merge_group_scores(dets.score, order, offsets)
    boxes = None
    if dets.boxes is not None:
        b, starts = dets.boxes[order], offsets[:-1]
        boxes = np.column_stack([np.minimum.reduceat(b[:, :2], starts), np.maximum.reduceat(b[:, 2:], starts)])
    return Detections.from_geometries(geoms, dets.class_id[lead], scores, dets.window[lead], on_seam=on_seam,
                                      masks=masks, boxes=boxes)


def _union(cfg: JobConfig, dets: Detections, task: str, boxes: np.ndarray, fine_boxes: np.ndarray
           ) -> tuple[Detections, np.ndarray]:
    """Join the pieces of one object: first those one window saw as several overlapping parts (a model shown
    a patch of a large roof often outputs a few overlapping instances of it), then the fragments that
    different windows saw. Neither pass puts two detections of one window that do not overlap each other into
    one group, so objects a window saw apart stay apart, even where it also outlined them together. `fine_boxes`
    are the fine windows' boxes. Also returns each joined detection's best member (an index into `dets`)."""
    kind = _geometry_kind(task)
    dets, first = _join(cfg, dets, kind, boxes, fine_boxes, within_window=True)
    dets, second = _join(cfg, dets, kind, boxes, fine_boxes, within_window=False)
    return dets, first[second]


def _join(cfg: JobConfig, dets: Detections, kind: str, boxes: np.ndarray, fine_boxes: np.ndarray, within_window: bool
          ) -> tuple[Detections, np.ndarray]:
    """One union pass (merge/union.py): detections of the same class (unless class-agnostic), of one window
    (`within_window`) or of different windows, linked by their overlap inside their windows' shared zone; never two
    of one window that are not linked to each other. A group whose best member covers the others keeps it
    (duplicates: a union would inflate them), unless some member is larger than a window, or, within one window,
    cut by its edge: then the members are parts of an object no window saw whole, and only their union holds all
    of it. A joined detection stays flagged as cut (`on_seam`) if `within_window` and any part was; else only
    unjoined ones keep their flag. Returns the joined detections and each one's best member."""
    geoms = dets.geometries()
    order, offsets = union_groups(geoms, dets.score, dets.class_id, dets.window,
                                  boxes[dets.window].astype(np.float64), threshold=cfg.nms_threshold,
                                  metric=cfg.match_metric, class_agnostic=cfg.class_agnostic, demote=dets.on_seam,
                                  within_window=within_window)
    sizes = np.diff(offsets)
    if (sizes == 1).all():
        return dets, np.arange(len(dets), dtype=np.int64)
    best = group_leaders(order, offsets)
    parts = larger_than_window(dets.bounds(), fine_boxes) | (dets.on_seam if within_window else False)
    merged_geoms = merge_group_geometries(geoms, order, offsets, kind=kind, threshold=cfg.nms_threshold,
                                          metric=cfg.match_metric, demote=dets.on_seam, never_duplicate=parts)
    if within_window:
        on_seam = np.maximum.reduceat(dets.on_seam[order].astype(np.int8), offsets[:-1]).astype(bool)
    else:
        on_seam = dets.on_seam[best] & (sizes == 1)
    return _grouped(dets, order, offsets, merged_geoms, best, on_seam), best
