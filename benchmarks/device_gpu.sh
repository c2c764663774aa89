#!/usr/bin/env bash
# The GPU figures on the lent GPU machine, as one short command. Here, first:
#   ../shared/device/prepare.sh orjson psutil flatbuffers typing-extensions tqdm lap
# then the device run, from the project root, with carry [".gl", ".mq", ".whl", "models"]
# (models/ holds the bundled models and demo video, which git ignores):
#   bash benchmarks/device_gpu.sh            # writes $OUT/gpu.json and $OUT/gpu.log
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
(nvidia-smi -L; nproc; python3 -c "import ai_edge_litert, numpy, cv2; print(numpy.__version__, cv2.__version__)") \
  > "$OUT/machine.txt" 2>&1
timeout "${GPU_BENCH_TIMEOUT:-420}" python3 benchmarks/device_gpu.py --out "$OUT/gpu.json" \
  --seconds "${GPU_BENCH_SECONDS:-3}" --runs "${GPU_BENCH_RUNS:-3}" > "$OUT/gpu.log" 2>&1
rc=$?
tail -n 40 "$OUT/gpu.log"
cat "$OUT/machine.txt"
exit $rc
