#!/usr/bin/env bash
# Set up (idempotent), start a local mosquitto unless a broker is configured, run the agent on
# its default model and source, and print the predictions arriving over MQTT.
#   scripts/demo.sh                 until Ctrl-C
#   scripts/demo.sh --seconds 20    for 20 seconds
#   scripts/demo.sh --count 40      until 40 messages have arrived (however long the agent takes to start;
#                                   with --seconds as well, at most that long)
#   scripts/demo.sh --source 0      webcam instead of the demo video (any `edge-agent run` flag works)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh" "litert,models,audio,sensors"

seconds=""
count=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    --count) count="$2"; shift 2 ;;
    --count=*) count="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

RUN="$ROOT/.cache/demo"
mkdir -p "$RUN"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${EDGE_AGENT_MQTT__HOST:-}" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$RUN/mosquitto.conf"
  mosquitto -c "$RUN/mosquitto.conf" >"$RUN/mosquitto.log" 2>&1 &
  pids+=($!)
  export EDGE_AGENT_MQTT__HOST=127.0.0.1 EDGE_AGENT_MQTT__PORT="$port"
  echo "==> local mosquitto on 127.0.0.1:$port"
fi
export EDGE_AGENT_DEVICE_ID="${EDGE_AGENT_DEVICE_ID:-demo}"
export EDGE_AGENT_STATE_DIR="${EDGE_AGENT_STATE_DIR:-$RUN/state}"
export EDGE_AGENT_HEALTH__INTERVAL_S="${EDGE_AGENT_HEALTH__INTERVAL_S:-5}"

listen_args=(--device "$EDGE_AGENT_DEVICE_ID" --topics predictions,health,availability)
run_args=()
if [ -n "$seconds" ]; then
  listen_args+=(--seconds "$seconds")
  run_args+=(--seconds "$((${seconds%.*} + 3))")
fi
if [ -n "$count" ]; then
  listen_args+=(--count "$count")
fi
edge-agent listen "${listen_args[@]}" &
listener=$!
pids+=("$listener")
echo "==> edge-agent run ${args[*]:-} (log: $RUN/agent.log)"
echo "    (to type edge-agent in your own shell: source $ROOT/.venv/bin/activate)"
edge-agent run "${run_args[@]}" "${args[@]}" >"$RUN/agent.log" 2>&1 &
pids+=($!)
wait "$listener" || true
echo "==> done. To use edge-agent in this shell:  source $ROOT/.venv/bin/activate"
