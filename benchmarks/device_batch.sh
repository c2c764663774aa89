#!/usr/bin/env bash
# Batching on the lent GPU machine, as one short command. Here, first:
#   ../shared/device/prepare.sh orjson psutil flatbuffers typing-extensions tqdm lap
# then the device run, from the project root, with carry [".gl", ".mq", ".whl", "models"]:
#   bash benchmarks/device_batch.sh            # writes $OUT/batch.json and $OUT/batch.log
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
(nvidia-smi -L; nproc) > "$OUT/machine.txt" 2>&1
timeout "${BATCH_BENCH_TIMEOUT:-400}" python3 benchmarks/device_batch.py --out "$OUT/batch.json" \
  --seconds "${BATCH_BENCH_SECONDS:-2}" --runs "${BATCH_BENCH_RUNS:-1}" \
  --gpu-waits "${BATCH_BENCH_GPU_WAITS:-0,3}" --gpu-own "${BATCH_BENCH_GPU_OWN:-default}" \
  ${BATCH_BENCH_FLAGS:-} > "$OUT/batch.log" 2>&1
rc=$?
tail -n 40 "$OUT/batch.log"
cat "$OUT/machine.txt"
exit $rc
