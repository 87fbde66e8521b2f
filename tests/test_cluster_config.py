"""cluster.yaml passes Ray's own cluster-config validation (offline), and says what the docs promise."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

pytest.importorskip("ray")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_ray(cluster_config):
    validate_config(prepare_config(copy.deepcopy(cluster_config)))


def test_validation_can_fail(cluster_config):
    bad = copy.deepcopy(cluster_config)
    bad["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError, match="'many' is not of type 'integer'"):
        validate_config(prepare_config(bad))


def test_cluster_yaml_pins_ray_and_enables_token_auth(cluster_config):
    import ray

    assert cluster_config["provider"]["type"] == "aws"
    assert cluster_config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311")
    assert ray.__version__ == "2.60.0"
    starts = " ".join(cluster_config["head_start_ray_commands"] + cluster_config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") >= 2
    assert "/home/ray/.ray/auth_token" in cluster_config["file_mounts"]
    gpu = cluster_config["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith("g5.") and gpu["max_workers"] > gpu["min_workers"]
    setup = " ".join(cluster_config["setup_commands"])
    assert "torch==2.14.1" in setup and "torchvision==0.29.1" in setup
