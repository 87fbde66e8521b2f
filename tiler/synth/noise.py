"""Deterministic, window-independent noise: every value is a pure function of global coordinates and seed."""

from __future__ import annotations

import numpy as np


def _hash_u32(*parts: np.ndarray | int) -> np.ndarray:
    """Vectorised integer hash (xorshift-multiply), stable across platforms."""
    h = np.uint64(0x9E3779B97F4A7C15)
    out = None
    with np.errstate(over="ignore"):  # wrap-around multiplication is the point of a hash
        for p in parts:
            v = np.asarray(p).astype(np.int64).astype(np.uint64)
            if out is None:
                out = v * h
            else:
                out = out ^ (v + np.uint64(0x7F4A7C15) + (out << np.uint64(6)) + (out >> np.uint64(2)))
            out = out ^ (out >> np.uint64(33))
            out = out * np.uint64(0xFF51AFD7ED558CCD)
            out = out ^ (out >> np.uint64(33))
    return (out & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _unit(*parts) -> np.ndarray:
    return _hash_u32(*parts).astype(np.float32) / np.float32(2**32)


def _lattice_noise(xs: np.ndarray, ys: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1) on the grid xs (w,) x ys (h,): a hashed lattice with spacing `scale`,
    smoothstep-interpolated. Only the few lattice nodes under the window are hashed."""
    gx, gy = np.asarray(xs, np.float64) / scale, np.asarray(ys, np.float64) / scale
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = (gx - ix).astype(np.float32), (gy - iy).astype(np.float32)
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep hides the lattice
    lx, ly = np.arange(ix.min(), ix.max() + 2), np.arange(iy.min(), iy.max() + 2)
    nodes = _unit(seed, lx[None, :], ly[:, None])
    jx, jy = ix - lx[0], iy - ly[0]
    top = nodes[np.ix_(jy, jx)] * (1 - fx) + nodes[np.ix_(jy, jx + 1)] * fx
    bottom = nodes[np.ix_(jy + 1, jx)] * (1 - fx) + nodes[np.ix_(jy + 1, jx + 1)] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def _value_noise(xs: np.ndarray, ys: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth noise at scattered points (used for a handful of footprint samples)."""
    gx, gy = np.asarray(xs, np.float64) / scale, np.asarray(ys, np.float64) / scale
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = (gx - ix).astype(np.float32), (gy - iy).astype(np.float32)
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = _unit(seed, ix, iy) * (1 - fx) + _unit(seed, ix + 1, iy) * fx
    bottom = _unit(seed, ix, iy + 1) * (1 - fx) + _unit(seed, ix + 1, iy + 1) * fx
    return top * (1 - fy) + bottom * fy
