#!/usr/bin/env bash
# Set up and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export YOLO_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
