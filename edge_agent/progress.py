"""Progress of long command-line work: a bar (tqdm) on a terminal, plain lines in logs and pipes.

Plain mode prints a line when the state changes or the count crosses another tenth of the total,
so a log of a long push or calibration stays short and greppable.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO


class Progress:
    def __init__(self, desc: str, total: float | None, unit: str = "", out: TextIO | None = None, position: int = 0):
        self.desc, self.total, self.unit = desc, total, unit
        self.out = out if out is not None else sys.stderr
        self.n = 0.0
        self._bar: Any = None
        self._last_tenth = -1
        self._last_note: str | None = None
        isatty = getattr(self.out, "isatty", None)
        if isatty is not None and isatty():
            from tqdm import tqdm

            try:
                cols = os.get_terminal_size(self.out.fileno()).columns
            except (OSError, ValueError, AttributeError):
                cols = 0
            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit or "it",
                file=self.out,
                position=position,
                leave=True,
                ncols=cols or 80,  # a terminal that reports no width (a fresh pty, a serial console)
                dynamic_ncols=cols > 0,
                # a percentage has no rate worth showing ("%/s"): the state after the bar says more
                **({"bar_format": "{desc}: {percentage:3.0f}%|{bar}| {postfix}"} if unit == "%" else {}),
            )

    @property
    def is_bar(self) -> bool:
        return self._bar is not None

    def update(self, n: float = 1) -> None:
        self.set(self.n + n)

    def set(self, n: float, note: str | None = None) -> None:
        """Absolute progress (and optionally a short state word)."""
        self.n = n
        if self._bar is not None:
            self._bar.n = n
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()
            return
        tenth = int(10 * n / self.total) if self.total else -1
        if tenth != self._last_tenth or (note is not None and note != self._last_note):
            self._last_tenth = tenth
            self._last_note = note if note is not None else self._last_note
            amount = f"{n:g}/{self.total:g}{self.unit and ' ' + self.unit}" if self.total else f"{n:g}{self.unit}"
            self._line(f"{note} {amount}" if note else amount)

    def note(self, text: str) -> None:
        """A state change worth a line of its own (plain mode) or the bar's postfix (terminal)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text)
            return
        if text != self._last_note:
            self._last_note = text
            self._line(text)

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
