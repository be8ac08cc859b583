#!/usr/bin/env bash
# Create .venv and install tinystudent with its test tools. Safe to run again: pip skips what is there.
# torch is pinned to 2.13.0, whose CPU wheel these machines carry; on a GPU machine, install the
# torch build you want into .venv first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
