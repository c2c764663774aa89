#!/usr/bin/env bash
# Set up (idempotent) and run the whole suite: lint, types, tests.
# Extra arguments go to pytest, e.g. scripts/test.sh -k mqtt -x
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh" "litert,models,audio,sensors,dev"
echo "==> ruff"
ruff check edge_agent tests scripts benchmarks
echo "==> mypy"
mypy edge_agent
echo "==> pytest"
exec pytest "$@"
