#!/usr/bin/env bash
# Install what the tests need, then run the whole suite (the command CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
ruff check egresskit plugins tests examples bench
ruff format --check egresskit plugins tests examples bench scripts
# egresskit and each plugin's package; settings in pyproject.toml [tool.mypy]
mypy egresskit $(find plugins -mindepth 2 -maxdepth 2 -type d -name 'egresskit_*' ! -name '*.egg-info')
python3 -m pytest -q -p no:cacheprovider --durations=30 tests plugins "$@"
