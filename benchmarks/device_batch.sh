#!/usr/bin/env bash
# Batching on the lent GPU machine, as one short command. Here, first:
#   ../shared/device/prepare.sh orjson psutil flatbuffers typing-extensions tqdm
# then the device run, from the project root, with carry [".gl", ".mq", ".whl", "models"]:
#   bash benchmarks/device_batch.sh            # writes $OUT/batch.json and $OUT/batch.log
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
mkdir -p /tmp/mq && for f in .mq/*.deb; do dpkg -x "$f" /tmp/mq; done
export PATH=/tmp/mq/usr/sbin:/tmp/mq/usr/bin:$PATH
export LD_LIBRARY_PATH=/tmp/mq/usr/lib/x86_64-linux-gnu:/tmp/mq/lib/x86_64-linux-gnu
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
(nvidia-smi -L; nproc) > "$OUT/machine.txt" 2>&1
timeout "${BATCH_BENCH_TIMEOUT:-400}" python3 benchmarks/device_batch.py --out "$OUT/batch.json" \
  --seconds "${BATCH_BENCH_SECONDS:-2}" --runs "${BATCH_BENCH_RUNS:-1}" > "$OUT/batch.log" 2>&1
rc=$?
tail -n 40 "$OUT/batch.log"
cat "$OUT/machine.txt"
exit $rc
