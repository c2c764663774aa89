#!/usr/bin/env bash
# Check edge-agent on the platforms it targets, from one x86-64 Debian host (as root):
# a Debian root made by mmdebstrap, entered with chroot, with a clone of this repository's HEAD.
#
#   scripts/check-platform.sh PLATFORM STEP [ARGS...]
#
# PLATFORM (all roots live under $ROOTS, default /var/tmp/edge-agent-platforms, and are kept):
#   pi4          Raspberry Pi OS 64-bit's base (Debian 12 arm64) as a Pi 4 sees it: qemu user-mode
#                emulation of a Cortex-A72 and a /proc/cpuinfo in a Pi 4 kernel's format
#   pi5          the same as a Pi 5: Cortex-A76 and a Pi 5 /proc/cpuinfo
#   pi5-trixie   Debian 13 arm64 (what current Raspberry Pi OS is built on) as a Pi 5
#   trixie       Debian 13 x86-64, Python 3.13, natively (no emulation)
#   bookworm     Debian 12 x86-64, natively: a fresh box, what scripts/test.sh assumes
# STEP:
#   setup              build the root (once; minutes) and bring the clone to this repository's HEAD
#   demo [SECONDS]     scripts/demo.sh --seconds SECONDS (default 60): set-up from the lock, then the agent
#   suite [ARGS...]    scripts/test.sh ARGS (the whole suite unless ARGS select)
#   smoke              set-up from the lock, `edge-agent predict` on the bundled model and photo, a
#                      short `edge-agent run` against a local mosquitto that must publish predictions
#   detections         BlazeFace's detections on four frames of the demo video (after demo or smoke),
#                      to compare platforms line by line
#   run 'CMD'          any command in the clone;   shell: an interactive one
#   umount | clean     unmount what setup mounted | also delete the root
# Each demo, suite and smoke step appends one line to $ROOTS/results.tsv (date, platform, step, exit
# status, seconds, commit, board's CPU model): docs/platforms.md quotes those lines.
#
# Environment: ROOTS (above), TIMEOUT (seconds a step may take, default none), NICE (default 10),
# VARIANT=minbase (a smaller root, for the smoke step: no git, mosquitto and python3-venv built in),
# IDLE=1 (run at SCHED_IDLE and the idle I/O class: only on CPU and disk time nothing else wants,
# e.g. beside the x86 suite),
# MIRROR (Debian mirror; default: the one this machine's apt uses, else deb.debian.org).
#
# Known traps this handles: qemu-user passes the host's x86 /proc/cpuinfo through and the cpuinfo
# library inside LiteRT/XNNPACK crashes parsing it (a board's file is bind-mounted over it); pip in
# the root needs the CA certificates this host trusts beyond Debian's (they are copied in); daemons
# must not start inside the root (policy-rc.d). Under emulation the suite sets EDGE_TEST_EMULATED,
# which deselects the tests marked `emulation_slow` (tests/conftest.py says why each is).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED_DIR="$(dirname "$HERE")/shared"
ROOTS="${ROOTS:-/var/tmp/edge-agent-platforms}"
NICE="${NICE:-10}"
PRIO=(nice -n "$NICE")
[ "${IDLE:-0}" = 1 ] && PRIO=(chrt --idle 0 ionice -c 3 "${PRIO[@]}")
log() { echo "[check-platform $(date +%H:%M:%S)] $*" >&2; }
die() { echo "check-platform: $*" >&2; exit 2; }

[ $# -ge 2 ] || { sed -n '2,30p' "$0"; exit 2; }
PLATFORM="$1"; STEP="$2"; shift 2
case "$PLATFORM" in
  pi4)        SUITE=bookworm ARCH=arm64 BOARD=4 CPU=cortex-a72 ;;
  pi5)        SUITE=bookworm ARCH=arm64 BOARD=5 CPU=cortex-a76 ;;
  pi5-trixie) SUITE=trixie   ARCH=arm64 BOARD=5 CPU=cortex-a76 ;;
  trixie)     SUITE=trixie   ARCH=amd64 BOARD="" CPU="" ;;
  bookworm)   SUITE=bookworm ARCH=amd64 BOARD="" CPU="" ;;
  *) die "unknown platform $PLATFORM (pi4, pi5, pi5-trixie, trixie, bookworm)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap, chroot and mounts need it)"
