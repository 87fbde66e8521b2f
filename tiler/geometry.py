"""Geometry helpers shared by the stages that make, merge and write geometries (numpy and shapely only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely


def geometry_array(geoms: Any) -> np.ndarray:
    """Return a 1-D object array of geometries (shapely needs object dtype)."""
    if isinstance(geoms, np.ndarray) and geoms.dtype == object and geoms.ndim == 1:
        return geoms
    seq = list(geoms)
    out = np.empty(len(seq), dtype=object)
    out[:] = seq
    return out


def polygonal_parts(geoms: np.ndarray) -> np.ndarray:
    """Each geometry reduced to its polygonal part: Polygons and MultiPolygons as they are, the
    polygons of a GeometryCollection gathered (a repair can leave lines and points beside them, which
    GEOS overlay rejects as mixed-dimension input), anything else an empty Polygon. Missing stays None."""
    geoms = np.asarray(geoms, dtype=object)
    kind = shapely.get_type_id(geoms)
    odd = np.flatnonzero((kind >= 0) & (kind != 3) & (kind != 6))
    if len(odd) == 0:
        return geoms
    parts, owner = shapely.get_parts(geoms[odd], return_index=True)
    parts, sub = shapely.get_parts(parts, return_index=True)  # a collection may hold MultiPolygons
    owner = owner[sub]
    keep = (shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)
    fixed = np.empty(len(odd), dtype=object)
    fixed[:] = shapely.Polygon()
    if keep.any():
        polys = shapely.multipolygons(parts[keep], indices=owner[keep])  # one per owner up to the last
        fixed[: len(polys)] = polys
        single = np.flatnonzero(shapely.get_num_geometries(fixed) == 1)
        fixed[single] = shapely.get_geometry(fixed[single], 0)
    out = geoms.copy()
    out[odd] = fixed
    return out


def box_corners(xyxy: np.ndarray) -> np.ndarray:
    """Axis-aligned boxes (n, 4) x0 y0 x1 y1 as (n, 4, 2) float64 corners: (x0, y0), (x1, y0), (x1, y1), (x0, y1)."""
    x0, y0, x1, y1 = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4).T
    return np.stack([np.stack(c, 1) for c in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], 1)
