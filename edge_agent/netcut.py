"""Cutting a connection that a thread is blocked reading, from another thread, at a deadline.

A socket timeout bounds each wait for a byte, not a response: http.client reads a status line and
headers a line at a time, so a server that sends one byte just inside the timeout holds the reader for
as long as it likes (an update thread, with every deploy queued behind it; a camera's reader, and each
reader the capture watch gave up on after it). Shutting the socket down makes the blocked read return.
"""

from __future__ import annotations

import http.client
import socket
import threading


def cut(sock: socket.socket) -> None:
    """Shut a socket down, so that a read blocked on it returns. The plain socket's shutdown: an SSL
    socket's own would also tear down its TLS state under the reader."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # closed meanwhile: nothing is blocked on it
        pass


class Cutoff:
    """`with Cutoff(conn, seconds) as c:` a request and its answer's head, or a page drained: the
    connection's socket (the plain one during a TLS handshake) is cut once `seconds` have passed, and
    `c.fired` says so. Whatever was read by then is not to be trusted: headers that end where the
    socket was cut parse as if whole. Look at `fired` once the block is left (its end waits for a cut
    under way)."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float):
        self.conn, self.fired, self._done = conn, False, False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def _cut(self) -> None:
        with self._lock:  # not once the block is left: the connection goes on serving
            sock = self.conn.sock
            if self._done or sock is None or sock.fileno() == -1:
                return
            self.fired = True  # before the cut: the reader wakes at once and may look at it first
            cut(sock)

    def __enter__(self) -> Cutoff:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
