#!/usr/bin/env bash
# The test command: set up .venv, install headless Chromium for the report test when missing, lint
# and format-check with ruff, type-check with mypy, check the layers and that no module imports in a
# circle with import-linter (their settings are in pyproject.toml), run
# pytest in two processes (a test file stays in one), each with one CPU thread unless
# OMP_NUM_THREADS says otherwise, so the two never fight over the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_chromium.sh
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -n 2 --dist loadfile --durations=25 "$@"
