"""A serial port with one reading per line (CSV or JSON), e.g. a microcontroller streaming an IMU."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.signals.base import Chunk, SignalSource, SourceError, close_quietly

if TYPE_CHECKING:
    from edge_agent.config import Settings
from edge_agent.signals.readings import ReadingSource

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

    def open(self) -> None:
        try:
            import serial
        except ImportError as err:
            raise SourceError("serial input needs pyserial (pip install 'edge-agent[sensors]')") from err
        try:
            self._ser = serial.Serial(self.port, self.baud, timeout=0.1)
        except (serial.SerialException, OSError, ValueError) as err:
            raise SourceError(f"cannot open serial port {self.port}: {err}") from None
        self._ser.reset_input_buffer()  # a half line from before the open is not a reading

    def read(self, timeout: float) -> Chunk | None:
        import serial

        if self._ser is None:
            raise SourceError("not open")
        rows: list[np.ndarray] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._ser.timeout = max(0.0, deadline - time.monotonic()) if not rows else 0
                line = self._ser.readline(_MAX_LINE)
                if not line:
                    break
                if not line.endswith(b"\n"):  # partial line at timeout: keep waiting for the rest
                    line += self._ser.readline(_MAX_LINE)
                self._take(self.parser.parse(line), rows)
                if self._ser.in_waiting == 0:
                    break
        except (serial.SerialException, OSError) as err:
            raise SourceError(f"serial port {self.port}: {err}") from None
        return self._chunk(rows)

    def close(self) -> None:
        if self._ser is not None:
            close_quietly(self._ser)
            self._ser = None
