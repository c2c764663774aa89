"""`rtsps://` cameras, their certificate verified as an https camera's is.

FFmpeg speaks TLS to an rtsps camera but verifies no certificate, and takes no option to: its RTSP
demuxer opens the TLS link with none, so anyone on the path could pose as the camera and be believed.
Here the agent makes the TLS link itself, checked by `source.tls_verify` and `source.tls_ca_file`, and
FFmpeg speaks plain RTSP to a relay on the loopback that carries each of its connections over such a
link. RTSP over TLS carries the media interleaved on that one connection (FFmpeg asks for TCP on rtsps),
so every byte FFmpeg reads came over a verified link. The camera sees requests for the relay's address
(`rtsp://127.0.0.1:PORT/path`); a camera reached through NAT sees other hosts in its URLs all the time,
and answers by the path.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import socket
import ssl
import threading
import urllib.parse
from typing import TYPE_CHECKING

from edge_agent.sources.base import Source, SourceError
from edge_agent.sources.mjpeg import client_context, untrusted_certificate
from edge_agent.sources.stream import StreamSource

if TYPE_CHECKING:
    from pathlib import Path

    from edge_agent.config import SourceConfig

log = logging.getLogger(__name__)

#: FFmpeg's default port for rtsps:// (RFC 7826)
DEFAULT_PORT = 322
_CHUNK = 64 << 10
#: how often a relay's threads look at whether it was closed
_POLL_S = 0.5


class RtspsSource(StreamSource):
    kind = "rtsps"
    options = frozenset({"tls_verify", "tls_ca_file"})

    @classmethod
    def claims(cls, uri: str) -> bool:
        return re.match(r"^rtsps://", uri, re.IGNORECASE) is not None

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        return cls(uri, cfg.read_timeout_s, cfg.tls_verify, cfg.tls_ca_file)

    def __init__(self, uri: str, timeout_s: float = 5.0, tls_verify: bool = True, tls_ca_file: Path | None = None):
        super().__init__(uri, timeout_s)
        self.tls_verify, self.tls_ca_file = tls_verify, tls_ca_file
        self._relay: TlsRelay | None = None

    def _target(self) -> str:
        """The URL FFmpeg opens: the camera's, with the relay's address in place of the camera's, its user
        and password (FFmpeg answers the camera's challenge with them) and path kept."""
        assert self._relay is not None
        url = urllib.parse.urlsplit(self.uri)
        user = url.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self._relay.port}" if user else f"127.0.0.1:{self._relay.port}"
        return urllib.parse.urlunsplit(("rtsp", netloc, url.path, url.query, ""))

    def open(self) -> None:
        self.close()
        url = urllib.parse.urlsplit(self.uri)
        try:
            port = url.port or DEFAULT_PORT
        except ValueError:
            raise SourceError(f"cannot open {self.describe()}: bad port") from None
        relay = TlsRelay(url.hostname or "", port, client_context(self.tls_verify, self.tls_ca_file),
                         self.timeout_ms / 1000)
        try:
            relay.connect().close()  # the camera checked before FFmpeg starts: a refusal is said as one
        except ssl.SSLCertVerificationError as err:
            relay.close()
            raise SourceError(f"cannot open {self.describe()}: {untrusted_certificate(err)}") from None
        except OSError as err:
            relay.close()
            raise SourceError(f"cannot open {self.describe()}: {err}") from None
        self._relay = relay
        try:
            super().open()
        except SourceError as err:
            self.close()
            if relay.error is not None:  # the relay's link failed under FFmpeg: that is why it could not open
                raise SourceError(f"cannot open {self.describe()}: {relay.error}") from None
            raise err from None

    def close(self) -> None:
        super().close()
        if self._relay is not None:
            self._relay.close()
            self._relay = None


class TlsRelay:
    """A listener on the loopback whose every connection is carried over a new TLS link to the camera,
    checked by `context`. What goes wrong on a link is kept in `error` for the source to say."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout_s: float):
        self.host, self.camera_port, self.context, self.timeout_s = host, port, context, timeout_s
        self.error: str | None = None
        self._stop = threading.Event()
        self._links: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"rtsps-relay-{self.port}", daemon=True)
        self._thread.start()

    def connect(self) -> ssl.SSLSocket:
        """A TLS link to the camera, verified (raises `ssl.SSLCertVerificationError` where it is not)."""
        raw = socket.create_connection((self.host, self.camera_port), timeout=self.timeout_s)
        try:
            return self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for s in links:  # unblocks a link's thread at once
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._thread.join(2 * _POLL_S + 1)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                local, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener closed
                return
            try:
                threading.Thread(target=self._carry, args=(local,), name=f"rtsps-link-{self.port}",
                                 daemon=True).start()
            except Exception:  # one catch-all at the loop's boundary: a link that cannot start is dropped
                log.exception("rtsps relay: a link could not start")
                local.close()

    def _carry(self, local: socket.socket) -> None:
        try:
            remote = self.connect()
        except ssl.SSLCertVerificationError as err:
            self.error = untrusted_certificate(err)
            local.close()
            return
        except OSError as err:
            self.error = f"the TLS link to the camera failed: {err}"
            local.close()
            return
        with self._lock:
            self._links.update((local, remote))
        try:
            self._pump(local, remote)
        except OSError as err:  # either end gone: FFmpeg sees its connection close, and reopens
            log.debug("rtsps relay %s: link ended: %s", self.port, err)
        finally:
            with self._lock:
                self._links.difference_update((local, remote))
            for s in (local, remote):
                s.close()

    def _pump(self, local: socket.socket, remote: ssl.SSLSocket) -> None:
        """Bytes each way until either end closes. Both sockets are non-blocking: a TLS record that is not
        application data (a session ticket after the handshake) makes the camera's side readable without
        anything to read, and a blocking read there would hold FFmpeg's request back until the timeout."""
        local.setblocking(False)
        remote.setblocking(False)
        while not self._stop.is_set():
            ready = [remote] if remote.pending() else select.select([local, remote], [], [], _POLL_S)[0]
            for src in ready:
                dst = remote if src is local else local
                try:
                    data = src.recv(_CHUNK)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    continue
                if not data:
                    return
                self._send_all(dst, data)

    def _send_all(self, dst: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[dst.send(view):]
            except (ssl.SSLWantWriteError, BlockingIOError):
                if not select.select([], [dst], [], self.timeout_s)[1]:
                    raise TimeoutError("the other end takes nothing") from None
            except ssl.SSLWantReadError:  # TLS wants the peer's record first
                if not select.select([dst], [], [], self.timeout_s)[0]:
                    raise TimeoutError("the camera sends nothing") from None
            if self._stop.is_set():
                return
