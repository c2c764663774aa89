#!/usr/bin/env bash
# Set up (idempotent) and run the whole suite: lint, types, tests.
# Extra arguments go to pytest, e.g. scripts/test.sh -k mqtt -x
# TEST_WORKERS=N: pytest workers (default 3; 0 runs everything in one process, one pass, ARGS verbatim)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh" "litert,models,audio,sensors,dev"
echo "==> ruff"
ruff check edge_agent tests scripts benchmarks
echo "==> mypy (as Python 3.10, the oldest supported: JetPack 6)"
mypy edge_agent
echo "==> vermin (no construct newer than Python 3.10)"
vermin --target=3.10- --no-tips --violations --eval-annotations edge_agent tests scripts benchmarks
workers="${TEST_WORKERS:-3}"
if [ "$workers" = 0 ]; then
  echo "==> pytest"
  exec pytest "$@"
fi
# Most of the suite waits (on brokers, child processes, timers), so workers (pytest-xdist) beyond the cores
# fill the time they leave: on two cores, two kept 1.4 of them busy (15m20s) and three 1.75 (12m21s, the
# same CPU time). The tests marked `alone` compare speeds they measure, which a test beside them would
# upset: they run afterwards, one at a time.
rc=0
passed() { local r=0; "$@" || r=$?; [ "$r" -eq 0 ] || [ "$r" -eq 5 ] || rc=$r; }  # 5: ARGS selected none
echo "==> pytest ($workers workers)"
passed pytest -n "$workers" -m "not alone" "$@"
echo "==> pytest (the speed comparisons, alone)"
# unless ARGS name tests (a path or a node id), only the files that mark a test `alone` are collected:
# the whole suite's collection took 12 of this pass's 23 s, with the other core idle
alone_files=() named=0
for a in "$@"; do if [ -e "${a%%::*}" ]; then named=1; fi; done
[ "$named" = 1 ] || mapfile -t alone_files < <(grep -l "mark\.alone" tests/test_*.py)
passed pytest -m alone "$@" "${alone_files[@]}"
exit "$rc"
