#!/usr/bin/env bash
# The test command: set up .venv, install headless Chromium for the report test when missing, lint
# with ruff (the rules are in pyproject.toml), run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_chromium.sh
.venv/bin/ruff check src tests bench scripts
.venv/bin/python -m pytest "$@"
