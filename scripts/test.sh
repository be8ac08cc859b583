#!/usr/bin/env bash
# The test command: set up .venv, install headless Chromium for the report test when missing, lint
# and format-check with ruff and type-check with mypy (their settings are in pyproject.toml), run
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_chromium.sh
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/mypy
.venv/bin/python -m pytest --durations=25 "$@"
