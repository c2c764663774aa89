#!/usr/bin/env bash
# Set up (idempotent) and run the whole suite: lint, types, tests.
# Extra arguments go to pytest, e.g. scripts/test.sh -k mqtt -x
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh" "litert,models,audio,sensors,dev"
echo "==> ruff"
ruff check edge_agent tests scripts benchmarks
echo "==> mypy (as Python 3.10, the oldest supported: JetPack 6)"
mypy edge_agent
echo "==> vermin (no construct newer than Python 3.10)"
vermin --target=3.10- --no-tips --violations --eval-annotations edge_agent tests scripts benchmarks
echo "==> pytest"
exec pytest "$@"
