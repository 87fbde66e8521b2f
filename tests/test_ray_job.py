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
