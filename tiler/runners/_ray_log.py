"""The one line Ray prints in every normal job, kept off the driver's stderr.

Ray Data passes each actor of a pool its map transformer by reference (`ray.put`), and Ray's core worker
then logs, at error level, from C++ straight to file descriptor 2, that an actor with `max_restarts` > 0 and
constructor arguments in the object store may fail to restart if those are lost (ray-project/ray#53727).
The driver holds that reference for the whole job, so restarts work (tests/test_ray_faults.py kills an actor
mid-job and gets the same output); the line only alarms users. Lowering Ray's C++ log level would also hide
real errors, and prints a line of its own. So, while a job runs on Ray, fd 2 goes through a pipe and a thread
that copies everything to the real stderr except that line. Started after Ray is up, so Ray's own processes
keep the real stderr.
"""

from __future__ import annotations

import os
import re
import sys
import threading

_NOISE = re.compile(rb"\[[^\]\n]*\] core_worker\.cc:\d+: Actor with class name: [^\n]*"
                    rb"has constructor arguments in the object store[^\n]*\n")


class StderrFilter:
    """`start()` routes fd 2 through the filter, `stop()` restores it (idempotent)."""

    def __init__(self) -> None:
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "StderrFilter":
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        self._saved = os.dup(2)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end, self._saved), daemon=True,
                                        name="tiler-stderr-filter")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, 2)  # closes the pipe's only write end: the thread sees end of file
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self._saved)
        self._saved, self._thread = None, None

    @staticmethod
    def _pump(read_end: int, out: int) -> None:
        # Ray writes each log line with one write() well under PIPE_BUF, so a line arrives whole in one read.
        # Whatever happens here, the pipe is drained to its end: a writer must never block on a full pipe.
        try:
            while chunk := os.read(read_end, 65536):
                data = memoryview(_NOISE.sub(b"", chunk))
                while data:
                    data = data[os.write(out, data):]
        except OSError:
            while os.read(read_end, 65536):
                pass
        finally:
            os.close(read_end)
