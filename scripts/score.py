#!/usr/bin/env python3
"""Score a tiler GeoJSON against a synthetic scene's ground truth: python scripts/score.py OUT.geojson TRUTH.geojson"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tiler.evaluate import score_scene  # noqa: E402


def main() -> int:
    pred, truth = sys.argv[1], sys.argv[2]
    raster = sys.argv[3] if len(sys.argv) > 3 else truth.replace(".truth.geojson", ".tif")
    task = json.loads(Path(pred).read_text()).get("tiler", {}).get("task", "obb")
    scores = score_scene(pred, truth, raster, task)
    for name, s in scores.items():
        print(f"  {name:<9} {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
