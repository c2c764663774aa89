# Sourced by demo.sh and test.sh: idempotent set-up of system packages, .venv and models.
# Usage: source scripts/_setup.sh EXTRAS   (e.g. "litert,models,audio,sensors" or that plus ",dev")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="${1:-litert,models,audio,sensors}"
PY="${PYTHON:-python3}"

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
"$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [[ "$EXTRAS" == *audio* ]]; then  # sounddevice loads PortAudio at run time
  ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || missing+=(libportaudio2)
fi
if [[ "$EXTRAS" == *dev* ]]; then  # the suite verifies the unit and builds test delegate libraries
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
  command -v mosquitto_passwd >/dev/null 2>&1 || [ -x /usr/bin/mosquitto_passwd ] || missing+=(mosquitto)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the status page is tested in a real browser
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)  # /metrics is linted and scraped by the real thing
  command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)  # the power-cut file system (tests/lazyfs.py)
  # a FAT USB stick mounted through FUSE, which gives SQLite no shared memory (the outbox there)
  command -v fusefat >/dev/null 2>&1 || missing+=(fusefat)
  command -v mkfs.vfat >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.vfat ] || [ -x /sbin/mkfs.vfat ] || missing+=(dosfstools)
  # an ext4 file system on a loop device with errors in its superblock, and a network link that flaps
  command -v debugfs >/dev/null 2>&1 || [ -x /usr/sbin/debugfs ] || [ -x /sbin/debugfs ] || missing+=(e2fsprogs)
  command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
  # a real command that writes MJPEG to its output, for the command source
  command -v gst-launch-1.0 >/dev/null 2>&1 || missing+=(gstreamer1.0-tools gstreamer1.0-plugins-good)
  # a real RTSP camera (tests/rtsp_server.py: GStreamer's RTSP server, run by the system's Python)
  /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' >/dev/null 2>&1 \
    || missing+=(python3-gi gir1.2-gst-rtsp-server-1.0)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv --without-pip .venv
fi
if ! .venv/bin/python -c 'import pip' >/dev/null 2>&1; then
  # The locked pip, installed by the pip wheel that ships with Python (ensurepip's, run from the zip):
  # ensurepip would install that wheel's pip, and setuptools, only for the lock to replace them: 62 s
  # against 32 in a Pi 4's root under emulation (scripts/check-platform.sh)
  wheel=$("$PY" -c 'import glob, os, sysconfig, ensurepip
dirs = [sysconfig.get_config_var("WHEEL_PKG_DIR") or "", os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")]
print(next((w for d in dirs if d for w in sorted(glob.glob(os.path.join(d, "pip-*.whl")))[-1:]), ""))')
  if [ -n "$wheel" ]; then
    .venv/bin/python "$wheel/pip" install -q --require-hashes -r requirements/pip.txt
    locked_pip=1
  else
    .venv/bin/python -m ensurepip -q
  fi
fi
# the exact versions every device gets: the hashed lock (scripts/lock.sh), then the project itself
LOCK="requirements/agent.txt"
[[ "$EXTRAS" == *dev* ]] && LOCK="requirements/dev.txt"
stamp=".venv/.installed-$(cat pyproject.toml requirements/pip.txt "$LOCK" | sha256sum | cut -c1-16)-${EXTRAS//,/-}"
if [ ! -f "$stamp" ]; then
  echo "==> installing $LOCK and edge-agent into .venv"
  # the locked pip first (unless just installed: pip takes 14 s under emulation to find nothing to do)
  [ -n "${locked_pip:-}" ] || .venv/bin/python -m pip install -q --require-hashes -r requirements/pip.txt
  .venv/bin/python -m pip install -q --require-hashes -r "$LOCK"
  # the build backend came with the lock: nothing unpinned is fetched to build the project
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# The editable install leaves the project's own modules uncompiled (pip compiles only what it copies),
# and where PYTHONDONTWRITEBYTECODE is set (container and CI images set it) no process writes their
# bytecode: each agent would compile the ~70 it imports as it starts, 0.2-0.4 s of CPU here (the
# suite's CPU: 1427 s without this, 1394 with). compileall writes it whatever that variable says, and
# skips what is current.
.venv/bin/python -m compileall -q edge_agent
# EDGE_SETUP_MODELS=minimal: the default model and demo video only (scripts/check-platform.sh smoke)
.venv/bin/python scripts/fetch_models.py ${EDGE_SETUP_MODELS:+--"$EDGE_SETUP_MODELS"}
export PATH="$ROOT/.venv/bin:$PATH:/usr/sbin"
