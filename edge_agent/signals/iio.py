"""Linux Industrial I/O sensors: sysfs polling at a set rate, or the buffered character device.

Values follow the kernel's IIO ABI: processed = (raw + offset) * scale, with per-channel
`in_<name>_scale`/`_offset` or the type-wide `in_<type>_scale`/`_offset`.
"""

from __future__ import annotations

import os
import re
import select
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from edge_agent.signals.base import Chunk, Pacer, SignalSource, SourceError

if TYPE_CHECKING:
    from edge_agent.config import Settings

#: Where the kernel lists the IIO devices (a name of its own, for tests: no IIO device can be made here).
_IIO_ROOT = "/sys/bus/iio/devices/"
_NODE = re.compile(r"^iio:device\d+$")

_RAW = re.compile(r"^in_(.+)_raw$")
#: le:s12/16>>4 -> endianness, sign, real bits, storage bits, shift
_TYPE = re.compile(r"^(be|le):([su])(\d+)/(\d+)(?:X(\d+))?>>(\d+)$")
#: Buffered samples the kernel holds for us before it overruns.
_BUFFER_LENGTH = 256


def _read(path: Path) -> str:
    return path.read_text().strip()


def _float_attr(base: Path, names: list[str], default: float) -> float:
    for n in names:
        p = base / n
        if p.is_file():
            try:
                return float(_read(p))
            except (OSError, ValueError):
                continue
    return default


def locate(where: str) -> Path:
    """The device's sysfs directory: `where` is its path, its node's name (`iio:device0`), or the name its
    driver gives it (the `name` attribute: `bme280`, `mpu6050`), looked up at each open. The numbers
    follow the order the drivers probed in at boot, which two sensors on one bus need not keep."""
    if "/" in where:
        return Path(where)
    root = Path(_IIO_ROOT)
    if _NODE.match(where):
        return root / where
    found, listed = [], []
    for d in sorted(root.glob("iio:device*")):
        try:
            name = _read(d / "name")
        except OSError:
            continue
        listed.append(f"{d.name} ({name})")
        if name == where:
            found.append(d)
    if len(found) == 1:
        return found[0]
    if found:
        raise SourceError(f"{len(found)} IIO devices are named {where!r} ({', '.join(d.name for d in found)}): "
                          "name one by its path")
    raise SourceError(f"no IIO device named {where!r} (there are: {', '.join(listed) or 'none'})")


@dataclass(frozen=True)
class _ScanChannel:
    name: str
    index: int
    dtype: np.dtype  # storage type
    bits: int
    shift: int
    signed: bool


