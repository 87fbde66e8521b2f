#!/usr/bin/env bash
# Set up and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export YOLO_OFFLINE=1
# Some full runs (1 of 4 here on 2026-11-26, 1 in CI) end in a segmentation fault after every test has passed, during
# interpreter shutdown; with this set, such a crash prints every thread's Python stack.
export PYTHONFAULTHANDLER=1
exec .venv/bin/python -m pytest "$@"
