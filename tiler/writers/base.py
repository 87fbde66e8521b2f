"""What every writer shares: formats by suffix, output CRS, path checks, atomic files."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from ..errors import OutputError

# suffix -> format; GeoJSON is written by tiler's own streaming writer, the rest through pyogrio / pyarrow
FORMATS = {".geojson": "geojson", ".json": "geojson", ".geojsonl": "geojsonseq", ".geojsons": "geojsonseq",
           ".geojsonseq": "geojsonseq", ".gpkg": "gpkg", ".fgb": "flatgeobuf", ".parquet": "geoparquet",
           ".geoparquet": "geoparquet"}
GEOJSON_FORMATS = ("geojson", "geojsonseq")
PIXEL_SPACE_NOTE = "pixel coordinates of the source image: x to the right, y down, origin at its top-left corner"
CRS_CHOICES = ("auto", "native", "wgs84")  # or any CRS pyproj understands (EPSG:32633, a WKT, ...)
WGS84 = "EPSG:4326"


def output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"unsupported output format {suffix or '(none)'} for {path}; "
                          f"use one of {', '.join(sorted(FORMATS))}")
    return FORMATS[suffix]


def check_crs_choice(fmt: str, crs: str) -> None:
    """GeoJSON is EPSG:4326 by its RFC; the other formats take any CRS."""
    if fmt in GEOJSON_FORMATS and crs not in ("auto", "wgs84") and crs.upper() not in (WGS84, "OGC:CRS84"):
        raise OutputError(f"GeoJSON output is always EPSG:4326 (RFC 7946), so crs {crs} cannot be written to it; "
                          "use .gpkg, .fgb or .parquet for another CRS")


def output_crs(fmt: str, crs: str, native):
    """The pyproj CRS to write, or None for pixel space (`native` is None: the raster has no georeferencing).
    `crs`: auto (GeoJSON: WGS84; other formats: the raster's own), native, wgs84, or a CRS (EPSG:xxxx, ...)."""
    from pyproj import CRS

    check_crs_choice(fmt, crs)
    if native is None:
        if crs not in ("auto", "native"):
            raise OutputError(f"crs {crs} asked for, but the raster has no georeferencing: output is in pixels")
        return None
    if crs == "wgs84" or (crs == "auto" and fmt in GEOJSON_FORMATS):
        return CRS.from_user_input(WGS84)
    if crs in ("auto", "native"):
        return CRS.from_user_input(native)
    return CRS.from_user_input(crs)


def check_output_path(path: str | os.PathLike, crs: str = "auto") -> Path:
    """Fail before any work if the output could not be written."""
    check_crs_choice(output_format(Path(path)), crs)
    return check_writable(path)


def check_writable(path: str | os.PathLike) -> Path:
    """`path` as a Path if a file could be written there (not a folder, in an existing writable folder)."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise OutputError(f"output path exists and is not a file: {p}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder is not writable: {parent}")
    return p


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary path beside `path` (same suffix, so drivers know the format), renamed to `path`
    when the block succeeds; on failure nothing is left, side files (SQLite journals) included."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.part{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        for p in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-journal", "-wal", "-shm"))):
            if p.exists():
                p.unlink()


@contextmanager
def atomic_text(path: str | os.PathLike) -> Iterator[TextIO]:
    """Write text to a temporary file beside `path` and rename on success; nothing is left on failure."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f