class IIOSource(SignalSource):
    kind = "iio"
    signal_options = frozenset({"channels", "iio_device"})

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, cls.default_rate(s), s.signal.channels, s.signal.iio_device)

    def __init__(self, uri: str, where: str, rate: float, channels: list[str] | None, dev: str | None):
        super().__init__(uri, rate)
        self.where = where  # see `locate`
        self.base = Path(where) if "/" in where else Path(_IIO_ROOT, where)  # until an open finds it
        self.want = channels
        self.dev = dev
        self._raw: list[Path] = []
        self._offset = np.zeros(0, np.float64)
        self._scale = np.ones(0, np.float64)
        self._pacer: Pacer | None = None
        self._fd: int | None = None
        self._scan: list[_ScanChannel] = []
        self._record: np.dtype | None = None
        self._pending = b""
        self.buffered = False

    def open(self) -> None:
        self.base = locate(self.where)
        if not self.base.is_dir():
            raise SourceError(f"IIO device {self.base} not found")
        names = sorted(m.group(1) for f in os.listdir(self.base) if (m := _RAW.match(f)))
        if self.want:
            missing = [c for c in self.want if c not in names]
            if missing:
                raise SourceError(f"{self.base}: no channel {', '.join(missing)} (has {', '.join(names) or 'none'})")
            names = list(self.want)
        if not names:
            raise SourceError(f"{self.base}: no in_*_raw channels")
        self.channels, self.channel_names = len(names), tuple(names)
        self._raw = [self.base / f"in_{n}_raw" for n in names]
        kinds = [n.split("_")[0] for n in names]
        self._offset = np.array(
            [
                _float_attr(self.base, [f"in_{n}_offset", f"in_{k}_offset"], 0.0)
                for n, k in zip(names, kinds, strict=True)
            ]
        )
        self._scale = np.array(
            [_float_attr(self.base, [f"in_{n}_scale", f"in_{k}_scale"], 1.0) for n, k in zip(names, kinds, strict=True)]
        )
        self.buffered = self._open_buffer(names)
        self._pacer = Pacer(self.rate)

    def _open_buffer(self, names: list[str]) -> bool:
        """Use /dev/iio:deviceN when the device has scan elements; False: poll sysfs instead."""
        scan_dir = self.base / "scan_elements"
        dev = self.dev or f"/dev/{self.base.name}"
        if not scan_dir.is_dir() or not os.path.exists(dev):
            return False
        chans = []
        try:
            for n in names:
                m = _TYPE.match(_read(scan_dir / f"in_{n}_type"))
                if m is None:
                    return False
                end, sign, bits, storage, _rep, shift = m.groups()
                dt = np.dtype(f"{'<' if end == 'le' else '>'}{'i' if sign == 's' else 'u'}{int(storage) // 8}")
                chans.append(
                    _ScanChannel(n, int(_read(scan_dir / f"in_{n}_index")), dt, int(bits), int(shift), sign == "s")
                )
            for f in scan_dir.glob("*_en"):
                f.write_text("1\n" if f.name.removeprefix("in_").removesuffix("_en") in names else "0\n")
            buf = self.base / "buffer"
            if buf.is_dir():
                (buf / "length").write_text(f"{_BUFFER_LENGTH}\n")
                (buf / "enable").write_text("1\n")
            self._fd = os.open(dev, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return False
        self._scan = sorted(chans, key=lambda c: c.index)
        # records: channels in index order, each aligned to its own size (the kernel's layout)
        fields, off = [], 0
        for c in self._scan:
            off += (-off) % c.dtype.itemsize
            fields.append((c.name, c.dtype, off))
            off += c.dtype.itemsize
        spec = {
            "names": [f[0] for f in fields],
            "formats": [f[1] for f in fields],
            "offsets": [f[2] for f in fields],
            "itemsize": off,
        }
        # numpy >= 2.5's stubs no longer match a dict literal to their field-spec TypedDict
        self._record = np.dtype(cast("Any", spec))
        self._pending = b""
        return True

    def read(self, timeout: float) -> Chunk | None:
        if self._pacer is None:
            raise SourceError("not open")
        return self._read_buffer(timeout) if self.buffered else self._poll(timeout)

    def _poll(self, timeout: float) -> Chunk | None:
        p = self._pacer
        assert p is not None
        wait = p.wait_s()
        if wait > timeout:
            time.sleep(timeout)
            return None
        time.sleep(wait)
        late = p.due() - 1
        if late > 0:  # fell behind: those instants are gone, say so rather than invent them
            self.gaps += 1
            self.dropped += late
            p.done += late
        try:
            raw = np.array([float(_read(f)) for f in self._raw])
        except (OSError, ValueError) as err:
            raise SourceError(f"{self.base}: {err}") from None
        p.done += 1
        x = ((raw + self._offset) * self._scale).astype(np.float32)[None, :]
        return Chunk(x, time.time(), time.monotonic())

    def _read_buffer(self, timeout: float) -> Chunk | None:
        assert self._fd is not None and self._record is not None
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError as err:
            raise SourceError(f"{self.dev or self.base}: {err}") from None
        if not data:
            raise SourceError(f"{self.dev or self.base}: device closed")
        buf = self._pending + data
        size = self._record.itemsize
        usable = len(buf) - len(buf) % size
        self._pending = buf[usable:]
        rec = np.frombuffer(buf[:usable], self._record)
        cols = []
        for c in self._scan:
            v = rec[c.name].astype(np.int64) >> c.shift
            v &= (1 << c.bits) - 1
            if c.signed:
                v = np.where(v >= 1 << (c.bits - 1), v - (1 << c.bits), v)
            cols.append(v)
        order = [self.channel_names.index(c.name) for c in self._scan]
        raw = np.zeros((len(rec), self.channels), np.float64)
        raw[:, order] = np.stack(cols, axis=1)
        x = ((raw + self._offset) * self._scale).astype(np.float32)
        return Chunk(x, time.time() - len(x) / self.rate, time.monotonic())

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
            enable = self.base / "buffer" / "enable"
            try:
                if enable.is_file():
                    enable.write_text("0\n")
            except OSError:
                pass
