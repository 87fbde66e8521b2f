"""FlatGeobuf for quadrilaterals (detect and OBB outputs), written with numpy, spatial index included.

GDAL's FlatGeobuf writer takes 4.6-5.4 s for a million features with its index (bench/README.md); this one
writes the same file layout (magic bytes, header, packed Hilbert R-tree, size-prefixed feature flatbuffers)
from the vertex array. The header and one feature per class are built with the flatbuffers library; the
million features are copies of those templates with their coordinates and numbers filled in by numpy. Every
feature has the same byte size (the longest template's, trailing bytes unused), so the file is one (n, size)
array. Other geometries (holes, several parts, splits at the antimeridian) go through GDAL (`ogr.py`).

Layout: https://flatgeobuf.org (header.fbs, feature.fbs, packedrtree). GDAL reads the result back (tested).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import PIXEL_SPACE_NOTE, atomic_path
from .features import FeatureSet

MAGIC = b"fgb\x03fgb\x00"
NODE_SIZE = 16
_POLYGON = 3
# FlatGeobuf column types
_INT, _LONG, _DOUBLE, _STRING = 5, 7, 10, 11


def _columns(fs: FeatureSet) -> list[tuple[str, int]]:
    cols = [("class_id", _INT), ("class_name", _STRING), ("score", _DOUBLE), ("x0", _DOUBLE), ("y0", _DOUBLE),
            ("x1", _DOUBLE), ("y1", _DOUBLE)]
    if fs.provenance is not None:
        cols += [("source", _STRING), ("window", _LONG), ("model", _STRING), ("model_sha256", _STRING),
                 ("tiler_version", _STRING)]
    return cols


def _header(fs: FeatureSet, n: int, envelope: np.ndarray, meta: dict | None = None) -> bytes:
    """The header; a pixel-space output says so in its description and metadata (JSON, as GDAL shows it)."""
    import json

    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.ForceDefaults(True)
    cols = []
    for name, kind in _columns(fs):
        s = b.CreateString(name)
        b.StartObject(11)
        b.PrependUOffsetTRelativeSlot(0, s, 0)
        b.PrependUint8Slot(1, kind, 0)
        cols.append(b.EndObject())
    b.StartVector(4, len(cols), 4)
    for c in reversed(cols):
        b.PrependUOffsetTRelative(c)
    columns = b.EndVector()
    crs = None
    if fs.crs is not None:
        wkt = b.CreateString(fs.crs.to_wkt())
        auth = fs.crs.to_authority()
        org = b.CreateString(auth[0]) if auth else None
        b.StartObject(6)
        if org is not None:
            b.PrependUOffsetTRelativeSlot(0, org, 0)
            if auth[1].isdigit():
                b.PrependInt32Slot(1, int(auth[1]), 0)
        b.PrependUOffsetTRelativeSlot(4, wkt, 0)
        crs = b.EndObject()
    info = dict(meta or {})
    if fs.crs is None:
        info.update(coordinate_space="pixel", coordinate_space_note=PIXEL_SPACE_NOTE)
    metadata = b.CreateString(json.dumps({"tiler": info}))
    description = b.CreateString("tiler detections" + (" in pixel coordinates" if fs.crs is None else ""))
    name = b.CreateString("detections")
    env = _doubles(b, envelope)
    b.StartObject(14)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, env, 0)
    b.PrependUint8Slot(2, _POLYGON, 0)
    b.PrependUOffsetTRelativeSlot(7, columns, 0)
    b.PrependUint64Slot(8, n, 0)
    b.PrependUint16Slot(9, NODE_SIZE, 0)
    if crs is not None:
        b.PrependUOffsetTRelativeSlot(10, crs, 0)
    b.PrependUOffsetTRelativeSlot(12, description, 0)
    b.PrependUOffsetTRelativeSlot(13, metadata, 0)
    b.FinishSizePrefixed(b.EndObject())
    return bytes(b.Output())


def _doubles(b, values: np.ndarray):
    """A flatbuffers vector of float64."""
    b.StartVector(8, len(values), 8)
    for v in reversed(values.tolist()):
        b.PrependFloat64(v)
    return b.EndVector()


def _properties_template(fs: FeatureSet, class_name: str) -> tuple[bytes, dict[str, int]]:
    """The property bytes of a feature of this class with every number zero, and where each number goes."""
    out = bytearray()
    where: dict[str, int] = {}
    prov = fs.provenance or {}
    for k, (name, kind) in enumerate(_columns(fs)):
        out += np.uint16(k).tobytes()
        if kind == _STRING:
            text = (class_name if name == "class_name" else str(prov[name])).encode()
            out += np.uint32(len(text)).tobytes() + text
        else:
            where[name] = len(out)
            out += bytes(4 if kind == _INT else 8)
    return bytes(out), where


def _feature_template(props: bytes) -> tuple[bytes, int, int]:
    """A size-prefixed Feature flatbuffer with a 5-point polygon ring and `props`: (bytes, offset of the 10
    coordinates, offset of the properties), offsets counted from the start of the prefixed buffer."""
    import flatbuffers

    marker = np.arange(1, 11, dtype="<f8") * 1.0e300  # coordinates nobody writes, to find them again
    b = flatbuffers.Builder(256)
    xy = _doubles(b, marker)
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(1, xy, 0)
    geometry = b.EndObject()
    b.StartVector(1, len(props), 1)
    for byte in reversed(props):
        b.PrependUint8(byte)
    properties = b.EndVector()
    b.StartObject(3)
    b.PrependUOffsetTRelativeSlot(0, geometry, 0)
    b.PrependUOffsetTRelativeSlot(1, properties, 0)
    b.FinishSizePrefixed(b.EndObject())
    buf = bytes(b.Output())
    at_xy = buf.find(marker.tobytes())
    at_props = buf.find(props) if props else len(buf)
    if at_xy < 0 or at_props < 0:  # pragma: no cover  (the flatbuffers library changed its layout)
        raise RuntimeError("cannot locate the template's fields")
    return buf, at_xy, at_props


def hilbert(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The Hilbert index of 16-bit cell coordinates (the public-domain algorithm of rawrunprotected's
    hilbert_curves, as flatgeobuf uses it), vectorised."""
    x, y = x.astype(np.uint32), y.astype(np.uint32)
    a = x ^ y
    b = 0xFFFF ^ a
    c = 0xFFFF ^ (x | y)
    d = x & (y ^ 0xFFFF)
    A, B = a | (b >> 1), (a >> 1) ^ a
    C, D = ((c >> 1) ^ (b & (d >> 1))) ^ c, ((a & (c >> 1)) ^ (d >> 1)) ^ d
    for shift in (2, 4):
        a, b, c, d = A, B, C, D
        A = (a & (a >> shift)) ^ (b & (b >> shift))
        B = (a & (b >> shift)) ^ (b & ((a ^ b) >> shift))
        C = c ^ ((a & (c >> shift)) ^ (b & (d >> shift)))
        D = d ^ ((b & (c >> shift)) ^ ((a ^ b) & (d >> shift)))
    a, b, c, d = A, B, C, D
    C = c ^ ((a & (c >> 8)) ^ (b & (d >> 8)))
    D = d ^ ((b & (c >> 8)) ^ ((a ^ b) & (d >> 8)))
    a, b = C ^ (C >> 1), D ^ (D >> 1)
    i0 = x ^ y
    i1 = b | (0xFFFF ^ (i0 | a))
    return (_interleave(i1) << 1) | _interleave(i0)


