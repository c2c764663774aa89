"""A serial port with one reading per line (CSV or JSON), e.g. a microcontroller streaming an IMU."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.signals.base import Chunk, SignalSource, SourceError, close_quietly

if TYPE_CHECKING:
    from edge_agent.config import Settings
from edge_agent.signals.readings import ReadingSource
from edge_agent.system import present_nodes

#: A line longer than this is noise on the wire, not a reading.
_MAX_LINE = 4096


class SerialSource(ReadingSource):
    kind = "serial"
    signal_options = frozenset({"channels", "baud"})

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, s.signal.baud, cls.default_rate(s), s.signal.channels)

    def __init__(self, uri: str, port: str, baud: int, rate: float, channels: list[str] | None):
        super().__init__(uri, rate, channels)
        self.port, self.baud = port, baud
        self._ser: Any = None
        #: the start of a line whose end has not arrived yet
        self._partial = b""

    def open(self) -> None:
        try:
            import serial
        except ImportError as err:
            raise SourceError("serial input needs pyserial (pip install 'edge-agent[sensors]')") from err
        try:
            self._ser = serial.Serial(self.port, self.baud, timeout=0.1)
        except (serial.SerialException, OSError, ValueError) as err:
            there = "" if os.path.exists(self.port) else f" ({present_ports()})"  # a board renumbered, unplugged
            raise SourceError(f"cannot open serial port {self.port}: {err}{there}") from None
        self._ser.reset_input_buffer()  # a half line from before the open is not a reading
        self._partial = b""

    def read(self, timeout: float) -> Chunk | None:
        """The readings that arrived together, waiting up to `timeout` for the first. A line ends at a
        line feed or a carriage return: devices that end theirs with a carriage return alone (many
        industrial sensors, a sketch that prints '\\r') had each read joined up into one line that parsed
        as nothing, and lost every reading. A line not ended yet waits for its end in the next read."""
        import serial

        if self._ser is None:
            raise SourceError("not open")
        rows: list[np.ndarray] = []
        deadline = time.monotonic() + timeout
        try:
            while not (rows and time.monotonic() >= deadline):  # a port never silent still returns
                waiting = self._ser.in_waiting
                if not waiting:
                    left = deadline - time.monotonic()
                    if rows or left <= 0:
                        break
                    self._ser.timeout = left
                    data = self._ser.read(1)  # the first byte, or nothing by the deadline
                    if not data:
                        break
                else:
                    self._ser.timeout = 0
                    data = self._ser.read(min(waiting, _MAX_LINE))
                self._feed(data, rows)
        except (serial.SerialException, OSError) as err:
            raise SourceError(f"serial port {self.port}: {err}") from None
        return self._chunk(rows)

    def _feed(self, data: bytes, rows: list[np.ndarray]) -> None:
        *lines, rest = (self._partial + data).replace(b"\r", b"\n").split(b"\n")
        for line in lines:
            if line.strip():  # CR LF ends a line once, not twice
                self._take(self.parser.parse(line), rows)
        if len(rest) > _MAX_LINE:  # noise on the wire, not a reading
            self.dropped += 1
            rest = b""
        self._partial = rest

    def close(self) -> None:
        if self._ser is not None:
            close_quietly(self._ser)
            self._ser = None


def present_ports(dev: str = "/dev") -> str:
    """The USB serial ports there are (`system.present_nodes`), for the error of one that is not: an
    Arduino or a USB adapter is ttyUSB0 or ttyACM0 by the order it was found in."""
    none = "no /dev/ttyUSB* or /dev/ttyACM* at all: nothing is plugged in, or this process may not see it"
    return present_nodes(dev, ("ttyUSB*", "ttyACM*"), "serial/by-id", none)
