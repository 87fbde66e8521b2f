"""Fate-sharing for the embedded Ray: its processes never outlive the driver that started them.

`ray.shutdown()` stops the embedded cluster when the driver ends normally or by an exception (Ctrl-C too). A
driver killed outright (SIGKILL, the OOM killer) runs no cleanup: Ray's GCS and raylet then go, but the raylet's
agents (DashboardAgent, RuntimeEnvAgent) try to report the raylet's death to the dead GCS with a 60 s RPC
timeout and linger for minutes (about 225 MB). So the Ray runner starts this watcher, in its own session so
that it survives the driver: it keeps the set of the driver's descendant processes up to date while the driver
lives (Ray's processes only: "ray" in their command line) and, once the driver is gone, adds the ones those
started since its last look (workers the raylet spawned in the meantime), then kills those still running, by
PID (checked against their start time, so a reused PID is never hit), then exits. When the job ends normally
the runner stops Ray and then this watcher. It touches no process the driver did not start.

    python -m tiler.runners._reaper DRIVER_PID
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 0.5  # how often the driver's liveness is checked
SCAN_S = 0.5  # how often its descendants are listed (a few ms of /proc reads)
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
            _record(_descendants(driver), known, me)
            last_scan = time.monotonic()
        if not alive:
            break
        time.sleep(POLL_S)
    # workers the raylet started since the last scan are still its children (not the dead driver's): found now,
    # and again after the grace period, from every known process still running
    _record_late_children(known, me)
    time.sleep(GRACE_S)
    _record_late_children(known, me)
    for pid, created in known.items():
        proc = _same_process(pid, created)
        if proc is not None:
            try:
                proc.kill()
            except psutil.Error:
                pass


def _record_late_children(known: dict[int, float], me: int) -> None:
    for pid, created in list(known.items()):
        proc = _same_process(pid, created)
        if proc is not None:
            _record(_descendants(proc), known, me)


def _descendants(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _record(procs, known: dict[int, float], me: int) -> None:
    """Add Ray's own processes (gcs_server, raylet, ray::* workers, its Python daemons) among `procs`; one
    that ends while being looked at is skipped, not the rest of the scan."""
    import psutil

    for p in procs:
        try:
            if p.pid != me and p.pid not in known and any("ray" in part for part in p.cmdline()):
                known[p.pid] = p.create_time()
        except psutil.Error:
            continue


def _same_process(pid: int, created: float):
    """The running process `pid` if it is still the one recorded (not a reused PID, not a zombie), else None."""
    import psutil

    try:
        p = psutil.Process(pid)
        return p if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


if __name__ == "__main__":
    watch(int(sys.argv[1]))
