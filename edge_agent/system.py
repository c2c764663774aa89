"""Board health readings: CPU temperature, throttling, disk and its wear, the clock, process CPU and memory."""

from __future__ import annotations

import ctypes
import datetime as dt
import functools
import glob
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from edge_agent.config import HealthConfig

log = logging.getLogger(__name__)

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


def _read(path: str) -> str | None:
    """A sysfs or procfs file's text, stripped; None where it cannot be read (absent, EIO, EINVAL)."""
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


#: Thermal zone types by preference: the CPU's own first (Pi `cpu-thermal`, Jetson `CPU-therm`), then
#: the package or SoC, then whatever the board has.
_ZONE_PREFERENCE = (("cpu",), ("x86_pkg", "soc", "tj", "acpitz"))


def signal_name(number: int) -> str:
    """`SIGSEGV` for 11; "signal 40" for a real-time signal, which has no name (`signal.Signals(40)`
    raises ValueError: a child killed by one made the caller fail instead of saying how it ended)."""
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def cpu_temperature_c(root: str = "/sys/class/thermal") -> float | None:
    """The CPU's temperature in degrees C: the hottest zone of the most CPU-like kind the board
    exposes (a Jetson lists CPU, GPU, SoC and more), None where it exposes none."""
    found: dict[int, float] = {}
    for zone in glob.glob(os.path.join(root, "thermal_zone*")):
        try:
            kind = Path(zone, "type").read_text().strip().lower()
            t = int(Path(zone, "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        rank = next((i for i, keys in enumerate(_ZONE_PREFERENCE) if any(k in kind for k in keys)),
                    len(_ZONE_PREFERENCE))
        found[rank] = max(found.get(rank, t), t)
    return found[min(found)] if found else None


def decode_throttled(value: int) -> dict[str, bool]:
    return {name: bool(value >> bit & 1) for bit, name in _THROTTLE_BITS.items()}


#: Where the Raspberry Pi firmware driver puts `get_throttled`: `soc/soc:firmware` on a Pi 4 (and
#: earlier), `soc@107c000000/soc@107c000000:firmware` on a Pi 5. Plain sysfs reads: no device
#: access, so they work under the shipped unit's DevicePolicy=closed.
_THROTTLED_GLOBS = ("sys/devices/platform/soc*/soc*:firmware/get_throttled",)
#: The Pi's voltage monitor (hwmon `rpi_volt`): under-voltage now, where get_throttled is missing.
_RPI_VOLT = "sys/class/hwmon/hwmon*"


def throttling(root: str = "/", vcgencmd: bool = True) -> dict[str, object] | None:
    """Raspberry Pi firmware throttling flags: sysfs first (Pi 4 and Pi 5 layouts), then the `rpi_volt`
    hwmon's under-voltage alarm, then `vcgencmd` (needs /dev/vcio, which the unit allows)."""
    raw: int | None = None
    for pattern in _THROTTLED_GLOBS:
        for p in sorted(glob.glob(os.path.join(root, pattern))):
            try:
                raw = int(Path(p).read_text().strip(), 16)
                break
            except (OSError, ValueError):
                continue
        if raw is not None:
            break
    if raw is None:
        for hw in sorted(glob.glob(os.path.join(root, _RPI_VOLT))):
            try:
                if Path(hw, "name").read_text().strip() != "rpi_volt":
                    continue
                alarm = int(Path(hw, "in0_lcrit_alarm").read_text().strip())
            except (OSError, ValueError):
                continue
            return {"raw": None, "source": "rpi_volt", "under_voltage": bool(alarm)}
    if raw is None and vcgencmd and shutil.which("vcgencmd"):
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=2).stdout
            raw = int(out.strip().split("=", 1)[1], 16)
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            raw = None
    if raw is None:
        return None
    return {"raw": hex(raw), **decode_throttled(raw)}


