"""Session-wide test hooks."""

from __future__ import annotations

import gc


def pytest_sessionfinish(session, exitstatus):
    # Objects kept alive only by reference cycles (a test's caught exception holds the frames of the job it
    # stopped) would otherwise be finalised while the interpreter shuts down, after extension modules such as
    # GDAL's may be gone. One CI run ended in a segmentation fault after every test had passed; collect them here.
    gc.collect()
