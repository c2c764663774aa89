"""A threading HTTP server that serves a bounded number of connections at once (the status page and
the fleet's model server both face clients they do not control), and what both need to send a file:
a single byte range, and the bytes copied a chunk at a time (a clip or a model is tens of megabytes;
read whole, a few clients at once would hold that many times it in memory)."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

from edge_agent.untrusted import log_now

log = logging.getLogger(__name__)


class BoundedServer(ThreadingHTTPServer):
    """One thread per connection, as many as `max_connections` at once: beyond that a connection is
    closed unread, so clients that open connections and send nothing (or a page left open in many tabs)
    cannot make the process start threads without bound. Give the handler class a `timeout` (its
    socket's): a handler then gives up on a client idle that long, which frees its slot."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: Callable[..., BaseHTTPRequestHandler], max_connections: int
    ):
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            if log_now(self.refused):
                log.warning("http: %d connection(s) refused so far: more than %d at once", self.refused,
                            self.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


#: One range, `bytes=FIRST-[LAST]` or `bytes=-SUFFIX`; anything else is ignored and the whole file sent
#: (ASCII digits, at most 18: Python's `\d` takes other scripts' digits, and int() refuses thousands of
#: them, a 500 with a traceback in the log per crafted request).
_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")
#: Bytes read and written at a time when a file is sent.
CHUNK = 64 * 1024


class RangeNotSatisfiable(ValueError):
    """A range that starts past the file's end (answer 416 with `Content-Range: bytes */SIZE`)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) byte of a single `Range` header over a file of `size` bytes, or None where the
    whole file is to be sent: no header, or one this does not parse (several ranges, another unit,
    garbage), which RFC 9110 lets a server ignore. A last byte past the end is cut to the end."""
    m = _RANGE.fullmatch((header or "").strip())
    if m is None or not (m.group(1) or m.group(2)):
        return None
    if m.group(1):
        first, last = int(m.group(1)), min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
    else:  # the last N bytes
        first, last = max(0, size - int(m.group(2))), size - 1
    if first >= size or last < first:
        raise RangeNotSatisfiable(f"bytes */{size}")
    return first, last


def copy_bytes(src: BinaryIO, dst: Any, length: int) -> None:
    """Copies `length` bytes from `src`'s position to `dst`, CHUNK at a time (less if the file is cut
    short meanwhile: the client sees a body shorter than its Content-Length, and knows)."""
    while length > 0:
        data = src.read(min(CHUNK, length))
        if not data:
            return
        dst.write(data)
        length -= len(data)