def throttling_problems(t: dict[str, object] | None, temp_c: float | None = None) -> list[str]:
    """What health's problems say of the Pi firmware's flags (`throttling`) while they hold now; the
    `*_occurred` flags, set since boot, are in the document and say nothing about now. A supply that sags
    is the Pi's most common field failure: cameras and USB devices drop out and SD cards are corrupted,
    long before the board stops."""
    if not t:
        return []
    out = []
    if t.get("under_voltage"):
        out.append("under-voltage now (Raspberry Pi firmware): the power supply sags below what the board needs; "
                   "cameras, USB devices and the SD card may fail: use a supply rated for the board and its cameras")
    slowed = [name.replace("_", " ") for name in ("throttled", "arm_freq_capped", "soft_temp_limit") if t.get(name)]
    if slowed and not t.get("under_voltage"):  # (under-voltage caps the clock too: said above)
        hot = f" at {temp_c:.0f} °C" if temp_c is not None else ""
        out.append(f"CPU slowed by the firmware now ({', '.join(slowed)}){hot}: inference runs slower; the board "
                   "is too hot (a heatsink, a fan, shade)")
    return out


#: Trip point types (the kernel's thermal ABI, `trip_point_N_type`) at which the CPU or GPU is slowed: `passive`
#: (the kernel's governor lowers the clock), `hot` (on Tegra, the hardware throttles). `critical` is where the
#: kernel powers the board off; `active` trips start a fan and say nothing of speed.
_THROTTLE_TRIPS = ("passive", "hot")
#: Trip temperatures outside this are placeholders of unused trips on some boards, not limits.
_TRIP_RANGE_C = (20.0, 150.0)
#: Within this of a critical trip, the board is about to be powered off.
CRITICAL_MARGIN_C = 5.0


@dataclass(frozen=True)
class ThermalZone:
    """One thermal zone with the limits the kernel enforces on it (the lowest of each kind)."""

    kind: str
    temp_c: float
    throttle_c: float | None
    critical_c: float | None

    @property
    def limit_c(self) -> float:
        """The first limit it meets as it heats: where it is slowed, else where it is powered off."""
        return min(t for t in (self.throttle_c, self.critical_c) if t is not None)


