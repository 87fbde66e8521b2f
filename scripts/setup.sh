#!/usr/bin/env bash
# Create .venv and install tiler with its test extra (which includes the OpenVINO and ONNX Runtime backends) (and patched-yolo-infer, the reference of tiler.compat).
# Idempotent: skipped when pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${TILER_VENV:-.venv}
stamp="$VENV/.tiler-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch and torchvision are pinned in pyproject.toml (2.14.1 / 0.29.1)
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
# The reference tiler.compat is tested against. --no-deps: it requires GUI opencv-python, which must not
# land beside Ultralytics' headless build; everything it imports (ultralytics, torch, matplotlib, tqdm) is here.
"$VENV/bin/python" -m pip install --quiet --no-deps "patched-yolo-infer==1.3.10"
echo "$want" > "$stamp"
