"""Exception types users see. Each carries a one-line message naming the problem."""

from __future__ import annotations


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