def thermal_zones(root: str = "/sys/class/thermal") -> list[ThermalZone]:
    """Every thermal zone that has a limit: a trip point where the kernel (or the hardware, on Tegra) slows
    the CPU or GPU, or one where it powers the board off. The same on a Jetson, a Rockchip or Pi board and an
    x86 box, unlike the Pi firmware's flags; a zone without such trips (a VM has none) is left out."""
    zones = []
    for zone in sorted(glob.glob(os.path.join(root, "thermal_zone*"))):
        try:
            kind = Path(zone, "type").read_text().strip()
            temp_c = int(Path(zone, "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):  # a sensor that fails to read (EIO, ENODATA) has no temperature now
            continue
        with suppress(OSError):
            if Path(zone, "mode").read_text().strip() == "disabled":  # the kernel acts on none of its trips
                continue
        limits: dict[str, float] = {}
        for trip in glob.glob(os.path.join(zone, "trip_point_*_type")):
            try:
                what = Path(trip).read_text().strip()
                at = int(Path(trip[: -len("type")] + "temp").read_text().strip()) / 1000.0
            except (OSError, ValueError):
                continue
            what = "throttle" if what in _THROTTLE_TRIPS else what
            if what in ("throttle", "critical") and _TRIP_RANGE_C[0] <= at <= _TRIP_RANGE_C[1]:
                limits[what] = min(limits.get(what, at), at)
        if limits:
            zones.append(ThermalZone(kind, temp_c, limits.get("throttle"), limits.get("critical")))
    return zones


def thermal_summary(zones: list[ThermalZone]) -> dict[str, object] | None:
    """Health's `system.thermal`: the zone nearest its first limit, and how far from it (`headroom_c`, what a
    fleet alerts on before the board slows); None where no zone has a limit."""
    if not zones:
        return None
    z = min(zones, key=lambda z: z.limit_c - z.temp_c)
    return {"zone": z.kind, "temp_c": round(z.temp_c, 1), "limit": "throttle" if z.limit_c == z.throttle_c
            else "critical", "limit_c": z.limit_c, "headroom_c": round(z.limit_c - z.temp_c, 1)}


def thermal_problems(zones: list[ThermalZone]) -> list[str]:
    """What health's problems say of the kernel's thermal limits while they hold: zones at or over the point
    where they are slowed, and zones within CRITICAL_MARGIN_C of the point where the board is powered off
    (said once, as the worse)."""
    near = [z for z in zones if z.critical_c is not None and z.temp_c >= z.critical_c - CRITICAL_MARGIN_C]
    slowed = [z for z in zones if z not in near and z.throttle_c is not None and z.temp_c >= z.throttle_c]
    out = []
    if near:
        named = ", ".join(f"{z.kind} at {z.temp_c:.0f} °C (off at {z.critical_c:g})" for z in near)
        out.append(f"about to overheat: {named}: the kernel powers the board off at its critical point; cool it "
                   "now (a heatsink, a fan, shade)")
    if slowed:
        named = ", ".join(f"{z.kind} at {z.temp_c:.0f} °C (slowed from {z.throttle_c:g})" for z in slowed)
        out.append(f"slowed for heat now: {named}: the CPU or GPU runs slower, and so does inference; the "
                   "board is too hot (a heatsink, a fan, shade)")
    return out


#: hwmon drivers of current monitors on a board's supply rails: TI's INA3221 (three channels, on every
#: Jetson module), and the INA219/226 family (`ina2xx`: solar and UPS HATs on a Raspberry Pi)
_POWER_CHIPS = ("ina3221", "ina2", "ina209")


def power_rails(root: str = "/sys/class/hwmon") -> dict[str, dict[str, Any]]:
    """Each supply rail a current monitor measures, as its hwmon driver gives it (Documentation/hwmon/
    ina3221.rst, ina2xx.rst): `in{n}_input` the bus voltage in mV and `curr{n}_input` the current in mA for
    channel n (1-3; an INA3221's in4-in6 are shunt voltages, its curr4 their sum), `in{n}_label` the rail's
    name where the device tree gives one (a Jetson's VDD_IN, VDD_CPU_GPU_CV, VDD_SOC), and the alarms its
    alert limits raise (`curr{n}_crit_alarm`, `curr{n}_max_alarm` averaged): on a Jetson those alerts are
    wired to the module's over-current throttle. A disabled channel (`in{n}_enable` 0) is left out."""
    rails: dict[str, dict[str, Any]] = {}
    for mon in sorted(glob.glob(os.path.join(root, "hwmon*"))):
        chip = _read(os.path.join(mon, "name")) or ""
        if not chip.startswith(_POWER_CHIPS):
            continue
        for n in (1, 2, 3):
            mv, ma = _int(_channel(mon, "in", n, "input")), _int(_channel(mon, "curr", n, "input"))
            if mv is None or ma is None or _channel(mon, "in", n, "enable") == "0":
                continue
            name = _channel(mon, "in", n, "label") or f"{chip} {n}"
            limit = _int(_channel(mon, "curr", n, "crit")) or _int(_channel(mon, "curr", n, "max"))
            rails[name] = {
                "volts": round(mv / 1000, 3),
                "amps": round(ma / 1000, 3),
                "watts": round(mv * ma / 1e6, 2),
                "limit_amps": round(limit / 1000, 3) if limit else None,
                "over_current": any(_channel(mon, "curr", n, f"{a}_alarm") == "1" for a in ("crit", "max")),
            }
    return rails


def _channel(mon: str, kind: str, n: int, what: str) -> str | None:
    """One hwmon attribute of channel n (`in1_input`, `curr2_crit_alarm`)."""
    return _read(os.path.join(mon, f"{kind}{n}_{what}"))


def power_problems(rails: dict[str, dict[str, Any]]) -> list[str]:
    """What health's problems say of a rail over its current limit now: the board throttles (a Jetson's
    over-current throttle slows its CPU and GPU) or its supply sags."""
    over = [(name, r) for name, r in rails.items() if r["over_current"]]
    if not over:
        return []
    named = ", ".join(f"{name} at {r['amps']:g} A" + (f" (limit {r['limit_amps']:g})" if r["limit_amps"] else "")
                      for name, r in over)
    return [f"over-current now: {named}: the board throttles its CPU and GPU, and inference slows; a stronger "
            "supply or a lower power mode (a Jetson's nvpmodel)"]


#: A wall clock before this has not been set: a board without a real-time clock (a Raspberry Pi) starts
#: at 1970, or at the last time its image saved, until NTP sets it. What it stamps is then wrong.
CLOCK_SANE_AFTER = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
#: A change of the wall clock against the time since boot beyond this between two looks, and beyond what
#: NTP's slewing can move it meanwhile (0.5 ms a second at most), is a step: NTP setting the clock, a
#: person, an RTC read late.
CLOCK_STEP_S = 1.0
_SLEW_MAX = 0.0005
#: adjtimex's answer for a clock the kernel holds unsynchronized, and its status bit for it (timex.h).
_TIME_ERROR = 5
_STA_UNSYNC = 0x40


class _Timex(ctypes.Structure):
    """The head of the kernel's `struct timex`, then room for the rest (the kernel writes all of it)."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_char * 256)]


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def clock_sync() -> tuple[bool, float] | None:
    """(synchronized, the kernel's maximum error in ms) as an NTP daemon left it (adjtimex, read only, as
    `timedatectl` reads it: unsynchronized while STA_UNSYNC is set or the error reaches 16 s); None
    where it cannot be read (not Linux). A clock no NTP daemon disciplines (an RTC alone, a VM's host
    clock) reads unsynchronized and may well be right: the figure says what is known, no more."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        tx = _Timex()  # modes 0: read only, no privilege needed
        state = _libc().adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    synced = state != _TIME_ERROR and not tx.status & _STA_UNSYNC and tx.maxerror < 16_000_000
    return synced, round(tx.maxerror / 1000.0, 1)


class ClockWatch:
    """The wall clock, which stamps every published document: whether it is set at all, whether an NTP
    daemon keeps it, and the steps it took. A step says that what was stamped before it was off by that
    much (a box that booted at its image's date and found NTP an hour later)."""

    def __init__(self, wall: Callable[[], float] = time.time, since_boot: Callable[[], float] | None = None,
                 sync: Callable[[], tuple[bool, float] | None] = clock_sync) -> None:
        """since_boot: a clock that counts time suspended too (CLOCK_BOOTTIME where there is one), so that a
        board woken from suspend is not taken for a clock that stepped."""
        boottime = getattr(time, "CLOCK_BOOTTIME", None)
        self._wall, self._sync = wall, sync
        self._since_boot = since_boot or (
            (lambda: time.clock_gettime(boottime)) if boottime is not None else time.monotonic)
        self._lock = threading.Lock()
        self._last: tuple[float, float] | None = None  # (time since boot, wall - it) at the last look
        self.steps = 0
        self.last_step_s: float | None = None

    def sample(self) -> dict[str, object]:
        """Health's `system.clock`; called by every reader of the health document."""
        with self._lock:
            wall, booted = self._wall(), self._since_boot()
            offset = wall - booted
            if self._last is not None:
                step = offset - self._last[1]
                if abs(step) > CLOCK_STEP_S + _SLEW_MAX * (booted - self._last[0]):
                    self.steps += 1
                    self.last_step_s = round(step, 3)
                    log.warning("the wall clock stepped by %+.1f s: what was stamped before it was off by as much",
                                step)
            self._last = (booted, offset)
        sync = self._sync()
        return {
            "set": wall >= CLOCK_SANE_AFTER.timestamp(),
            "synchronized": sync[0] if sync else None,
            "max_error_ms": sync[1] if sync else None,
            "steps": self.steps,
            "last_step_s": self.last_step_s,
        }


def clock_problem(clock: dict[str, object], wall: float) -> str | None:
    """What health's problems say of a clock that is not set; None otherwise."""
    if clock.get("set", True):
        return None
    shown = dt.datetime.fromtimestamp(wall, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    return (f"clock not set (it reads {shown} UTC): every timestamp published is wrong until NTP or a "
            "real-time clock sets it")


def board(clock: ClockWatch, floors: HealthConfig, state_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Health's `system` section and what its problems say of the board: the firmware's flags, the kernel's
    thermal limits, the clock, memory and the state directory's disk (its space and its wear), against the
    floors in `health`.
    `edge-agent check` says the same at install."""
    throttled, temp_c, zones, rails = throttling(), cpu_temperature_c(), thermal_zones(), power_rails()
    problems = throttling_problems(throttled, temp_c) + thermal_problems(zones) + power_problems(rails)
    time_now = clock.sample()
    unset = clock_problem(time_now, time.time())
    if unset is not None:
        problems.append(unset)
    available_mb, total_mb = memory_mb()
    if available_mb < floors.min_available_mb:
        problems.append(f"memory low: {available_mb:.0f} MB available of {total_mb:.0f} (floor "
                        f"{floors.min_available_mb:g} MB): the kernel may kill a process to free memory, this "
                        "agent among them")
    free_mb = disk_free_mb(state_dir)
    if free_mb is not None and free_mb < floors.min_free_mb:
        problems.append(f"disk nearly full: {free_mb:.0f} MB free in the state directory (floor "
                        f"{floors.min_free_mb:g} MB)")
    disk = storage(state_dir)
    problems += storage_problems(disk)
    section = {
        "cpu_temp_c": temp_c,
        "throttling": throttled,
        "thermal": thermal_summary(zones),
        "power": rails or None,
        "clock": time_now,
        "memory_available_mb": available_mb,
        "memory_total_mb": total_mb,
        "disk_free_mb": free_mb,
        "storage": storage_summary(disk),
    }
    return section, problems


#: JEDEC eMMC 5.0 PRE_EOL_INFO (EXT_CSD[267]): how much of the spare blocks that replace worn ones is used.
_PRE_EOL = {1: "normal", 2: "warning", 3: "urgent"}
#: DEVICE_LIFE_TIME_EST_TYP_A/B (EXT_CSD[268], [269]): 0x01-0x0A say 0-10% ... 90-100% of the device's
#: rated erase cycles used, 0x0B past them, 0x00 not given.
_LIFE_PAST = 0x0B
#: a band whose upper end is this is a problem (90-100%): the device is near the end of its rated writes
LIFE_PROBLEM_PCT = 100


@dataclass(frozen=True)
class Storage:
    """The whole disk under the state directory, and what it says of its own wear."""

    device: str  # the kernel's name of the whole disk: mmcblk0, nvme0n1, sda, vda
    kind: str  # eMMC, SD card, NVMe, USB, disk, loop, RAM
    #: the upper end of the worse of an eMMC's two estimates (10 ... 100; past its rated life: 100 and `past`)
    life_used_pct: int | None
    past_rated_life: bool
    pre_eol: str | None  # an eMMC's spare blocks: normal, warning (80% used), urgent
    written_mb: float | None  # written to the disk since boot, by every process
    #: the errors an ext4 file system under the state directory has met, as its superblock counts them
    #: until fsck clears them (None: another kind of file system), and where and when the last was
    fs_errors: int | None = None
    fs: str | None = None  # the file system's device: mmcblk0p2, dm-0
    fs_last_error_ts: float | None = None


def _disk_dir(dev: tuple[int, int], sys_root: str) -> str | None:
    """The sysfs directory of the whole disk that holds block device `dev` (major, minor): a partition's
    disk, and through device mapper or md (LUKS, LVM, a RAID of one) the one disk beneath, where there is
    one. None for a file system on no block device (tmpfs, overlay, NFS; btrfs's anonymous devices)."""
    d = os.path.realpath(os.path.join(sys_root, "dev", "block", f"{dev[0]}:{dev[1]}"))
    if not os.path.isdir(d):
        return None
    for _ in range(8):
        if os.path.exists(os.path.join(d, "partition")):
            d = os.path.dirname(d)
        try:
            below = os.listdir(os.path.join(d, "slaves"))
        except OSError:
            below = []
        if len(below) != 1:
            return d
        d = os.path.realpath(os.path.join(d, "slaves", below[0]))
    return d


def _disk_kind(d: str, name: str) -> str:
    if name.startswith("mmcblk"):
        card = _read(os.path.join(d, "device", "type"))
        return {"MMC": "eMMC", "SD": "SD card"}.get(card or "", "MMC")
    if name.startswith("nvme"):
        return "NVMe"
    if name.startswith("loop"):
        return "loop"
    if name.startswith(("zram", "ram")):
        return "RAM"
    if "/usb" in d:
        return "USB"
    return "disk"


def storage(path: Path, sys_root: str = "/sys", dev: tuple[int, int] | None = None) -> Storage | None:
    """The disk the state directory (`path`, or the nearest folder above it that exists) is on, with the
    wear an eMMC reports through the kernel (`life_time`, `pre_eol_info`: Jetson modules, Compute
    Modules, Rockchip boards). An SD card and a USB stick say nothing of their wear, and an NVMe drive only
    to a root process (its SMART log), which the service is not: `life_used_pct` is None there. `dev`
    stands for the path's device in tests."""
    if dev is None:
        try:
            st = os.stat(_existing(path))
        except OSError:
            return None
        dev = (os.major(st.st_dev), os.minor(st.st_dev))
    d = _disk_dir(dev, sys_root)
    if d is None:
        return None
    name = os.path.basename(d)
    # ext4 keeps its error count in the superblock (an SD card that fails or lost power mid-write), and
    # the kernel shows it per file system, by the name of the device it is on
    fs = os.path.basename(os.path.realpath(os.path.join(sys_root, "dev", "block", f"{dev[0]}:{dev[1]}")))
    fs_errors = _int(_read(os.path.join(sys_root, "fs", "ext4", fs, "errors_count")))
    last_error = _int(_read(os.path.join(sys_root, "fs", "ext4", fs, "last_error_time")))
    bands: list[int] = []
    for field in (_read(os.path.join(d, "device", "life_time")) or "").split():
        with suppress(ValueError):
            if 0 < int(field, 16) <= _LIFE_PAST:
                bands.append(int(field, 16))
    eol = _read(os.path.join(d, "device", "pre_eol_info"))
    pre_eol = None
    with suppress(ValueError):
        pre_eol = _PRE_EOL.get(int(eol or "", 16))
    written_mb = None
    with suppress(ValueError, IndexError, TypeError):
        written_mb = round(int((_read(os.path.join(d, "stat")) or "").split()[6]) * 512 / 1e6, 1)
    worst = max(bands, default=None)
    return Storage(name, _disk_kind(d, name), None if worst is None else min(worst, 10) * 10,
                   worst == _LIFE_PAST, pre_eol, written_mb, fs_errors, fs, float(last_error) if last_error else None)


def storage_summary(s: Storage | None) -> dict[str, object] | None:
    """Health's `system.storage`; None where the state directory is on no disk (tmpfs, overlay)."""
    if s is None:
        return None
    return {"device": s.device, "kind": s.kind, "life_used_pct": s.life_used_pct,
            "past_rated_life": s.past_rated_life, "pre_eol": s.pre_eol, "written_mb": s.written_mb,
            "fs_errors": s.fs_errors, "fs_last_error_ts": s.fs_last_error_ts}


def storage_problems(s: Storage | None) -> list[str]:
    """What health's problems say of a disk wearing out: an eMMC that has used most of its spare blocks or
    nearly all of its rated writes fails soon after, and on most boards it holds the root file system; and
    of a file system that has met errors (until fsck clears its count)."""
    if s is None:
        return []
    out = []
    if s.fs_errors:
        when = (" (the last at " + dt.datetime.fromtimestamp(s.fs_last_error_ts, dt.timezone.utc)
                .strftime("%Y-%m-%d %H:%M UTC") + ")") if s.fs_last_error_ts else ""
        out.append(f"file system errors: {s.fs} (the state directory's, on {s.device}, {s.kind}) has met "
                   f"{s.fs_errors}{when}: the card or disk is failing, or lost power while writing; check it with "
                   "fsck, which clears the count, and plan to replace it")
    why = []
    if s.pre_eol in ("warning", "urgent"):
        why.append("80% of its spare blocks used (pre-EOL warning)" if s.pre_eol == "warning"
                   else "nearly all of its spare blocks used (pre-EOL urgent)")
    if s.past_rated_life:
        why.append("past its rated writes")
    elif s.life_used_pct is not None and s.life_used_pct >= LIFE_PROBLEM_PCT:
        why.append(f"{s.life_used_pct - 10}-{s.life_used_pct}% of its rated writes used")
    if why:
        worse = "about to fail" if s.pre_eol == "urgent" or s.past_rated_life else "wearing out"
        out.append(f"storage {worse}: {s.device} ({s.kind}, the state directory's) has {', '.join(why)}: replace "
                   "it before it fails, or write less to it (clips, the outbox)")
    return out


def kernel_boot_id() -> str | None:
    """The running kernel's boot id: it changes when the system restarts, not when the agent does."""
    return _read("/proc/sys/kernel/random/boot_id")


#: /sys/class/net/*/type (ARPHRD_*): what the kernel says a link is, where it is not Wi-Fi
_LINK_TYPES = {1: "ethernet", 772: "loopback", 65534: "tunnel", 776: "tunnel", 778: "tunnel", 823: "tunnel"}
#: Carrier changes are counted over this window for a link that flaps.
FLAP_WINDOW_S = 600.0
#: ... and this many losses of the link (each a change down and one up) within it is a problem.
FLAPS_PROBLEM = 2


def interface_of(address: str) -> str | None:
    """The network interface holding local address `address` (the broker connection's own end)."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addrs):
            return name
    return None


def link(interface: str, sys_root: str = "/sys", proc_root: str = "/proc") -> dict[str, Any]:
    """What the kernel says of one network link: its kind, how often its carrier came and went since boot
    (a loose cable, a failing switch port or PoE supply, a Wi-Fi link that drops), its speed where it has
    one, and a Wi-Fi link's signal as the driver reports it (`/proc/net/wireless`: quality, level in dBm)."""
    base = os.path.join(sys_root, "class", "net", interface)
    wifi = os.path.isdir(os.path.join(base, "wireless")) or os.path.exists(os.path.join(base, "phy80211"))
    kind = "wifi" if wifi else _LINK_TYPES.get(_int(_read(os.path.join(base, "type"))) or 0, "other")
    speed = _int(_read(os.path.join(base, "speed")))  # EINVAL on a link that is down or has no speed
    out: dict[str, Any] = {
        "interface": interface,
        "kind": kind,
        "up": _read(os.path.join(base, "operstate")) in ("up", "unknown"),
        "carrier_changes": _int(_read(os.path.join(base, "carrier_changes"))),
        "speed_mbps": speed if speed is not None and speed > 0 else None,
        "signal_dbm": None,
    }
    if wifi:
        for line in (_read(os.path.join(proc_root, "net", "wireless")) or "").splitlines()[2:]:
            name, _, rest = line.partition(":")
            fields = rest.split()
            if name.strip() == interface and len(fields) >= 3:
                with suppress(ValueError):
                    level = float(fields[2].rstrip("."))
                    out["signal_dbm"] = level if level < 0 else None  # 0..100: a driver's own scale, no dBm
    return out


class LinkWatch:
    """The broker connection's link over time: which interface carries it (learnt from the connection's
    own address, so nothing here resolves a name or waits on the network), and how often it lost its
    carrier in the last FLAP_WINDOW_S."""

    def __init__(self, sys_root: str = "/sys", proc_root: str = "/proc"):
        self.sys_root, self.proc_root = sys_root, proc_root
        self.interface: str | None = None
        self._changes: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()  # health's thread and a /metrics scrape both sample

    def sample(self, local_address: str | None, now: float | None = None) -> dict[str, Any] | None:
        """Health's `system.network`: the link that carried the broker connection last (None before any
        connection), with `flaps`, its losses of carrier within the window."""
        found = interface_of(local_address) if local_address else None
        with self._lock:
            if found is not None and found != self.interface:
                self.interface, self._changes = found, deque()
            if self.interface is None:
                return None
            doc = link(self.interface, self.sys_root, self.proc_root)
            now = time.monotonic() if now is None else now
            if doc["carrier_changes"] is not None:
                self._changes.append((now, doc["carrier_changes"]))
            while len(self._changes) > 1 and self._changes[1][0] <= now - FLAP_WINDOW_S:
                self._changes.popleft()
            first = self._changes[0][1] if self._changes else doc["carrier_changes"]
        doc["flaps"] = (doc["carrier_changes"] - first) // 2 if doc["carrier_changes"] is not None else None
        return doc


def network_problems(net: dict[str, Any] | None, min_signal_dbm: float) -> list[str]:
    """What health's problems say of the broker connection's link: one that keeps losing its carrier, and
    a Wi-Fi signal under the floor (messages lost and sent again, the connection dropped)."""
    if not net:
        return []
    out = []
    if net.get("flaps") is not None and net["flaps"] >= FLAPS_PROBLEM:
        out.append(f"network link flapping: {net['interface']} lost its link {net['flaps']} times in the last "
                   f"{FLAP_WINDOW_S / 60:.0f} minutes (a loose cable, a failing switch port or PoE supply, a "
                   "Wi-Fi link that drops)")
    signal = net.get("signal_dbm")
    if signal is not None and min_signal_dbm < 0 and signal < min_signal_dbm:
        out.append(f"Wi-Fi signal weak: {net['interface']} at {signal:.0f} dBm (floor {min_signal_dbm:g}): "
                   "messages are lost and sent again, and the broker connection drops; move the box or the "
                   "access point closer, or use an antenna or a cable")
    return out


def memory_mb() -> tuple[float, float]:
    """(available, total) MB of the system's memory: available is the kernel's MemAvailable (free, and
    the cache it can reclaim without swapping), what a new allocation can still get."""
    vm = psutil.virtual_memory()
    return round(vm.available / 1e6, 1), round(vm.total / 1e6, 1)


def _existing(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (a state directory not made yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_free_mb(path: Path) -> float | None:
    try:
        return round(shutil.disk_usage(_existing(path)).free / 1e6, 1)
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
    """Health's `process`: CPU, resident memory, and the agent's own memory apart from it.

    RSS counts the pages of the libraries the process maps (LiteRT, OpenCV and FFmpeg, numpy: about 60
    to 95 MB of an agent's 120 to 155), and how many of those are mapped changes with the kernel and the
    page cache (Linux 6.18 maps a large folio whole at a fault: libraries read whole into the cache before
    the agent started added 34 MB to the same agent) and with memory pressure (the kernel drops them and
    maps them again). `anon_mb`, the anonymous
    resident memory (heap, malloc arenas, stacks: `RssAnon` in /proc/self/status), is what grows with a
    leak and with nothing else, the figure to watch over months."""

    def __init__(self, status: str = "/proc/self/status") -> None:
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # first call primes the counter
        self._status = status

    def sample(self) -> dict[str, float | None]:
        mem = self._proc.memory_info()
        return {
            "cpu_percent": round(self._proc.cpu_percent(None), 1),
            "rss_mb": round(mem.rss / 1e6, 1),
            "anon_mb": self._anon_mb(),
            "written_mb": self._written_mb(),
        }

    def _written_mb(self) -> float | None:
        """MB the agent has sent to storage since it started (the kernel counts a page as it is dirtied, so
        a file rewritten in place counts each time): what its outbox, clips and snapshots cost an SD card
        or an eMMC in wear. None where the kernel keeps no I/O accounting."""
        try:
            return round(self._proc.io_counters().write_bytes / 1e6, 1)
        except (psutil.Error, AttributeError, NotImplementedError):
            return None

    def _anon_mb(self) -> float | None:
        """RssAnon in MB; None where the kernel does not give it (not Linux, or before 4.5)."""
        try:
            with open(self._status) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return round(int(line.split()[1]) * 1024 / 1e6, 1)
        except (OSError, ValueError, IndexError):
            return None
        return None


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


def to_devnull(stream: Any) -> None:
    """Point a stream's descriptor at /dev/null: what it still holds, and the interpreter's own flush of
    it at exit, then go nowhere instead of raising again (a pipe whose reader left, a full disk; the
    recipe of Python's documentation on SIGPIPE). A stream with no descriptor of its own is left."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    finally:
        os.close(devnull)


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


def present_nodes(dev: str, patterns: tuple[str, ...], by_id: str, none: str) -> str:
    """The device nodes under `dev` matching `patterns`, in their numbers' order, and the names udev keeps
    for them under `dev/by_id`: for the error of one that is not there (a USB camera or serial adapter
    renumbered after a reboot, or unplugged); `none` where there are none at all."""
    nodes = sorted((p for pat in patterns for p in glob.glob(os.path.join(dev, pat))), key=lambda p: (len(p), p))
    if not nodes:
        return none
    ids = sorted(os.path.basename(p) for p in glob.glob(os.path.join(dev, by_id, "*")))
    shown = ", ".join(nodes[:8]) + (f" and {len(nodes) - 8} more" if len(nodes) > 8 else "")
    return f"present: {shown}" + (f"; by id: {', '.join(ids[:4])}" if ids else "")
