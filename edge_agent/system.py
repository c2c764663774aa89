"""Board health readings: CPU temperature, throttling, disk, process CPU and memory."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

_THROTTLE_BITS = {
    0: "under_voltage",
    1: "arm_freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "arm_freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}


def cpu_temperature_c(root: str = "/sys/class/thermal") -> float | None:
    """Hottest CPU-ish thermal zone, in degrees C (None where the board exposes none)."""
    best: float | None = None
    for zone in glob.glob(os.path.join(root, "thermal_zone*")):
        try:
            kind = Path(zone, "type").read_text().strip().lower()
            milli = int(Path(zone, "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        if any(k in kind for k in ("cpu", "soc", "x86_pkg", "cpu-thermal", "tj", "acpitz")) or best is None:
            t = milli / 1000.0
            best = t if best is None else max(best, t)
    return best


def decode_throttled(value: int) -> dict[str, bool]:
    return {name: bool(value >> bit & 1) for bit, name in _THROTTLE_BITS.items()}


def throttling() -> dict[str, object] | None:
    """Raspberry Pi firmware throttling flags (sysfs first; vcgencmd where sysfs lacks it)."""
    raw: int | None = None
    for p in glob.glob("/sys/devices/platform/soc/soc:firmware/get_throttled") + glob.glob(
        "/sys/devices/platform/soc/soc:firmware/raspberrypi-hwmon/get_throttled"
    ):
        try:
            raw = int(Path(p).read_text().strip(), 16)
            break
        except (OSError, ValueError):
            continue
    if raw is None and shutil.which("vcgencmd"):
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=2).stdout
            raw = int(out.strip().split("=", 1)[1], 16)
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            raw = None
    if raw is None:
        return None
    return {"raw": hex(raw), **decode_throttled(raw)}


def disk_free_mb(path: Path) -> float | None:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return round(shutil.disk_usage(p).free / 1e6, 1)
    except OSError:
        return None


#: Time the cores spend working, steal included (a hypervisor running someone else counts as busy).
_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")


def cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot; guest time is already inside user."""
    t = psutil.cpu_times()
    busy = sum(getattr(t, f, 0.0) for f in _BUSY_FIELDS)
    return busy, busy + t.idle + getattr(t, "iowait", 0.0)


class ProcessStats:
    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # first call primes the counter

    def sample(self) -> dict[str, float]:
        mem = self._proc.memory_info()
        return {"cpu_percent": round(self._proc.cpu_percent(None), 1), "rss_mb": round(mem.rss / 1e6, 1)}


#: mallopt's parameter number for the arena limit (glibc's malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas for threads created from now on; False where it cannot be set.

    glibc gives a thread that allocates while another holds the main arena an arena of its own, up to
    eight per core. Memory freed into one arena stays there for that arena's next allocations, so an
    agent's resident size came to depend on which threads happened to allocate where: the same run
    measured anywhere from 119 to 182 MB. A small cap keeps it steady; the agent's threads allocate
    little once running, so they rarely wait on each other's arena lock.
    """
    if n <= 0:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, n))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to cap
        return False


#: What the native runtime prints on stderr that tells a user nothing: logged at debug level instead.
_NATIVE_NOISE = (b"Created TensorFlow Lite XNNPACK delegate", b"Initialized TensorFlow Lite runtime")
_STDERR_LOCK = threading.Lock()


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Native code's stderr (fd 2) goes to a file while the block runs; afterwards every line of it is
    written back to stderr, except the runtime's known chatter. Nothing else is lost: Python's own
    log lines from other threads in that moment come back too, only later."""
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no stderr at all: nothing to keep quiet
            yield
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                data = tmp.read()
        for line in data.splitlines(keepends=True):
            if any(n in line for n in _NATIVE_NOISE):
                logging.getLogger("edge_agent.runtime").debug("%s", line.decode("utf-8", "replace").strip())
            else:
                os.write(2, line)
