#!/usr/bin/env bash
# Set up, make a synthetic 4096x4096 aerial scene, run the OBB model over it, write GeoJSON, print a summary,
# draw a quicklook PNG of the detections.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export YOLO_OFFLINE=1
mkdir -p out
.venv/bin/tiler synth out/demo-scene.tif --size 4096x4096 --seed 2024 --nodata-margin 400
# --runner ray: the embedded local Ray, the path a cluster job takes (the default on one machine is in-process)
.venv/bin/tiler predict out/demo-scene.tif --model models/tiler-obb.pt --out out/demo.geojson \
  --patch-size 320 --overlap 0.25 --runner ray
.venv/bin/python scripts/score.py out/demo.geojson out/demo-scene.truth.geojson
.venv/bin/tiler quicklook out/demo.geojson --raster out/demo-scene.tif --out out/demo-quicklook.png
echo "quicklook (the scene with every detection outlined in its class colour): out/demo-quicklook.png"
