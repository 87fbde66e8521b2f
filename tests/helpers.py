"""Shared test helpers (not tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio


def features(path: Path) -> list[str]:
    """The features of a GeoJSON, canonicalised and sorted: equal lists mean identical outputs."""
    fc = json.loads(Path(path).read_text())
    return sorted(json.dumps(f, sort_keys=True) for f in fc["features"])


def corrupt_tif(path: Path, size: int = 1024, block: int = 256) -> tuple[Path, int]:
    """A tiled GeoTIFF whose block (2, 2) is garbage; returns the path and the id of the 256-px window
    (overlap 0, row-major) that holds it."""
    data = np.random.default_rng(0).integers(1, 255, (3, size, size), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", tiled=True,
                       blockxsize=block, blockysize=block, compress="deflate") as dst:
        dst.write(data)
    with rasterio.open(path) as ds:
        off = int(ds.get_tag_item("BLOCK_OFFSET_2_2", "TIFF", bidx=1))
        n = int(ds.get_tag_item("BLOCK_SIZE_2_2", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[off + 8:off + n - 8] = b"\xff" * (n - 16)
    path.write_bytes(bytes(raw))
    return path, 2 * (size // block) + 2


def corrupt_block(path: Path, bx: int, by: int) -> Path:
    """Overwrite the middle of block (bx, by) of a tiled GeoTIFF with garbage, in place (georeferencing kept)."""
    with rasterio.open(path) as ds:
        off = int(ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=1))
        n = int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1))
    raw = bytearray(Path(path).read_bytes())
    raw[off + 8:off + n - 8] = b"\xff" * (n - 16)
    Path(path).write_bytes(bytes(raw))
    return Path(path)


def ray_cluster(head_cpus: int, *workers: dict):
    """A real multi-node Ray cluster in this process (ray.cluster_utils.Cluster), connected, as a generator
    for module fixtures. Token auth is off for every process of it, consistently."""
    import pytest
    import ray
    from ray.cluster_utils import Cluster

    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus})
    cluster.tiler_workers = [cluster.add_node(**w) for w in workers]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        mp.undo()
