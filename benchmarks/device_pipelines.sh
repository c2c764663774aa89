#!/usr/bin/env bash
# One agent with N pipelines against N separate agents, on LiteRT's GPU accelerator of the lent GPU
# machine (each separate agent opens the GPU itself), then on that machine's CPU for comparison. Here:
#   ../shared/device/prepare.sh orjson psutil flatbuffers typing-extensions tqdm lap
# then the device run, from the project root, with carry [".gl", ".mq", ".whl", "models"]:
#   bash benchmarks/device_pipelines.sh      # writes $OUT/pipelines-{gpu,cpu}.json and .log
# PIPELINES_BENCH_FLAGS adds bench flags (e.g. "--own-process on"); PIPELINES_BENCH_TAG goes into the file names.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
(nvidia-smi -L; nproc) > "$OUT/machine.txt" 2>&1
model=${PIPELINES_BENCH_MODEL:-models/face_detection_full_range.tflite}
rc=0
for accel in ${PIPELINES_BENCH_ACCELERATORS:-gpu cpu}; do
  if [ "$accel" = gpu ]; then counts=${PIPELINES_BENCH_GPU_COUNTS:-1,2,4} runs=${PIPELINES_BENCH_GPU_RUNS:-2}
  else counts=${PIPELINES_BENCH_CPU_COUNTS:-4} runs=${PIPELINES_BENCH_CPU_RUNS:-1}; fi
  timeout "${PIPELINES_BENCH_TIMEOUT:-240}" python3 -m edge_agent bench --pipelines "$counts" \
    --accelerator "$accel" --model "$model" --seconds "${PIPELINES_BENCH_SECONDS:-3}" --runs "$runs" \
    ${PIPELINES_BENCH_FLAGS:-} --json "$OUT/pipelines-$accel${PIPELINES_BENCH_TAG:-}.json" \
    > "$OUT/pipelines-$accel${PIPELINES_BENCH_TAG:-}.log" 2>&1 || rc=$?
  grep -v "runs/s\|it/s\|^pipelines: " "$OUT/pipelines-$accel${PIPELINES_BENCH_TAG:-}.log" | tail -n 20
done
cat "$OUT/machine.txt"
exit $rc
