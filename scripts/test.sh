#!/usr/bin/env bash
# Install what the tests need, then run the whole suite (the command CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
ruff check egresskit plugins tests examples bench
python3 -m pytest -q -p no:cacheprovider tests plugins "$@"
