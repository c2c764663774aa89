#!/usr/bin/env bash
# Install edge-agent as a systemd service on a Raspberry Pi / Jetson (Debian family).
#   sudo scripts/install.sh                      install to /opt/edge-agent, enable and start
#   scripts/install.sh --prefix DIR --no-system  install the files only (no user, unit or start)
#   --config FILE: the settings the service runs with (/etc/edge-agent/config.toml); an upgrade that
#   would refuse them stops before it replaces anything, and says why
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/edge-agent
SYSTEM=1
CONFIG=
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --no-system) SYSTEM=0; shift ;;
    --config) CONFIG="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$CONFIG" ] && [ "$SYSTEM" = 1 ]; then CONFIG=/etc/edge-agent/config.toml; fi

# An upgrade: would this version take the settings the installed one runs with? A setting it refuses
# (exit 2) would leave the service stopped at its next start (systemd does not retry a configuration
# error), so nothing is replaced. The new code runs on the installed one's packages; where it cannot
# (it needs others), the check is left to `edge-agent check` after the install.
if [ -n "$CONFIG" ] && [ -f "$CONFIG" ] && [ -x "$PREFIX/.venv/bin/python" ]; then
  rc=0
  # in an environment as bare as the unit's (no EDGE_AGENT_* of this shell's)
  why="$(env -i PATH="$PATH" PYTHONPATH="$SRC" "$PREFIX/.venv/bin/python" -m edge_agent config --config "$CONFIG" \
    2>&1 >/dev/null)" || rc=$?
  if [ "$rc" = 2 ]; then
    printf '%s\n' "$why" >&2
    echo "==> not installed: this version refuses $CONFIG (above); $PREFIX is left as it was. Mend the file, then run this again." >&2
    exit 2
  elif [ "$rc" != 0 ]; then
    echo "==> $CONFIG not checked before the install (exit $rc); run edge-agent check after it" >&2
  fi
fi

if [ "$SYSTEM" = 1 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "run as root (sudo) to install the service" >&2; exit 1; }
  command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null \
    || { apt-get update -qq && apt-get install -y -qq python3-venv; }
  id edge-agent >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent
  for g in video render; do getent group "$g" >/dev/null && usermod -aG "$g" edge-agent; done
fi

echo "==> installing into $PREFIX"
mkdir -p "$PREFIX"
# the package, scripts and unit; models are fetched below, never copied from a dev checkout's cache
tar -C "$SRC" --exclude=.venv --exclude=.cache --exclude=.git --exclude='*.pyc' -cf - \
  pyproject.toml README.md LICENSE edge_agent scripts systemd models requirements | tar -C "$PREFIX" -xf -
[ -x "$PREFIX/.venv/bin/python" ] || python3 -m venv "$PREFIX/.venv"
# the locked pip first (requirements/pip.txt, made by scripts/lock.sh with the rest)
"$PREFIX/.venv/bin/python" -m pip install -q --require-hashes -r "$PREFIX/requirements/pip.txt"
# the pinned, hashed versions (requirements/agent.txt, made by scripts/lock.sh): every device the same
"$PREFIX/.venv/bin/python" -m pip install -q --require-hashes -r "$PREFIX/requirements/agent.txt"
# the build backend came with the lock: nothing unpinned is fetched to build the agent
"$PREFIX/.venv/bin/python" -m pip install -q --no-deps --no-build-isolation "$PREFIX"
(cd "$PREFIX" && .venv/bin/python scripts/fetch_models.py)

if [ "$SYSTEM" = 1 ]; then
  install -d -m 0750 -o root -g edge-agent /etc/edge-agent
  if [ ! -f /etc/edge-agent/config.toml ]; then
    cat > /etc/edge-agent/config.toml <<CONF
# edge-agent settings; every key: edge-agent config --describe
device_id = "$(hostname | tr -c 'A-Za-z0-9_.\n-' '-')"
[mqtt]
host = "localhost"
[source]
uri = "0"
CONF
    chmod 0640 /etc/edge-agent/config.toml
    chgrp edge-agent /etc/edge-agent/config.toml
  fi
  sed "s#/opt/edge-agent#$PREFIX#g" "$PREFIX/systemd/edge-agent.service" > /etc/systemd/system/edge-agent.service
  systemctl daemon-reload
  systemctl enable edge-agent.service
  # started, or restarted where it runs: an agent left running would import this version's modules
  # beside the last one's, lazily, until it next restarts
  systemctl restart edge-agent.service
  echo "==> edge-agent enabled and (re)started; logs: journalctl -u edge-agent -f"
else
  echo "==> installed files only; run: $PREFIX/.venv/bin/edge-agent run"
fi
