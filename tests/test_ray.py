"""The Ray runner on a real multi-node Ray cluster (ray.cluster_utils.Cluster): same output as in-process.

The cluster has a head and two workers, one of them with a fake GPU: Ray schedules GPU actors there, and the
actor falls back to the CPU because CUDA is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from tiler import TileJob  # noqa: E402
from tiler.errors import WindowReadError  # noqa: E402
from tiler.synth import SceneSpec, write_scene  # noqa: E402

from .helpers import corrupt_tif, features, ray_cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DOTA_IMAGE = SHARED / "data" / "dota" / "P0706.png"
DOTA_MODEL = SHARED / "models" / "yolov8n-obb.pt"
needs_shared = pytest.mark.skipif(not DOTA_IMAGE.exists() or not DOTA_MODEL.exists(), reason="../shared absent")
# both runners must use the same torch threads and batches: conv results differ in the last bits otherwise
SAME = dict(threads=1, batch_size=4, progress=False)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # head + two workers, one with a fake GPU: Ray schedules by the resource, CUDA is absent. The cluster's
    # processes have an export cache of their own, as on other machines (this process's is not changed).
    node_cache = tmp_path_factory.mktemp("node-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TILER_CACHE_DIR", str(node_cache))
        nodes = ray_cluster(2, {"num_cpus": 1}, {"num_cpus": 1, "num_gpus": 1})
        started = next(nodes)
    started.tiler_node_cache = node_cache
    yield started
    next(nodes, None)  # stops the cluster


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    tif, _ = write_scene(SceneSpec(1280, 1280, seed=515, nodata_margin=400),
                         tmp_path_factory.mktemp("rayscene") / "scene.tif")
    return tif


def run_both(tmp_path, source, model, **params):
    local = TileJob(source, model, runner="local", out=tmp_path / "local.geojson", **SAME, **params).run()
    remote = TileJob(source, model, runner="ray", out=tmp_path / "ray.geojson", **SAME, **params).run()
    return local, remote


@needs_shared
def test_dota_ray_equals_local(cluster, tmp_path):
    local, remote = run_both(tmp_path, DOTA_IMAGE, DOTA_MODEL, patch_size=640, overlap=0.25)
    assert remote.stats.runner == "ray" and local.stats.runner == "local"
    assert len(local) > 500
    assert features(tmp_path / "ray.geojson") == features(tmp_path / "local.geojson")
    assert remote.stats.raw_detections == local.stats.raw_detections


def test_scene_ray_equals_local_with_fake_gpu_actor(cluster, scene, tmp_path):
    """GPU actors (num_gpus=1) land on the fake-GPU node and predict on its CPU."""
    local, remote = run_both(tmp_path, scene, REPO / "models" / "tiler-obb.pt", patch_size=320, overlap=0.25,
                             gpus_per_worker=1.0)
    assert len(local) > 30
    assert features(tmp_path / "ray.geojson") == features(tmp_path / "local.geojson")
    # nodata windows are skipped on the driver and never shipped
    assert remote.stats.windows_skipped == local.stats.windows_skipped > 0
    assert remote.stats.windows_run == local.stats.windows_run
    # the GPU actors were never given reading to do: every batch was read by a separate CPU task
    assert remote.stats.batches_read_by_model_process == 0
    fc = json.loads((tmp_path / "ray.geojson").read_text())
    assert "crs" not in fc and fc["features"][0]["geometry"]["type"] == "Polygon"


def test_corrupt_window_is_reported_with_its_id(cluster, tmp_path):
    path, window_id = corrupt_tif(tmp_path / "corrupt.tif")
    out = tmp_path / "out.geojson"
    with pytest.raises(WindowReadError) as info:
        TileJob(path, REPO / "models" / "tiler-detect.pt", runner="ray", patch_size=256, overlap=0, out=out,
                **SAME).run()
    assert info.value.window_id == window_id and f"window {window_id}" in str(info.value)
    assert not out.exists()


def test_progress_callback_counts_every_window(cluster, scene, tmp_path):
    seen = []
    result = TileJob(scene, REPO / "models" / "tiler-detect.pt", runner="ray", patch_size=320, **SAME).run(
        on_progress=lambda done, total: seen.append((done, total)))
    total = result.stats.windows_planned - result.stats.windows_skipped
    assert seen and seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_segmentation_with_union_and_masks_ray_equals_local(cluster, scene, tmp_path):
    """Exact outlines (holes, parts), the union merge and per-object masks travel through Ray unchanged."""
    import numpy as np

    local, remote = run_both(tmp_path, scene, REPO / "models" / "tiler-segment.pt", patch_size=320, overlap=0.25,
                             merge="union", keep_masks=True)
    assert len(local) > 30
    assert remote.stats.precision == local.stats.precision  # auto: each actor chose what this process chose
    assert features(tmp_path / "ray.geojson") == features(tmp_path / "local.geojson")
    a, b = local.detections, remote.detections
    assert a.masks is not None and len(a.masks) == len(a)
    np.testing.assert_array_equal(a.masks.boxes, b.masks.boxes)
    np.testing.assert_array_equal(a.masks.data, b.masks.data)
    # CPU actors: Ray Data fuses the read tasks into them (compare the fake-GPU test, where none are)
    assert remote.stats.batches_read_by_model_process > 0


def test_coarse_pass_ray_equals_local(cluster, tmp_path):
    """The coarse pass's windows (read decimated, ids after the fine grid's) and its merge are the same on Ray."""
    tif, _ = write_scene(SceneSpec(1280, 1280, seed=508, large_objects=True), tmp_path / "large.tif")
    local, remote = run_both(tmp_path, tif, REPO / "models" / "tiler-segment.pt", patch_size=320, overlap=0.25,
                             merge="union", coarse_factor=4)
    assert features(tmp_path / "ray.geojson") == features(tmp_path / "local.geojson")
    fine_windows = 5 * 5  # 1280 px at 320 px, 25 %; the coarse pass: one 1280 px window, id 25
    assert local.stats.windows_planned == remote.stats.windows_planned == fine_windows + 1
    windows = [f["properties"]["window"] for f in json.loads((tmp_path / "ray.geojson").read_text())["features"]]
    assert fine_windows in windows  # the large building (508 px across) comes from the coarse window


def test_int8_backend_ray_equals_local(cluster, scene, tmp_path, monkeypatch):
    """The driver quantises the model once, on the job's windows, and ships it to the actors, which put it in
    their node's own export cache and load it from there (they have no calibration patches to make it)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TILER_CACHE_DIR", str(cache))
    local, remote = run_both(tmp_path, scene, REPO / "models" / "tiler-obb.pt", patch_size=320, overlap=0.25,
                             backend="openvino-int8")
    assert remote.stats.backend == local.stats.backend == "openvino-int8"
    assert len(local) > 30
    assert features(tmp_path / "ray.geojson") == features(tmp_path / "local.geojson")
    made, = (p for p in cache.glob("exports/*-openvino-int8-*") if p.is_dir())
    shipped, = (p for p in cluster.tiler_node_cache.glob("exports/*-openvino-int8-*") if p.is_dir())
    assert shipped.name == made.name
    files = sorted(f.relative_to(made) for f in made.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(shipped) for f in shipped.rglob("*") if f.is_file())
    assert all((made / f).read_bytes() == (shipped / f).read_bytes() for f in files if f.name != "tiler-export.json")
