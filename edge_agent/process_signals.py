"""Process signals (SIGTERM, SIGINT, SIGHUP) turned into calls on a thread of their own.

A Python signal handler runs on the main thread, between two of its bytecodes, wherever that thread
happens to be. A handler that sets a `threading.Event` takes the Event's lock, a plain (not reentrant)
lock: when a second signal arrives while the main thread holds that lock (inside the first handler's
`set()`, or in the shutdown's own `stop.set()`), the handler waits for a lock its own thread holds,
for ever. The agent hung that way on a burst of SIGTERMs: a service manager's stop, a person's
repeated Ctrl-C. So here the handler does nothing at all: CPython's C-level handler writes the signal's
number to a pipe (`signal.set_wakeup_fd`, async-signal-safe), and a named thread reads the pipe and
makes the calls, in ordinary thread context where taking a lock is safe.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

#: What the reader is told to end on: no signal has the number 0.
_END = b"\0"


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing. The C-level handler has already written `signum` to the pipe."""


class SignalThread:
    """While entered (on the main thread), each of `handlers`' signals is delivered to its callable on
    the thread "signals", in the order they arrived. On exit the previous handlers are back, or with
    `then_ignore` the signals are ignored from then on: for a process's main loop, after which the
    process only exits, so that a late signal cannot turn a clean exit into a death by signal."""

    def __init__(
        self, handlers: Mapping[signal.Signals, Callable[[signal.Signals], None]], then_ignore: bool = False
    ):
        self.handlers = dict(handlers)
        self.then_ignore = then_ignore
        self._old: dict[signal.Signals, Any] = {}
        self._old_fd = -1
        self._read = self._write = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SignalThread:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # set_wakeup_fd's requirement: a handler must never block
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._old = {sig: signal.signal(sig, _ignore) for sig in self.handlers}
        self._thread = threading.Thread(target=self._run, name="signals", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, signal.SIG_IGN if self.then_ignore else handler)
        signal.set_wakeup_fd(self._old_fd)
        try:
            os.write(self._write, _END)
        except BlockingIOError:  # the pipe is full behind a reader stuck in a callable: it is left behind
            pass
        if self._thread is not None:
            self._thread.join(5.0)
        os.close(self._write)
        if self._thread is None or not self._thread.is_alive():
            os.close(self._read)  # a reader still in a callable keeps its end (a daemon thread; exit frees it)

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError as err:  # the pipe is gone: nothing more will come
                log.error("signal pipe: %s", err)
                return
            for num in data:
                if num == _END[0]:
                    return
                try:
                    sig = signal.Signals(num)
                    call = self.handlers.get(sig)
                    if call is not None:  # the pipe also hears signals other code handles in Python
                        call(sig)
                except Exception:  # loop boundary: one failing callable must not deafen the process
                    log.exception("handling signal %d", num)
