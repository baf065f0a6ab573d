#!/usr/bin/env bash
# Refresh docs/console.png, the README's picture of the console: the browser test
# of the full flow (publish, record, play back) takes it while a recording runs.
set -euo pipefail
cd "$(dirname "$0")/.."
EGRESSKIT_CONSOLE_SCREENSHOT="$PWD/docs/console.png" PYTHONPATH="$PWD" \
    python3 -m pytest -q -p no:cacheprovider tests/test_console.py -k play_back "$@"
