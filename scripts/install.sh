#!/usr/bin/env bash
# Install edge-agent as a systemd service on a Raspberry Pi / Jetson (Debian family).
#   sudo scripts/install.sh                      install to /opt/edge-agent, enable and start
#   scripts/install.sh --prefix DIR --no-system  install the files only (no user, unit or start)
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/edge-agent
SYSTEM=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --no-system) SYSTEM=0; shift ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

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
"$PREFIX/.venv/bin/python" -m pip install -q --upgrade pip
# the pinned, hashed versions (requirements/agent.txt, made by scripts/lock.sh): every device the same
"$PREFIX/.venv/bin/python" -m pip install -q --require-hashes -r "$PREFIX/requirements/agent.txt"
"$PREFIX/.venv/bin/python" -m pip install -q --no-deps "$PREFIX"
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
  systemctl enable --now edge-agent.service
  echo "==> edge-agent enabled; logs: journalctl -u edge-agent -f"
else
  echo "==> installed files only; run: $PREFIX/.venv/bin/edge-agent run"
fi
