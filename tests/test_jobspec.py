"""YAML job specs shared by `tiler predict --config` and jobs/predict.py; runner choice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiler import TileJob
from tiler.cli import main
from tiler.errors import ConfigError
from tiler.synth import SceneSpec, write_scene

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiler-detect.pt"


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    tif, _ = write_scene(SceneSpec(640, 640, seed=12), tmp_path_factory.mktemp("spec") / "s.tif")
    return tif


def test_config_file_and_flags(small_scene, tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    out = tmp_path / "o.geojson"
    spec.write_text(yaml.safe_dump({"source": str(small_scene), "model": str(MODEL), "out": str(out),
                                    "patch-size": 320, "overlap": 0.5, "conf": 0.3}))
    assert main(["predict", "--config", str(spec), "--runner", "local", "--no-progress", "--conf", "0.5"]) == 0
    fc = json.loads(out.read_text())
    assert fc["tiler"]["patch_size"] == [320, 320] and fc["tiler"]["overlap"] == [0.5, 0.5]
    assert min(f["properties"]["score"] for f in fc["features"]) >= 0.5  # the flag won over the file
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("tiler: ")


@pytest.mark.parametrize("content, message", [
    ({"source": "x.tif", "model": "m.pt", "out": "o.geojson", "bogus": 1}, "unknown job parameter"),
    ({"source": "x.tif", "model": "m.pt"}, "--out is required"),
    ("- a list\n- not a mapping\n", "must be a mapping"),
    ("key: [unclosed\n", "not valid YAML"),
])
def test_bad_job_specs(tmp_path, capsys, content, message):
    spec = tmp_path / "job.yaml"
    spec.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    assert main(["predict", "--config", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_job_entrypoint_usage():
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "predict.py")], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_auto_runner_is_in_process_on_one_machine_and_ray_for_a_cluster(small_scene, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    big, _ = write_scene(SceneSpec(2200, 2200, seed=1), tmp_path / "big.tif")
    assert TileJob(small_scene, MODEL, patch_size=320).runner_name() == "local"  # 9 windows
    assert TileJob(big, MODEL, patch_size=320).runner_name() == "local"  # 81 windows: still one machine
    assert TileJob(big, MODEL, patch_size=320, workers=2).runner_name() == "ray"
    assert TileJob(big, MODEL, patch_size=320, workers=1).runner_name() == "local"
    assert TileJob(big, MODEL, patch_size=320, address="auto").runner_name() == "ray"
    assert TileJob(big, MODEL, patch_size=320, address="auto", runner="local").runner_name() == "local"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert TileJob(big, MODEL, patch_size=320).runner_name() == "ray"
    with pytest.raises(ConfigError):
        TileJob(big, MODEL, runner="spark")
