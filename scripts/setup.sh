#!/usr/bin/env bash
# Create .venv and install tiler with its test extra. Idempotent: skipped when pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${TILER_VENV:-.venv}
stamp="$VENV/.tiler-installed"
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch and torchvision are pinned in pyproject.toml (2.14.1 / 0.29.1)
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
echo "$want" > "$stamp"
