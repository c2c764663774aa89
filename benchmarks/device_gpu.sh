#!/usr/bin/env bash
# The GPU figures on the lent GPU machine, as one short command. Here, first:
#   ../shared/device/prepare.sh orjson psutil flatbuffers typing-extensions
# then the device run, from the project root, with carry [".gl", ".mq", ".whl", "models"]
# (models/ holds the bundled models and demo video, which git ignores):
#   bash benchmarks/device_gpu.sh            # writes $OUT/gpu.json and $OUT/gpu.log
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
(nvidia-smi -L; nproc; python3 -c "import ai_edge_litert, numpy, cv2; print(numpy.__version__, cv2.__version__)") \
  > "$OUT/machine.txt" 2>&1
timeout "${GPU_BENCH_TIMEOUT:-420}" python3 benchmarks/device_gpu.py --out "$OUT/gpu.json" \
  --seconds "${GPU_BENCH_SECONDS:-3}" --runs "${GPU_BENCH_RUNS:-3}" > "$OUT/gpu.log" 2>&1
rc=$?
tail -n 40 "$OUT/gpu.log"
cat "$OUT/machine.txt"
exit $rc