[ "$(uname -m)" = x86_64 ] || die "the host must be x86-64"
# one root per Debian release and architecture: pi4 and pi5 share theirs (only the CPU differs)
ROOTFS="$ROOTS/$SUITE-$ARCH"
WORK=/root/work
CLONE="$WORK/edge-agent"

host_tools() {
  local need=()
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  if [ "$ARCH" = arm64 ]; then
    [ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    log "installing on the host: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# qemu-aarch64 registered with the F flag, so the emulator is opened by the kernel and works in a chroot
binfmt() {
  local bm=/proc/sys/fs/binfmt_misc
  [ -e "$bm/register" ] || mount -t binfmt_misc binfmt_misc "$bm"
  grep -qs '^flags:.*F' "$bm/qemu-aarch64" && return 0
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  grep -qs '^flags:.*F' "$bm/qemu-aarch64" && return 0
  [ -e "$bm/qemu-aarch64" ] && echo -1 > "$bm/qemu-aarch64"
  # ELF64, little endian, e_machine 0xb7 (AArch64)
  printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:OCF' > "$bm/register"
}

mirror() {
  if [ -n "${MIRROR:-}" ]; then echo "$MIRROR"; return; fi
  local m
  m=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | awk '$2 == "bookworm" || $2 == "trixie" {print $1; exit}')
  echo "${m:-http://deb.debian.org/debian/}"
}

build() {
  [ -f "$ROOTFS/.edge-agent-root" ] && return 0
  local m t0=$SECONDS
  m=$(mirror)
  if [ -e "$ROOTFS" ]; then  # a half-built one
    umounts
    if findmnt -rn -o TARGET | grep -q "^$ROOTFS/"; then die "still mounted under $ROOTFS"; fi
    rm -rf --one-file-system "$ROOTFS"
  fi
  mkdir -p "$ROOTS"
  # mmdebstrap rather than debootstrap: the same packages from the same mirror, but it unpacks the
  # essential set natively and installs the rest in one apt run. Building the smoke's arm64 root took
  # 255 s against debootstrap's 413 s on a quiet 2-core host, nearly all of the difference being
  # work that would otherwise be emulated
  log "mmdebstrap --arch=$ARCH $SUITE $ROOTFS from $m"
  # git for the suite (tests and benchmarks read the history). The smoke's smaller root (minbase) leaves
  # it out, with perl and the rest it pulls in, and takes in this same pass what scripts/_setup.sh would
  # install with a second apt run (mosquitto, python3-venv): minutes less of packages configured under
  # emulation
  local include=python3,ca-certificates,git hooks=()
  [ "${VARIANT:-}" = minbase ] && include=python3,python3-venv,ca-certificates,mosquitto hooks=(
    # ca-certificates' scripts start a few processes per certificate (sed, ln, grep) and run twice: under
    # emulation that was 75 s of the 350 the root took alone. Its update-ca-certificates is diverted to a
    # stand-in that does nothing while the package is configured, and put back after; the bundle it
    # would have written (the one file OpenSSL, Python and pip read) is written natively by ca_bundle
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-ca-certificates && printf "#!/bin/sh\nexit 0\n" > "$1/usr/sbin/update-ca-certificates" && chmod +x "$1/usr/sbin/update-ca-certificates"'
    --customize-hook='rm "$1/usr/sbin/update-ca-certificates" && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-ca-certificates')
  # the variant "debootstrap" is debootstrap's own default set (required and important). /usr merged by
  # directory links, as debootstrap does and Raspberry Pi OS has it, not by the usrmerge package, which
  # brings perl and converts the root under emulation (25 s)
  "${PRIO[@]}" mmdebstrap --arch="$ARCH" --variant="${VARIANT:-debootstrap}" --include="$include" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "${hooks[@]}" \
    "$SUITE" "$ROOTFS" "$m" >"$ROOTS/mmdebstrap-$SUITE-$ARCH.log" 2>&1 \
    || { tail -20 "$ROOTS/mmdebstrap-$SUITE-$ARCH.log" >&2; die "mmdebstrap failed"; }
  ca_bundle
  local security=${m%/}-security
  case "$m" in *deb.debian.org*) security=http://deb.debian.org/debian-security ;; esac
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
    "${m%/}" "$SUITE" "${m%/}" "$SUITE" "$security" "$SUITE" > "$ROOTFS/etc/apt/sources.list"
  echo raspberrypi > "$ROOTFS/etc/hostname"
  printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"  # no daemons start in the root
  chmod +x "$ROOTFS/usr/sbin/policy-rc.d"
  touch "$ROOTFS/.edge-agent-root"
  log "root built in $((SECONDS - t0)) s"
}

