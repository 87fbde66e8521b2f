"""The embedded Ray never outlives its driver, even one killed outright (SIGKILL).

Its own module: a module-scoped in-process cluster elsewhere (test_ray.py, test_ray_faults.py) would be a Ray
running on this machine, which `--runner ray` joins instead of starting its own."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")

from tiler.synth import SceneSpec, write_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiler-detect.pt"

pytestmark = pytest.mark.timeout(900)


def test_driver_killed_mid_job_leaves_no_ray_process_behind(tmp_path):
    """SIGKILL to a `tiler predict --runner ray` driver mid-job: within seconds no process of its embedded Ray
    (every descendant the driver had, daemons and workers alike) is still running, and no output is written."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    tif, _ = write_scene(SceneSpec(4096, 4096, seed=97), tmp_path / "scene.tif")  # a minute of work at least
    out = tmp_path / "out.geojson"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", YOLO_OFFLINE="1")
    driver = subprocess.Popen([str(Path(sys.executable).parent / "tiler"), "predict", str(tif), "--model", str(MODEL),
                               # 160 px windows, one per batch: about 20 s of work locally (bf16 here), so the
                               # job is still running when the signal comes
                               "--out", str(out), "--patch-size", "160", "--batch-size", "1", "--threads", "1",
                               "--runner", "ray", "--no-progress"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours: set[psutil.Process] = set()
    deadline = time.time() + 240
    try:
        # wait until Ray runs worker processes (ray::...), i.e. the pipeline has started
        while time.time() < deadline and driver.poll() is None:
            ours |= set(psutil.Process(driver.pid).children(recursive=True))
            if any(" ".join(_cmdline(p)).startswith("ray::") for p in ours):
                break
            time.sleep(0.5)
        assert driver.poll() is None, "the job ended before it could be killed mid-way"
        time.sleep(2)
        ours |= set(psutil.Process(driver.pid).children(recursive=True))
        assert len(ours) >= 3  # gcs, raylet, workers...
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    leftover = _reap_leftovers(ours)
    assert not leftover, leftover
    assert not out.exists()


def _reap_leftovers(ours, seconds: float = 30) -> list[str]:
    """The command lines of `ours` still running after `seconds`; those are then killed, by PID (our own
    leftovers only), so that a failure does not leak them into later tests."""
    import time

    deadline = time.time() + seconds
    alive = ours
    while time.time() < deadline:
        alive = {p for p in ours if _running(p)}
        if not alive:
            break
        time.sleep(1)
    leftover = [" ".join(_cmdline(p))[:80] for p in alive]
    for p in alive:
        p.kill()
    return leftover


def _running(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p) -> list[str]:
    import psutil

    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


@pytest.mark.parametrize("runner", ["ray", "local"])
def test_ctrl_c_mid_job_exits_130_with_no_output_and_no_process_left(tmp_path, runner):
    """Ctrl-C (SIGINT to the job's process group, as a terminal sends it) mid-job: exit status 130, one line
    on stderr and no traceback, no output file, and none of the driver's processes left a few seconds later."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    tif, _ = write_scene(SceneSpec(4096, 4096, seed=98), tmp_path / "scene.tif")
    out = tmp_path / "out.geojson"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", YOLO_OFFLINE="1")
    driver = subprocess.Popen([str(Path(sys.executable).parent / "tiler"), "predict", str(tif), "--model", str(MODEL),
                               # 160 px windows, one per batch: about 20 s of work locally (bf16 here), so the
                               # job is still running when the signal comes
                               "--out", str(out), "--patch-size", "160", "--batch-size", "1", "--threads", "1",
                               "--runner", runner, "--no-progress"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True,  # its own process group, as a shell gives a job
                              # and SIGINT handled as in a terminal: a test run started in the background
                              # (`cmd &` in a script) inherits SIGINT ignored, and exec keeps that
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ours: set[psutil.Process] = set()
    try:
        # mid-job: Ray's workers run (ray::...), or the local job has loaded its model and is predicting
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            ours |= set(psutil.Process(driver.pid).children(recursive=True))
            if runner == "local" or any(" ".join(_cmdline(p)).startswith("ray::") for p in ours):
                break
            time.sleep(0.5)
        time.sleep(8)
        assert driver.poll() is None, "the job ended before it could be interrupted"
        ours |= set(psutil.Process(driver.pid).children(recursive=True))
        os.killpg(driver.pid, signal.SIGINT)
        _, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    leftover = _reap_leftovers(ours)
    assert driver.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("tiler: interrupted; --resume continues from the checkpoints in "), stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert not leftover, leftover
    # no output, only the checkpoints a --resume continues from
    assert not out.exists() and [p.name for p in tmp_path.glob("out*")] == ["out.geojson.tiler-work"]


def test_normal_ray_job_prints_no_ray_log_lines(tmp_path):
    """A normal `tiler predict --runner ray` prints its summary and nothing from Ray: in particular not the
    core worker's error-level line about actors with constructor arguments in the object store, which every
    Ray Data actor pool triggers (kept off stderr by runners/_ray_log.py)."""
    import os
    import subprocess
    import sys

    tif, _ = write_scene(SceneSpec(640, 640, seed=3), tmp_path / "scene.tif")
    out = tmp_path / "out.geojson"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", YOLO_OFFLINE="1")
    proc = subprocess.run([str(Path(sys.executable).parent / "tiler"), "predict", str(tif), "--model", str(MODEL),
                           "--out", str(out), "--patch-size", "320", "--runner", "ray", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    assert proc.stdout.startswith("tiler: ") and "objects" in proc.stdout and len(proc.stdout.splitlines()) == 1
    assert out.exists()
