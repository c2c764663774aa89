#!/usr/bin/env bash
# A change measured against the tree before it, on the lent GPU machine, in one call: the two
# alternate, so the machine's drift (large there between machines and minutes) hits both alike.
# Here, from the project root (REV: the revision to compare against; .ab is ignored by git):
#   ../shared/device/prepare.sh orjson psutil flatbuffers typing-extensions tqdm lap
#   grep -qxF /.ab/ .git/info/exclude || echo /.ab/ >> .git/info/exclude
#   rm -rf .ab && mkdir .ab && git archive REV edge_agent | tar -x -C .ab
# then the device run with carry [".gl", ".mq", ".whl", "models", ".ab"]:
#   bash benchmarks/device_ab.sh       # `edge-agent bench --pipelines` on the GPU, before and after
# AB_ROUNDS, AB_COUNTS, AB_ACCEL, AB_SECONDS, AB_MODEL and AB_TIMEOUT (per bench) change the run.
set -uo pipefail
root=$PWD
source "$(dirname "$0")/device_env.sh" > /dev/null 2>&1
ln -sfn ../models .ab/models  # the bundled models and demo video, found beside the package
for r in $(seq "${AB_ROUNDS:-2}"); do
  for v in before after; do
    d=$root
    [ "$v" = before ] && d=$root/.ab
    # run from the tree's own folder: `python -m` puts the current folder first on the path
    (cd "$d" && PYTHONPATH=/tmp/site:$d timeout "${AB_TIMEOUT:-110}" python3 -m edge_agent bench \
      --pipelines "${AB_COUNTS:-2,3}" --accelerator "${AB_ACCEL:-gpu}" \
      --model "$root/${AB_MODEL:-models/face_detection_full_range.tflite}" --seconds "${AB_SECONDS:-3}" --runs 1 \
      --json "$OUT/ab-$v-$r.json" 2>&1 | grep "^| \|ran on" | sed "s/^/$v $r: /")
  done
done
