#!/usr/bin/env python3
"""Measure the project's models on a fresh validation scene (a seed no training patch came from).

    .venv/bin/python scripts/eval_models.py [--size 2048] [--seed 4242] [--tasks detect,segment,obb]

Runs the whole engine (320 px patches, overlap 0.25, the models' training size) and prints precision and
recall at IoU 0.5 per class: box IoU for detect, polygon IoU for obb (against each object's minimum
rotated rectangle) and segment (against its polygon). The test suite checks the same bar.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tiler import TileJob  # noqa: E402
from tiler.evaluate import score_scene  # noqa: E402
from tiler.synth import SceneSpec, write_scene  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--tasks", default="detect,segment,obb")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        tif, truth = write_scene(SceneSpec(args.size, args.size, seed=args.seed, nodata_margin=200),
                                 Path(tmp) / "val.tif")
        for task in args.tasks.split(","):
            out = Path(tmp) / f"{task}.geojson"
            TileJob(tif, REPO / "models" / f"tiler-{task}.pt", patch_size=320, overlap=0.25, runner="local",
                    progress=False, out=out).run()
            for name, score in score_scene(out, truth, tif, task, iou_threshold=0.5).items():
                print(f"{task:<8} {name:<9} {score}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