def _interleave(v: np.ndarray) -> np.ndarray:
    v = (v | (v << 8)) & 0x00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F
    v = (v | (v << 2)) & 0x33333333
    return (v | (v << 1)) & 0x55555555


def packed_rtree(bounds: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The packed R-tree nodes (root first, leaves last) of items already in Hilbert order: a structured
    array of (min_x, min_y, max_x, max_y, offset); a parent's offset is its first child's node index."""
    n = len(bounds)
    level_sizes = [n]
    while True:
        level_sizes.append(-(-level_sizes[-1] // NODE_SIZE))
        if level_sizes[-1] == 1:
            break
    total = sum(level_sizes)
    starts, end = [], total
    for size in level_sizes:  # leaves at the end of the array, the root at 0
        end -= size
        starts.append(end)
    nodes = np.zeros(total, dtype=[("min_x", "<f8"), ("min_y", "<f8"), ("max_x", "<f8"), ("max_y", "<f8"),
                                   ("offset", "<u8")])
    leaf = slice(starts[0], starts[0] + n)
    nodes["min_x"][leaf], nodes["min_y"][leaf], nodes["max_x"][leaf], nodes["max_y"][leaf] = bounds.T
    nodes["offset"][leaf] = offsets
    for lvl in range(len(level_sizes) - 1):
        lo, size = starts[lvl], level_sizes[lvl]
        groups = np.arange(lo, lo + size, NODE_SIZE)
        child = nodes[lo:lo + size]
        parent = slice(starts[lvl + 1], starts[lvl + 1] + len(groups))
        rel = groups - lo
        nodes["min_x"][parent] = np.minimum.reduceat(child["min_x"], rel)
        nodes["min_y"][parent] = np.minimum.reduceat(child["min_y"], rel)
        nodes["max_x"][parent] = np.maximum.reduceat(child["max_x"], rel)
        nodes["max_y"][parent] = np.maximum.reduceat(child["max_y"], rel)
        nodes["offset"][parent] = groups
    return nodes


def write_flatgeobuf(path: Path, fs: FeatureSet, meta: dict | None = None, chunk: int = 65536) -> Path:
    """Write `fs` (every feature a convex quadrilateral: `fs.all_convex_quads()`) as FlatGeobuf with its spatial index.
    Features are made and written `chunk` at a time, so memory stays bounded by the chunk, not the file."""
    n = len(fs)
    q = fs.coords.reshape(n, 4, 2)
    bounds = np.hstack([np.minimum(np.minimum(q[:, 0], q[:, 1]), np.minimum(q[:, 2], q[:, 3])),
                        np.maximum(np.maximum(q[:, 0], q[:, 1]), np.maximum(q[:, 2], q[:, 3]))])
    envelope = np.concatenate([bounds[:, :2].min(axis=0), bounds[:, 2:].max(axis=0)])
    # Hilbert order of the box centres over the extent, descending as flatgeobuf sorts
    span = np.maximum(envelope[2:] - envelope[:2], np.finfo(float).tiny)
    cell = np.floor(0xFFFF * ((bounds[:, :2] + bounds[:, 2:]) / 2 - envelope[:2]) / span)
    order = np.argsort(-hilbert(cell[:, 0], cell[:, 1]).astype(np.int64), kind="stable")

    ids = fs.dets.class_id.astype(np.int64)
    templates = {}
    for c in np.unique(ids).tolist():
        props, where = _properties_template(fs, fs.names.get(c, str(c)))
        templates[c] = (*_feature_template(props), where)
    size = max(len(t[0]) for t in templates.values())
    size += -size % 8  # each feature starts 8-byte aligned, as its doubles are aligned inside it
    rows_of = {c: np.frombuffer(buf.ljust(size, b"\0"), dtype=np.uint8).copy() for c, (buf, *_) in templates.items()}
    for row in rows_of.values():  # the size prefix covers the whole padded row: flatbuffers ignore the tail
        row[:4] = np.frombuffer(np.uint32(size - 4).tobytes(), dtype=np.uint8)
    b = fs.bbox_px()
    numbers = {"class_id": ids.astype("<i4"), "score": fs.dets.score.astype("<f8"), "x0": b[:, 0], "y0": b[:, 1],
               "x1": b[:, 2], "y1": b[:, 3], "window": fs.dets.window.astype("<i8")}
    nodes = packed_rtree(bounds[order], np.arange(n, dtype=np.uint64) * size)
    body = np.empty((min(chunk, n), size), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(_header(fs, n, envelope, meta))
        f.write(nodes.tobytes())
        for start in range(0, n, chunk):
            sel = order[start:start + chunk]  # these features, in file order
            m = len(sel)
            for c, (_, at_xy, at_props, where) in templates.items():
                k = np.flatnonzero(ids[sel] == c)
                if not len(k):
                    continue
                src = sel[k]
                body[k] = rows_of[c]
                body[k, at_xy:at_xy + 64] = q[src].astype("<f8").reshape(len(k), 8).view(np.uint8)
                body[k, at_xy + 64:at_xy + 80] = q[src, 0].astype("<f8").view(np.uint8)  # the ring closes
                for name, at in where.items():
                    v = np.ascontiguousarray(numbers[name][src])
                    body[k, at_props + at:at_props + at + v.itemsize] = v.view(np.uint8).reshape(len(k), -1)
            f.write(body[:m].data)
    return path
