"""Fault tolerance on a real Ray cluster: a predictor actor dying mid-batch, and a worker node removed
mid-job, must both leave the job complete with output identical to a clean run."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from tiler import TileJob  # noqa: E402
from tiler.runners.ray import CRASH_INIT_ONCE_ENV, CRASH_ONCE_ENV  # noqa: E402
from tiler.synth import SceneSpec, write_scene  # noqa: E402

from .helpers import features, ray_cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiler-detect.pt"
PARAMS = dict(patch_size=320, overlap=0.25, threads=1, batch_size=2, progress=False)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cluster():
    yield from ray_cluster(1, {"num_cpus": 1}, {"num_cpus": 1})


@pytest.fixture(scope="module")
def scene_and_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    tif, _ = write_scene(SceneSpec(1200, 1200, seed=808), folder / "scene.tif")
    ref = folder / "reference.geojson"
    TileJob(tif, MODEL, runner="local", out=ref, **PARAMS).run()
    return tif, features(ref)


def test_actor_killed_mid_batch(cluster, scene_and_reference, tmp_path, monkeypatch):
    tif, reference = scene_and_reference
    crash_marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(crash_marker))  # forwarded to the actors by the runner
    out = tmp_path / "out.geojson"
    result = TileJob(tif, MODEL, runner="ray", workers=1, out=out, **PARAMS).run()
    assert crash_marker.exists(), "the test hook did not kill an actor"
    assert features(out) == reference
    assert result.stats.windows_run == result.stats.windows_planned
    assert result.stats.actor_restarts == 1  # the restarted actor reported itself


def test_actor_dying_while_it_starts(cluster, scene_and_reference, tmp_path, monkeypatch):
    """An actor whose process dies in its constructor (before it ran anything) is restarted: the job completes,
    identical."""
    tif, reference = scene_and_reference
    crash_marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_INIT_ONCE_ENV, str(crash_marker))
    out = tmp_path / "out.geojson"
    result = TileJob(tif, MODEL, runner="ray", workers=1, out=out, **PARAMS).run()
    assert crash_marker.exists(), "the test hook did not kill an actor"
    assert features(out) == reference
    assert result.stats.windows_run == result.stats.windows_planned


def test_worker_node_removed_mid_job(cluster, scene_and_reference, tmp_path):
    tif, reference = scene_and_reference
    state = {"removed": False}

    def remove_a_node(done: int, total: int) -> None:
        if not state["removed"] and done > 0:
            # take a worker node away while batches are in flight; the autoscaler's role, adding
            # capacity back, is played by adding a fresh node
            cluster.remove_node(cluster.tiler_workers[0])
            cluster.tiler_workers[0] = cluster.add_node(num_cpus=1)
            state["removed"] = True
            state["at"] = done

    out = tmp_path / "out.geojson"
    TileJob(tif, MODEL, runner="ray", workers=2, out=out, **PARAMS).run(on_progress=remove_a_node)
    assert state["removed"] and state["at"] < 25, state
    assert features(out) == reference

