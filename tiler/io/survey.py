"""A survey's inputs: the rasters a user names (paths, GDAL URIs, globs, folders, @lists), expanded once.

Expansion happens on the driver, before any work: the frame list it gives is what the job runs, what the
run report lists and what a checkpoint records. A path that does not exist is kept: it becomes a frame that
fails, named in the report, rather than an input silently dropped.
"""

from __future__ import annotations

import glob
import os
from typing import Sequence

from ..errors import ConfigError
from .stac import DEFAULT_ASSET, is_stac_file, stac_frames

# what a folder contributes: the raster formats GDAL reads that surveys come in
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".png", ".jpg", ".jpeg", ".img", ".ntf", ".nitf")


def is_uri(item: str) -> bool:
    """A GDAL URI (/vsis3/..., https://..., STACIT:...) rather than a local path."""
    return "://" in item or item.startswith("/vsi") or (":" in item.split("/")[0] and len(item.split(":")[0]) > 1)


def expand_inputs(items: str | os.PathLike | Sequence[str | os.PathLike], stac_asset: str = DEFAULT_ASSET
                  ) -> list[str]:
    """The frames `items` name, in order, each once: a glob gives its matches (sorted), a folder its rasters
    (sorted by name), `@list.txt` one input per line (blank lines and `#` comments skipped, relative paths
    taken from the list's folder), a STAC Item or ItemCollection (.json) the `stac_asset` of each item,
    anything else itself (a path, a GDAL URI such as STACIT:..., a VRT)."""
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    frames: list[str] = []
    for item in items:
        frames += _expand(os.fspath(item), from_list=False, asset=stac_asset)
    if not frames:
        raise ConfigError("no input rasters given")
    return list(dict.fromkeys(frames))


def _expand(item: str, from_list: bool, asset: str) -> list[str]:
    if not item:
        raise ConfigError("an input is an empty string")
    if item.startswith("@") and not from_list:
        return _list_file(item[1:], asset)
    if is_uri(item):
        return [item]
    if is_stac_file(item):
        return stac_frames(item, asset)
    if glob.has_magic(item):
        matches = sorted(glob.glob(item))
        files = [m for m in matches if os.path.isfile(m)] + [f for m in matches if os.path.isdir(m)
                                                             for f in _folder(m)]
        if not files:
            raise ConfigError(f"no raster matches {item}")
        return files
    if os.path.isdir(item):
        files = _folder(item)
        if not files:
            raise ConfigError(f"folder {item} holds no rasters ({', '.join(RASTER_SUFFIXES)})")
        return files
    return [item]


def _folder(path: str) -> list[str]:
    return sorted(os.path.join(path, f) for f in os.listdir(path)
                  if not f.startswith(".") and f.lower().endswith(RASTER_SUFFIXES)
                  and os.path.isfile(os.path.join(path, f)))


def _list_file(path: str, asset: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f]
    except FileNotFoundError:
        raise ConfigError(f"input list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read input list {path}: {exc}") from None
    base = os.path.dirname(path)
    frames: list[str] = []
    for ln in lines:
        if not ln or ln.startswith("#"):
            continue
        if not is_uri(ln) and not os.path.isabs(ln):
            ln = os.path.join(base, ln)
        frames += _expand(ln, from_list=True, asset=asset)
    if not frames:
        raise ConfigError(f"input list {path} names no rasters")
    return frames
