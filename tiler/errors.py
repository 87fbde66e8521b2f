"""Exception types users see. Each carries a one-line message naming the problem."""

from __future__ import annotations

import re


class TilerError(Exception):
    """Base class: anything tiler reports to a user as an error."""


class ConfigError(TilerError, ValueError):
    """A job parameter is invalid (bad value, unknown option, impossible combination)."""


class RasterError(TilerError):
    """The input raster is missing, unreadable or unsuitable."""


class WindowReadError(RasterError):
    """One window of the raster could not be read (corrupt block). Names the window."""

    def __init__(self, window_id: int, x0: int, y0: int, cause: BaseException | str):
        self.window_id, self.x0, self.y0, self.cause_text = window_id, x0, y0, str(cause)
        super().__init__(f"window {window_id} at pixel ({x0}, {y0}) could not be read: {cause}")

    def __reduce__(self):  # crosses process boundaries (Ray workers) intact
        return type(self), (self.window_id, self.x0, self.y0, self.cause_text)


class ModelError(TilerError):
    """The model file is missing, unreadable, or of an unsupported task."""


class OutputError(TilerError):
    """The output cannot be written (unknown format, unwritable folder)."""


# OpenVINO's: "Exception from src/inference/src/cpp/core.cpp:84:", "Check 'x' failed at src/core/...cpp:887:"
_SOURCE_HEADER = re.compile(r"^(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)$")


def first_line(exc: BaseException) -> str:
    """The first line of what went wrong, for a one-line error: from the most specific message in the
    exception chain (GDAL's own words), skipping the source-location headers some runtimes put first
    (OpenVINO's "Exception from src/...cpp:84:" and "Check '...' failed at ...:")."""
    text = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "previous exception" in text:
        text = str(cause).strip() or text
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    words = [ln for ln in lines if not _SOURCE_HEADER.match(ln)]
    if not words:
        return lines[0]
    # under such headers OpenVINO may put what it was doing on one line and why it failed on the next
    return ": ".join(words[:2]) if len(words) < len(lines) else words[0]
