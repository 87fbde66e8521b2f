"""`ray job submit` against a head started here with `ray start --head` on loopback, with token auth.

The test starts the head itself (`--block`, so the head's processes live and die with that one process)
and stops it by its PID; it touches no other Ray processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

from tiler.synth import SceneSpec, write_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(900)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def head(tmp_path):
    gcs, dash, client, agent_grpc, agent_http, metrics = free_ports(6)
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex,  # the same for every Ray process
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", YOLO_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "head.log", "w")
    temp_dir = tempfile.mkdtemp(prefix="tr", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--dashboard-agent-listen-port={agent_http}",
         f"--metrics-export-port={metrics}", "--num-cpus=2", "--include-dashboard=true",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(tmp_path / 'head.log').read_text()[-2000:]}")
            r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
            time.sleep(3)
        else:
            raise RuntimeError("the Ray head's job server did not come up")
        yield address, env
    finally:
        # our own head only: SIGTERM to the `ray start --block` process group we started
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_writes_output(head, tmp_path):
    address, env = head
    tif, _ = write_scene(SceneSpec(1024, 1024, seed=99), tmp_path / "scene.tif")
    out = tmp_path / "result.geojson"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"source": str(tif), "model": str(REPO / "models" / "tiler-detect.pt"),
                                    "out": str(out), "patch_size": 320, "overlap": 0.25, "batch_size": 4}))
    r = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
                        "--", "python", "jobs/predict.py", str(spec)],
                       env=env, capture_output=True, text=True, timeout=800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    fc = json.loads(out.read_text())
    assert len(fc["features"]) > 20
    assert "(ray)" in r.stdout  # the job ran on the Ray runner, and printed its summary


def test_job_without_token_is_refused(head, tmp_path):
    address, env = head
    env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN",)}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0


def _gcs_ports() -> set[str]:
    from ray._private import services

    services._cached_find_gcs_addresses.cache_clear()
    return {a.rsplit(":", 1)[-1] for a in services.find_gcs_addresses()}


def test_local_head_is_joined_and_its_stale_record_ignored(tmp_path):
    """A head from `ray start --head` on this machine is joined by `--runner ray`; once it is killed (SIGKILL:
    Ray's record of it stays behind), the next job starts its own Ray instead of failing to join the dead head
    (before: "When connecting to an existing cluster, num_cpus and num_gpus must not be provided")."""
    gcs, client, agent_grpc, agent_http, metrics = free_ports(5)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="disabled", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", YOLO_OFFLINE="1")
    tif, _ = write_scene(SceneSpec(1024, 1024, seed=98), tmp_path / "scene.tif")
    log = open(tmp_path / "head.log", "w")
    # the default temp dir on purpose: that is where Ray records the head for `ray.init` to find
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         f"--ray-client-server-port={client}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--dashboard-agent-listen-port={agent_http}", f"--metrics-export-port={metrics}", "--num-cpus=2",
         "--include-dashboard=false"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def predict(name):
        model = str(REPO / "models" / "tiler-detect.pt")
        return subprocess.run([str(BIN / "tiler"), "predict", str(tif), "--model", model, "--out", str(tmp_path / name),
                               "--patch-size", "320", "--runner", "ray", "--no-progress"],
                              env=env, capture_output=True, text=True, timeout=400)

    try:
        deadline = time.time() + 120
        while str(gcs) not in _gcs_ports():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start failed: {(tmp_path / 'head.log').read_text()[-2000:]}")
            time.sleep(2)
        time.sleep(3)
        joined = predict("joined.geojson")
        assert joined.returncode == 0, joined.stderr[-2000:]
        assert "joining the Ray head running on this machine at" in joined.stderr and f":{gcs}" in joined.stderr
        assert proc.poll() is None  # the head outlives the job: it was joined, not started or stopped by it
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # our own head's process group only
        proc.wait()
        log.close()
    deadline = time.time() + 30
    while str(gcs) in _gcs_ports() and time.time() < deadline:
        time.sleep(1)
    assert str(gcs) not in _gcs_ports()
    own = predict("own.geojson")
    assert own.returncode == 0, own.stderr[-2000:]
    assert "joining" not in own.stderr and "(ray)" in own.stdout
    a, b = (json.loads((tmp_path / n).read_text())["features"] for n in ("joined.geojson", "own.geojson"))
    assert len(a) > 20 and a == b
