"""A threading HTTP server that serves a bounded number of connections at once (the status page and
the fleet's model server both face clients they do not control)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
            if self.refused in (1, 10, 100, 1000) or self.refused % 10000 == 0:
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
