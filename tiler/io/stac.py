"""STAC inputs: a STAC Item or ItemCollection (a local JSON file) read through its assets, one frame each.

GDAL's own `STACIT:` URIs (a mosaic of a STAC API search) are rasters like any other and pass through as such.
"""

from __future__ import annotations

import json
import os

from ..errors import ConfigError

DEFAULT_ASSET = "visual"


def is_stac_file(path: str) -> bool:
    """A local .json file that is a STAC Item or ItemCollection."""
    if not path.lower().endswith(".json") or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    return _is_item(doc) or (doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list)
                             and any(_is_item(f) for f in doc["features"]))


def _is_item(doc) -> bool:
    return isinstance(doc, dict) and doc.get("type") == "Feature" and "stac_version" in doc and "assets" in doc


def stac_frames(path: str, asset: str = DEFAULT_ASSET) -> list[str]:
    """The `asset` of every item of a STAC Item or ItemCollection file: hrefs as GDAL reads them (relative
    ones from the file's folder, http(s) through /vsicurl/, s3:// through /vsis3/)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read STAC file {path}: {exc}") from None
    items = [doc] if doc.get("type") == "Feature" else [f for f in doc.get("features", []) if _is_item(f)]
    frames = []
    for item in items:
        assets = item.get("assets", {})
        if asset not in assets or "href" not in assets[asset]:
            have = ", ".join(sorted(assets)) or "none"
            raise ConfigError(f"STAC item {item.get('id', '?')} in {path} has no asset {asset!r} "
                              f"(it has: {have}); choose one with --stac-asset")
        frames.append(_gdal_href(assets[asset]["href"], os.path.dirname(path)))
    if not frames:
        raise ConfigError(f"STAC file {path} holds no items")
    return frames


def _gdal_href(href: str, base: str) -> str:
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith("file://"):
        href = href[7:]
    if "://" in href or href.startswith("/vsi") or os.path.isabs(href):
        return href
    return os.path.normpath(os.path.join(base, href))
