"""Fate-sharing for the embedded Ray: its processes never outlive the driver that started them.

`ray.shutdown()` stops the embedded cluster when the driver ends normally or by an exception (Ctrl-C too). A
driver killed outright (SIGKILL, the OOM killer) runs no cleanup: Ray's GCS and raylet then go, but the raylet's
agents (DashboardAgent, RuntimeEnvAgent) try to report the raylet's death to the dead GCS with a 60 s RPC
timeout and linger for minutes (about 225 MB). So the Ray runner starts this watcher, in its own session so
that it survives the driver: it keeps the set of the driver's descendant processes up to date while the driver
lives (Ray's processes only: "ray" in their command line) and, once the driver is gone, kills those that are
still running, by PID (checked against their start time, so a reused PID is never hit), then exits. When the
job ends normally the runner stops Ray and then this watcher. It touches no process the driver did not start.

    python -m tiler.runners._reaper DRIVER_PID
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 0.5  # how often the driver's liveness is checked
SCAN_S = 2.0  # how often its descendants are listed
GRACE_S = 3.0  # after the driver is gone: time for Ray's own fate-sharing before the leftovers are killed


def start(driver_pid: int | None = None) -> subprocess.Popen:
    """Start the watcher for `driver_pid` (default: this process), detached from its session."""
    return subprocess.Popen([sys.executable, "-m", "tiler.runners._reaper", str(driver_pid or os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def watch(driver_pid: int) -> None:
    import psutil

    me = os.getpid()
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    known: dict[int, float] = {}  # pid -> create_time
    last_scan = 0.0
    while True:
        try:
            alive = driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        if alive and time.monotonic() - last_scan >= SCAN_S:
            try:
                for p in driver.children(recursive=True):
                    # Ray's own processes only (gcs_server, raylet, ray::* workers, its Python daemons)
                    if p.pid != me and p.pid not in known and any("ray" in part for part in p.cmdline()):
                        known[p.pid] = p.create_time()
            except psutil.Error:
                pass
            last_scan = time.monotonic()
        if not alive:
            break
        time.sleep(POLL_S)
    time.sleep(GRACE_S)
    for pid, created in known.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
