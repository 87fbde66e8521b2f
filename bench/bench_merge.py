#!/usr/bin/env python3
"""Time the merge of ~1 M detections: .venv/bin/python bench/bench_merge.py [--n 1000000] [--skip-nms]

Generates the detections a tiling job would produce over a large virtual raster (320 px windows at 25 %
overlap): small objects (rotated rectangles and 8-20 vertex polygons) seen whole or in part by the 1-4
windows that overlap them, terraces of touching houses (some windows see two of them as one blob), and
large objects (300-2000 px L-shapes, blobs, rectangles) cut into fragments by every window they cross.
Each view is the object, its vertices jittered by ~0.4 px (two inferences never agree exactly),
clipped to the window; views keeping under 30 % of the object and under 150 px^2 are dropped, as a
model would miss them.

The detections are written to a temporary .npz (WKB), then each method runs in a fresh process that
loads them: union (`union_groups` + `merge_group_geometries` + `merge_group_scores`) and, for
comparison, today's suppression (`nms`), both per class, ios 0.5, seam detections demoted. Peak RSS is
VmHWM, reset once the detections are loaded (Linux), so it is the merge's own on top of them. Building
the shapely geometries from WKB is not timed (the job builds them from its columnar detections either
way). Also reports how the union groups compare with the generated objects.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

REPO = Path(__file__).resolve().parents[1]
PATCH, STRIDE = 320, 240  # 25 % overlap
CELL = 40  # small objects sit one per cell, so only terraces touch
NOISE = 0.4  # px, per vertex and per view


def _ring_offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _rotated_rects(cx, cy, w, h, angle) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    local = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    dx, dy = local[None, :, 0] * w[:, None], local[None, :, 1] * h[:, None]
    x = cx[:, None] + dx * c[:, None] - dy * s[:, None]
    y = cy[:, None] + dx * s[:, None] + dy * c[:, None]
    return np.stack([x, y], -1).reshape(-1, 2), np.full(len(cx), 4)


def _blobs(rng, cx, cy, radius, kmin, kmax, jitter) -> tuple[np.ndarray, np.ndarray]:
    """Star-shaped polygons: k vertices at jittered angles and radii (simple by construction)."""
    k = rng.integers(kmin, kmax + 1, len(cx))
    owner = np.repeat(np.arange(len(cx)), k)
    pos = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
    phase = rng.uniform(0, 2 * np.pi, len(cx))[owner]
    ang = (pos + rng.uniform(-0.3, 0.3, len(owner))) * 2 * np.pi / k[owner] + phase
    r = radius[owner] * (1 + rng.uniform(-jitter, jitter, len(owner)))
    return np.stack([cx[owner] + r * np.cos(ang), cy[owner] + r * np.sin(ang)], 1), k


def _l_shapes(rng, cx, cy, size, angle) -> tuple[np.ndarray, np.ndarray]:
    """L-shaped buildings: a size x size square minus a corner of 40-70 % of each side, rotated."""
    n = len(cx)
    cut = rng.uniform(0.4, 0.7, (n, 2))
    u = np.stack([np.zeros(n), np.ones(n), np.ones(n), cut[:, 0], cut[:, 0], np.zeros(n)], 1) - 0.5
    v = np.stack([np.zeros(n), np.zeros(n), cut[:, 1], cut[:, 1], np.ones(n), np.ones(n)], 1) - 0.5
    u, v = u * size[:, None], v * size[:, None]
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return np.stack([cx[:, None] + u * c - v * s, cy[:, None] + u * s + v * c], -1).reshape(-1, 2), np.full(n, 6)


def make_objects(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object outlines over a size x size raster: vertices (m, 2), vertex counts (n,), and for each
    terrace house the index of the next house of its run (-1 for anything else)."""
    parts = []
    # Large objects, at most one per 1600 px super-cell; small objects keep clear of them.
    sup = 1600
    gx, gy = np.meshgrid(np.arange(size // sup), np.arange(size // sup))
    pick = rng.random(gx.size) < 0.3
    lx = (gx.ravel()[pick] + 0.5) * sup
    ly = (gy.ravel()[pick] + 0.5) * sup
    ext = rng.uniform(300, 1400, len(lx)) * np.where(rng.random(len(lx)) < 0.15, 1.45, 1.0)  # up to ~2000
    kind = rng.integers(0, 3, len(lx))
    ang = rng.uniform(0, np.pi, len(lx))
    for k, (build) in enumerate((
        lambda m: _l_shapes(rng, lx[m], ly[m], ext[m] / 1.42, ang[m]),
        lambda m: _blobs(rng, lx[m], ly[m], ext[m] / 2, 16, 20, 0.12),
        lambda m: _rotated_rects(lx[m], ly[m], ext[m] / 1.42, ext[m] / 3, ang[m]),
    )):
        m = kind == k
        if m.any():
            parts.append(build(m))
    keep_out = np.stack([lx - ext / 2 - CELL, ly - ext / 2 - CELL, lx + ext / 2 + CELL, ly + ext / 2 + CELL], 1)

    nc = size // CELL
    cx, cy = np.meshgrid(np.arange(nc), np.arange(nc))
    cx, cy = cx.ravel(), cy.ravel()
    terrace = (cy % 9 == 4)  # every 9th cell row: houses sharing walls, in runs of 6
    filled = (rng.random(cx.size) < 0.85) | terrace
    px, py = (cx + 0.5) * CELL, (cy + 0.5) * CELL
    for x0, y0, x1, y1 in keep_out:
        filled &= ~((px > x0) & (px < x1) & (py > y0) & (py < y1))
    t = filled & terrace
    run = (cy[t] * nc + cx[t]) // 6
    run_angle = rng.uniform(-np.radians(2), np.radians(2), run.max() + 1 if len(run) else 0)[run]
    run_mid = (cx[t] // 6 * 6 + 3) * CELL
    # rotate each run about its middle so that neighbours keep sharing their wall
    tx = run_mid + (px[t] - run_mid) * np.cos(run_angle)
    ty = py[t] + (px[t] - run_mid) * np.sin(run_angle)
    first_house = sum(len(p[1]) for p in parts)
    parts.append(_rotated_rects(tx, ty, np.full(t.sum(), CELL), np.full(t.sum(), 24.0), run_angle))
    neighbour = np.full(first_house + t.sum(), -1, dtype=np.int64)
    same_run = np.flatnonzero((run[1:] == run[:-1]) & (cx[t][1:] == cx[t][:-1] + 1))
    neighbour[first_house + same_run] = first_house + same_run + 1
    s = filled & ~terrace
    sx, sy = px[s] + rng.uniform(-3, 3, s.sum()), py[s] + rng.uniform(-3, 3, s.sum())
    rect = rng.random(s.sum()) < 0.5
    parts.append(_rotated_rects(sx[rect], sy[rect], rng.uniform(10, 34, rect.sum()),
                                rng.uniform(8, 20, rect.sum()), rng.uniform(0, np.pi, rect.sum())))
    parts.append(_blobs(rng, sx[~rect], sy[~rect], rng.uniform(6, 16, (~rect).sum()), 8, 20, 0.15))
    counts = np.concatenate([p[1] for p in parts])
    neighbour = np.r_[neighbour, np.full(len(counts) - len(neighbour), -1, dtype=np.int64)]
    return np.concatenate([p[0] for p in parts]), counts, neighbour


def make_views(size: int, coords: np.ndarray, counts: np.ndarray, neighbour: np.ndarray,
               rng: np.random.Generator) -> dict:
    """Every window's view of every object it overlaps, as a tiling job would return them. In 5 % of
    the windows that see two neighbouring terrace houses, the model returns them as one blob (object
    id -1), the case the union merge must not weld."""
    n = len(counts)
    offsets = _ring_offsets(counts)
    lo = np.minimum.reduceat(coords, offsets[:-1], axis=0)
    hi = np.maximum.reduceat(coords, offsets[:-1], axis=0)
    n_win = -(-(size - PATCH) // STRIDE) + 1  # windows per row (the last one is clipped)
    c0 = np.clip(np.floor((lo - PATCH) / STRIDE).astype(np.int64) + 1, 0, n_win - 1)
    c1 = np.clip(np.ceil(hi / STRIDE).astype(np.int64) - 1, 0, n_win - 1)
    nx, ny = c1[:, 0] - c0[:, 0] + 1, c1[:, 1] - c0[:, 1] + 1
    per = nx * ny
    obj = np.repeat(np.arange(n), per)
    k = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
    wc, wr = c0[obj, 0] + k % nx[obj], c0[obj, 1] + k // nx[obj]
    win = wr * n_win + wc
    wbox = np.stack([wc * STRIDE, wr * STRIDE, np.minimum(wc * STRIDE + PATCH, size),
                     np.minimum(wr * STRIDE + PATCH, size)], 1).astype(np.float64)
    vcount = counts[obj]
    voff = _ring_offsets(vcount)
    src = np.arange(voff[-1]) - np.repeat(voff[:-1] - offsets[:-1][obj], vcount)
    verts = coords[src] + rng.normal(0, NOISE, (len(src), 2))
    views = shapely.polygons(shapely.linearrings(verts, indices=np.repeat(np.arange(len(obj)), vcount)))
    whole = shapely.area(views)
    from tiler.merge.overlaps import clip_to_boxes  # vectorised rectangle clip
    views = clip_to_boxes(views, wbox)
    area = shapely.area(views)
    keep = (area > 0.3 * whole) | (area > 150)
    views, obj, win, wbox = views[keep], obj[keep], win[keep], wbox[keep]
    # blobs: the view of a house and of the next one in the same window, merged
    key = obj * (win.max() + 1) + win
    by_key = np.argsort(key)
    left = np.flatnonzero((neighbour[obj] >= 0) & (obj % 2 == 0) & (rng.random(len(obj)) < 0.05))
    partner_key = neighbour[obj[left]] * (win.max() + 1) + win[left]
    at = np.minimum(np.searchsorted(key[by_key], partner_key), len(key) - 1)
    found = key[by_key[at]] == partner_key
    left, right = left[found], by_key[at[found]]
    views[left] = shapely.union(views[left], views[right])
    obj[left] = -1
    keep = np.ones(len(obj), dtype=bool)
    keep[right] = False
    views, obj, win, wbox = views[keep], obj[keep], win[keep], wbox[keep]
    views = shapely.make_valid(views)  # clipping can leave rings touching along the window edge
    b = shapely.bounds(views)
    m = 2.0  # px, as tiler.detections.to_global
    seam = (((b[:, 0] <= wbox[:, 0] + m) & (wbox[:, 0] > 0)) | ((b[:, 1] <= wbox[:, 1] + m) & (wbox[:, 1] > 0))
            | ((b[:, 2] >= wbox[:, 2] - m) & (wbox[:, 2] < size)) | ((b[:, 3] >= wbox[:, 3] - m) & (wbox[:, 3] < size)))
    base = rng.uniform(0.3, 0.95, n + 1)[obj]  # blobs (-1) take the last entry
    score = np.clip(base + rng.normal(0, 0.03, len(obj)), 0.01, 0.999).astype(np.float32)
    cls = np.r_[rng.integers(0, 3, n), 0][obj].astype(np.int32)
    cls[neighbour[np.maximum(obj, 0)] >= 0] = 0  # terraces are all houses: one class, blobs included
    return dict(wkb=shapely.to_wkb(views), obj=obj, window=win, window_box=wbox, score=score, class_id=cls,
                on_seam=seam, n_objects=np.int64(n), size=np.int64(size))


def generate(n_target: int, seed: int, path: Path) -> dict:
    rng = np.random.default_rng(seed)
    # ~0.77 objects per 40 px cell (none around large objects), ~1.77 views each: ~1.36 views per cell
    size = int(np.sqrt(n_target / 1.36) * CELL)
    size = max(PATCH, size // STRIDE * STRIDE + PATCH - STRIDE)
    coords, counts, neighbour = make_objects(size, rng)
    data = make_views(size, coords, counts, neighbour, rng)
    np.savez(path, **data)
    return dict(detections=len(data["obj"]), objects=int(data["n_objects"]), raster=f"{size} x {size}",
                windows=int((-(-(size - PATCH) // STRIDE) + 1) ** 2), blobs=int((data["obj"] < 0).sum()))


RUN = r"""
import gc, json, sys, time
import numpy as np, shapely
sys.path.insert(0, {repo!r})
from tiler.merge import union_groups, merge_group_geometries, merge_group_scores, group_leaders, nms


def mem(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024


d = dict(np.load({path!r}, allow_pickle=True))
g = shapely.from_wkb(d.pop("wkb"))
score, cls, win, wbox, seam = d["score"], d["class_id"], d["window"], d["window_box"], d["on_seam"]
gc.collect()
rss0 = mem("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here on: the merge's own
out = dict(n=len(g), rss_loaded_mb=rss0)
if {method!r} == "union":
    t0 = time.perf_counter()
    order, offsets = union_groups(g, score, cls, win, wbox, threshold=0.5, metric="ios", demote=seam)
    t1 = time.perf_counter()
    merged = merge_group_geometries(g, order, offsets, kind="polygon", threshold=0.5, metric="ios", demote=seam)
    s = merge_group_scores(score, order, offsets)
    c = cls[group_leaders(order, offsets)]
    t2 = time.perf_counter()
    obj = d["obj"]
    grp = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    real = obj[order] >= 0  # blobs (-1) belong to two houses: left out of the tallies
    mo, grp = obj[order][real], grp[real]
    pure = np.ones(len(offsets) - 1, bool)
    pure[grp[1:][(grp[1:] == grp[:-1]) & (mo[1:] != mo[:-1])]] = False
    per_obj = np.unique(np.c_[mo, grp], axis=0)[:, 0]
    split = np.bincount(per_obj) > 1
    sizes = np.diff(offsets)
    types = shapely.get_type_id(merged)
    out.update(groups_s=t1 - t0, geometries_s=t2 - t1, total_s=t2 - t0, groups=len(sizes),
               multi_member_groups=int((sizes > 1).sum()), largest_group=int(sizes.max()),
               pure_groups=float(pure.mean()), objects_split=int(split.sum()),
               objects_seen=int(len(np.unique(mo))), valid=bool(shapely.is_valid(merged).all()),
               polygonal=bool(np.isin(types, (3, 6)).all()))
else:
    t0 = time.perf_counter()
    keep = nms(g, score, cls, threshold=0.5, metric="ios", class_agnostic=False, demote=seam)
    out.update(total_s=time.perf_counter() - t0, kept=len(keep))
out["peak_rss_mb"] = mem("VmHWM")
print(json.dumps(out))
"""


def run(method: str, path: Path) -> dict:
    code = RUN.format(repo=str(REPO), path=str(path), method=method)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000, help="about how many detections to generate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-nms", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dets.npz"
        t = time.perf_counter()
        info = generate(args.n, args.seed, path)
        print(f"generated {info['detections']} detections of {info['objects']} objects ({info['blobs']} blobs "
              f"of two houses), raster {info['raster']}, {info['windows']} windows, in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        u = run("union", path)
        print(f"union: {u['total_s']:.2f} s (groups {u['groups_s']:.2f} s + geometries {u['geometries_s']:.2f} s), "
              f"peak RSS {u['peak_rss_mb']:.0f} MB ({u['rss_loaded_mb']:.0f} MB with just the detections loaded)")
        print(f"  {u['groups']} groups ({u['multi_member_groups']} of several detections, largest "
              f"{u['largest_group']}); {u['pure_groups']:.4%} hold one object; {u['objects_split']} of "
              f"{u['objects_seen']} objects split over several groups; valid {u['valid']}, "
              f"polygonal {u['polygonal']}", flush=True)
        if not args.skip_nms:
            s = run("nms", path)
            print(f"nms:   {s['total_s']:.2f} s, peak RSS {s['peak_rss_mb']:.0f} MB "
                  f"({s['rss_loaded_mb']:.0f} MB with just the detections loaded), {s['kept']} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
