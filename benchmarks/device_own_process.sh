#!/usr/bin/env bash
# runtime.own_process on LiteRT's GPU accelerator, on the lent GPU machine, as one short command. Here, first:
#   ../shared/device/prepare.sh orjson psutil flatbuffers typing-extensions tqdm lap
# then the device run, from the project root, with carry [".gl", ".mq", ".whl", "models"]:
#   bash benchmarks/device_own_process.sh      # writes $OUT/own.json and $OUT/own.log
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
timeout "${OWN_CHECK_TIMEOUT:-200}" python3 benchmarks/device_own_process.py --out "$OUT/own.json" > "$OUT/own.log" 2>&1
rc=$?
tail -n 20 "$OUT/own.log"
exit $rc