# /etc/ssl/certs/ca-certificates.crt as update-ca-certificates writes it, where the root has none: the
# certificates /etc/ca-certificates.conf selects, in its order, each ending in a newline
ca_bundle() {
  local certs="$ROOTFS/etc/ssl/certs" crt
  [ -f "$ROOTFS/etc/ca-certificates.conf" ] && [ ! -s "$certs/ca-certificates.crt" ] || return 0
  mkdir -p "$certs"
  sed -e '/^$/d' -e '/^#/d' -e '/^!/d' "$ROOTFS/etc/ca-certificates.conf" | while IFS= read -r crt; do
    sed -e '$a\' "$ROOTFS/usr/share/ca-certificates/$crt"
  done > "$certs/ca-certificates.crt.new"
  mv "$certs/ca-certificates.crt.new" "$certs/ca-certificates.crt"
  log "CA bundle written: $(grep -c 'BEGIN CERTIFICATE' "$certs/ca-certificates.crt") certificates"
}

# /proc/cpuinfo as Raspberry Pi OS's kernel prints it on the board, one block per host core
cpuinfo_file() {
  local n i
  n=$(nproc --all)
  for ((i = 0; i < n; i++)); do
    if [ "$BOARD" = 4 ]; then
      printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
      printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    else
      printf 'processor\t: %d\nBogoMIPS\t: 108.00\n' "$i"
      printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n'
      printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n'
    fi
  done
  if [ "$BOARD" = 4 ]; then
    printf 'Hardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 0000000000000000\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n'
  else
    printf 'Revision\t: d04170\nSerial\t\t: 0000000000000000\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n'
  fi
}

cpuinfo_bound() {
  [ "$(findmnt -n -o FSTYPE "$ROOTFS/proc/cpuinfo" 2>/dev/null | tail -1)" != proc ] \
    && findmnt -n "$ROOTFS/proc/cpuinfo" >/dev/null 2>&1
}

mounts() {
  cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  grep -qs '^127.0.0.1' "$ROOTFS/etc/hosts" || echo '127.0.0.1 localhost' >> "$ROOTFS/etc/hosts"
  mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
  mountpoint -q "$ROOTFS/sys" || mount --rbind /sys "$ROOTFS/sys"
  mountpoint -q "$ROOTFS/dev" || own_dev
  mkdir -p "$ROOTFS/tmp" "$ROOTFS$WORK/shared"
  chmod 1777 "$ROOTFS/tmp"
  while cpuinfo_bound; do umount "$ROOTFS/proc/cpuinfo"; done
  if [ -n "$BOARD" ]; then
    cpuinfo_file > "$ROOTFS/.cpuinfo-pi$BOARD"
    mount --bind "$ROOTFS/.cpuinfo-pi$BOARD" "$ROOTFS/proc/cpuinfo"
  fi
  # the suite reads ../shared beside the clone: the host's, read-only. A bind made before the host's
  # directory was replaced still shows the old, deleted one (empty): the tests that need it would skip
  if [ -d "$SHARED_DIR" ] && mountpoint -q "$ROOTFS$WORK/shared" \
    && [ "$(stat -c %d:%i "$SHARED_DIR")" != "$(stat -c %d:%i "$ROOTFS$WORK/shared")" ]; then
    log "../shared was bound before the host's directory was replaced: binding it again"
    umount -l "$ROOTFS$WORK/shared"
  fi
  if [ -d "$SHARED_DIR" ] && ! mountpoint -q "$ROOTFS$WORK/shared"; then
    mount --bind "$SHARED_DIR" "$ROOTFS$WORK/shared"
    mount -o remount,bind,ro "$ROOTFS$WORK/shared"
  fi
}

