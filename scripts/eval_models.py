#!/usr/bin/env python3
"""Measure the project's models on a fresh validation scene (a seed no training patch came from).

    .venv/bin/python scripts/eval_models.py [--size 2048] [--seed 4242] [--tasks detect,segment,obb]
                                            [--large-objects] [--coarse-factor F] [--imgsz N] [--models models]

Runs the whole engine (320 px patches, overlap 0.25, the models' training size) and prints precision and
recall at IoU 0.5 per class: box IoU for detect, polygon IoU for obb (against each object's minimum
rotated rectangle) and segment (against its polygon, holes included), and the median IoU of the matched
objects. The test suite checks the same bar. With --large-objects the scene also holds large buildings
(300-900 px, many with courtyards, bigger than a patch): for those it also prints how many were found, their
median IoU, and into how many pieces the output cut each one (1 is whole; a roof seen by several patches and
not merged comes out in several). --coarse-factor F adds the coarse pass (README: objects larger than a patch);
--imgsz N feeds the 320 px patches to the model at N px (README: outlines of small objects).
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
from tiler.evaluate import scene_report  # noqa: E402
from tiler.synth import SceneSpec, write_scene  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--tasks", default="detect,segment,obb")
    ap.add_argument("--large-objects", action="store_true", help="a scene with large buildings too")
    ap.add_argument("--coarse-factor", type=int, default=None, help="also a coarse pass of windows F times the patch")
    ap.add_argument("--imgsz", type=int, default=None, help="model input size (default: the patch, 320)")
    ap.add_argument("--models", default=str(REPO / "models"), help="folder with tiler-{task}.pt")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        spec = SceneSpec(args.size, args.size, seed=args.seed, nodata_margin=200, large_objects=args.large_objects)
        tif, truth = write_scene(spec, Path(tmp) / "val.tif")
        for task in args.tasks.split(","):
            out = Path(tmp) / f"{task}.geojson"
            TileJob(tif, Path(args.models) / f"tiler-{task}.pt", patch_size=320, overlap=0.25, runner="local",
                    progress=False, out=out, coarse_factor=args.coarse_factor, imgsz=args.imgsz).run()
            report = scene_report(out, truth, tif, task, iou_threshold=0.5)
            for name, score in report["scores"].items():
                print(f"{task:<8} {name:<9} {score}  median IoU {report['median_iou'][name]:.3f}")
            large = report["large"]
            if large["n"]:
                print(f"{task:<8} {'large':<9} n={large['n']} found {large['recall']:.3f}  median IoU "
                      f"{large['median_iou']:.3f}  mean pieces {large['mean_pieces']:.2f} {large['pieces']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