# The root's own /dev: a tmpfs with the usual nodes, a devpts and a /dev/shm of its own, and the few host
# devices the suite uses (FUSE, loop devices) bound in one by one. The host's /dev bound whole let any
# command run as root inside (a package's script, a test) delete or replace the host's own nodes, and a
# root deleted while still mounted could take them with it.
own_dev() {
  local d="$ROOTFS/dev" spec name major minor
  mount -t tmpfs -o mode=755,nosuid,size=1m edge-agent-dev "$d"
  for spec in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<< "$spec"
    mknod -m 666 "$d/$name" c "$major" "$minor"
  done
  ln -s /proc/self/fd "$d/fd"
  ln -s /proc/self/fd/0 "$d/stdin"
  ln -s /proc/self/fd/1 "$d/stdout"
  ln -s /proc/self/fd/2 "$d/stderr"
  mkdir -p "$d/pts" "$d/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$d/pts"
  ln -s pts/ptmx "$d/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$d/shm"
  for name in fuse loop-control /dev/loop[0-9]*; do
    name=${name#/dev/}
    [ -e "/dev/$name" ] || continue
    touch "$d/$name"
    mount --bind "/dev/$name" "$d/$name"
  done
}

umounts() {
  local p
  [ -d "$ROOTFS" ] || return 0
  while cpuinfo_bound; do umount "$ROOTFS/proc/cpuinfo"; done
  for p in "$WORK/shared" dev sys proc; do
    p="$ROOTFS/${p#/}"
    mountpoint -q "$p" && { umount -R "$p" 2>/dev/null || umount -lR "$p"; }
  done
  return 0
}

# CA certificates this host trusts beyond Debian's (a TLS-inspecting proxy's): pip needs them inside
host_cas() {
  local dir="$ROOTFS/usr/local/share/ca-certificates"
  [ -f /etc/ssl/certs/ca-certificates.crt ] && [ -f "$ROOTFS/etc/ssl/certs/ca-certificates.crt" ] || return 0
  mkdir -p "$dir"
  local n
  n=$(python3 - /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt" "$dir" <<'PY'
import re, sys
from pathlib import Path
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
have = set(pem.findall(Path(sys.argv[2]).read_text()))
extra = [c for c in pem.findall(Path(sys.argv[1]).read_text()) if c not in have]
for i, c in enumerate(extra):
    Path(sys.argv[3], f"host-{i}.crt").write_text(c + "\n")
# appended to the bundle here, as update-ca-certificates would (it keeps the files above on its next
# run): run inside, under emulation, it takes a minute
with open(sys.argv[2], "a") as bundle:
    bundle.writelines(c + "\n" for c in extra)
print(len(extra))
PY
)
  [ "$n" -eq 0 ] || log "trusting $n more CA certificate(s) of this host inside the root"
}

# The clone follows this repository's HEAD; ignored paths (.venv, models, caches) are kept between runs.
sync_clone() {
  local dest="$ROOTFS$CLONE" head
  head=$(git -C "$HERE" rev-parse HEAD)
  [ -d "$dest/.git" ] || git clone -q "$HERE" "$dest"
  git -C "$dest" fetch -q "$HERE" HEAD
  git -C "$dest" reset -q --hard "$head"
  git -C "$dest" clean -fdq
  [ -z "$(git -C "$HERE" status --porcelain --untracked-files=no)" ] \
    || log "note: uncommitted changes here are not in the root (it runs HEAD $(git -C "$HERE" rev-parse --short HEAD))"
}

# Every process whose root is the chroot: left over after a timeout, they would hold the mounts.
kill_inside() {
  local p pids=()
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOTFS" ] && pids+=("${p#/proc/}")
  done
  [ ${#pids[@]} -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
}

inside() {  # inside CMD: CMD in the clone with a clean environment (nothing of the host's leaks in)
  local env=(HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM="${TERM:-dumb}"
             PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  [ -n "$CPU" ] && env+=(QEMU_CPU="$CPU" EDGE_TEST_EMULATED="qemu $CPU, Pi $BOARD")
  local limit=()
  [ -n "${TIMEOUT:-}" ] && limit=(timeout --kill-after=30 "$TIMEOUT")
  "${limit[@]}" "${PRIO[@]}" chroot "$ROOTFS" /usr/bin/env -i "${env[@]}" /bin/bash -lc "cd $CLONE && $1"
}

setup() {
  host_tools
  [ "$ARCH" = arm64 ] && binfmt
  build
  mounts
  host_cas
  sync_clone
  local head
  head=$(git -C "$ROOTFS$CLONE" rev-parse --short HEAD)  # the host's git: the smoke's root has none
  inside 'echo "$(uname -m), $(python3 --version), $(. /etc/os-release; echo "$PRETTY_NAME"), HEAD '"$head"'"'
}

# step NAME CMD: run CMD inside, time it, append the result to results.tsv, exit with its status
step() {
  local name="$1" t0=$SECONDS rc=0 model
  inside "$2" || rc=$?
  kill_inside
  model=$(grep -m1 '^Model' "$ROOTFS/proc/cpuinfo" 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$PLATFORM" "$name" "$rc" "$((SECONDS - t0))" \
    "$(git -C "$ROOTFS$CLONE" rev-parse --short HEAD)" "${model:-${CPU:-native $(uname -m)}}" >> "$ROOTS/results.tsv"
  log "$PLATFORM $name: exit $rc after $((SECONDS - t0)) s"
  return "$rc"
}

# PIP_COMPILE=0: byte-compiling all ~3900 installed modules takes pip 90 s of the 265 under emulation;
# the few the agent imports compile as they load
SMOKE='export EDGE_SETUP_MODELS=minimal PIP_COMPILE=0
source scripts/_setup.sh litert,models
set -x
edge-agent --version
python3 -c "import cv2; c = cv2.VideoCapture(\"models/demo.avi\"); c.set(cv2.CAP_PROP_POS_FRAMES, 30); cv2.imwrite(\"/tmp/smoke.jpg\", c.read()[1])"
edge-agent predict --json models/face_detection_short_range.tflite /tmp/smoke.jpg | tee /tmp/smoke.json
grep -q "\"label\":\"face\"" /tmp/smoke.json
port=$(python3 -c "import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])")
printf "listener %s 127.0.0.1\nallow_anonymous true\n" "$port" > /tmp/smoke-mosquitto.conf
mosquitto -c /tmp/smoke-mosquitto.conf & broker=$!
trap "kill $broker" EXIT
python3 - "$port" <<EOF
import subprocess, sys, threading
import paho.mqtt.client as mqtt
got = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.on_connect = lambda c, u, f, rc, p: c.subscribe("edge/smoke/predictions")
c.on_message = lambda c, u, m: got.set()
c.connect("127.0.0.1", int(sys.argv[1])); c.loop_start()
agent = subprocess.Popen(["edge-agent", "run", "--set", "mqtt.port=" + sys.argv[1], "--set", "device_id=smoke",
                          "--set", "state_dir=/tmp/smoke-state"])
ok = got.wait(300)
agent.terminate(); agent.wait(60)
print("predictions over MQTT:", ok)
sys.exit(0 if ok else 1)
EOF'

# BlazeFace on frames 15, 45, 90 and 135 of the demo video: compare these lines across platforms
DETECTIONS='source .venv/bin/activate
python - <<EOF
import cv2, json, subprocess
c = cv2.VideoCapture("models/demo.avi")
paths = []
for i in (15, 45, 90, 135):
    c.set(cv2.CAP_PROP_POS_FRAMES, i)
    cv2.imwrite(f"/tmp/frame{i}.png", c.read()[1])
    paths.append(f"/tmp/frame{i}.png")
out = subprocess.run(["edge-agent", "predict", "--json", "models/face_detection_short_range.tflite", *paths],
                     capture_output=True, text=True, check=True).stdout
for line in out.splitlines():
    d = json.loads(line)
    print(d["source"], [(x["label"], round(x["score"], 3), [round(v) for v in x["box"]]) for x in d["detections"]])
EOF'

case "$STEP" in
  setup) setup ;;
  demo) setup; step "demo" "time scripts/demo.sh --seconds ${1:-60}" ;;
  suite) setup; step "suite${*:+ $*}" "time scripts/test.sh $(printf '%q ' "$@")" ;;
  smoke) setup; step "smoke" "$SMOKE" ;;
  detections) setup; inside "$DETECTIONS" ;;
  run) [ $# -gt 0 ] || die "run needs a command"; setup; inside "$*" ;;
  shell) setup; inside 'exec bash -i' ;;
  umount) kill_inside; umounts ;;
  clean)
    kill_inside; umounts
    # never delete through a mount (a host device bound into the root's /dev, or ../shared bound in from
    # the same disk)
    if findmnt -rn -o TARGET | grep -q "^$ROOTFS/"; then die "still mounted under $ROOTFS; not deleting it"; fi
    rm -rf --one-file-system "$ROOTFS" ;;
  *) die "unknown step $STEP (setup, demo, suite, smoke, detections, run, shell, umount, clean)" ;;
esac
