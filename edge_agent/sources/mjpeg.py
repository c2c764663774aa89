"""HTTP cameras that serve MJPEG as `multipart/x-mixed-replace`, or still images, read here rather than through FFmpeg.

Most IP cameras, ESP32-CAM boards and `motion`/`mjpg-streamer` serve their live view this way. Read
through FFmpeg, a part that never ends (a camera's firmware fault, or a server that sends bytes and no
boundary) is buffered whole until the read timeout: the agent grew to 1.9 GB in 5 s on a loopback
link (measured), and FFmpeg's own JPEG decoder takes any size a frame declares. Here every part is
bounded (MAX_PART_BYTES), every frame gets the same header check as other pictures from elsewhere
(`imageheader`), and a frame must arrive within `source.read_timeout_s` however slowly the bytes
trickle. A URL that answers one still image (a snapshot URL) is polled, a request per frame, each
picture bounded the same way. A camera that asks for a password is answered as it asks (`httpauth`:
Digest or Basic). A URL whose server answers with anything else (an HLS playlist, a video file) is
handed to FFmpeg as before.
"""

from __future__ import annotations

import http.client
import logging
import re
import ssl
import time
import urllib.parse
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.imageheader import decode_reduced
from edge_agent.netcut import Cutoff
from edge_agent.redact import shown_url
from edge_agent.sources import httpauth
from edge_agent.sources.base import FrameError, Source, SourceError
from edge_agent.sources.stream import StreamSource, public_url
from edge_agent.untrusted import plain

if TYPE_CHECKING:
    from pathlib import Path

    from edge_agent.config import SourceConfig

log = logging.getLogger(__name__)

#: The largest part (one JPEG) read: a 4K frame at high quality is 2-3 MB.
MAX_PART_BYTES = 16 << 20
#: Bytes of part headers, and of anything between a part's end and the next boundary, read at most.
_MAX_HEADER_BYTES = 16 << 10
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
#: The blank line after a part's headers (some servers end lines with a bare LF).
_HEADERS_END = re.compile(rb"\r?\n\r?\n")
_READ = 64 << 10
#: Redirects followed as the source opens, and the statuses that are one
_MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


def pin(context: ssl.SSLContext) -> None:
    """Trust what `source.tls_ca_file` holds the same way on every Python the agent runs on. Python 3.13
    verifies strictly by RFC 5280 (`VERIFY_X509_STRICT`), and refused a camera's certificate that its
    own CA signed without an Authority Key Identifier, as cameras' CAs sign them, where 3.11 took it.
    And 3.11 refused the camera's own certificate itself as the trusted one, unless it signed itself,
    where 3.13 takes it (`VERIFY_X509_PARTIAL_CHAIN`). The chain up to what the file holds, the dates
    and the host name are checked everywhere alike."""
    context.verify_flags = (context.verify_flags & ~ssl.VERIFY_X509_STRICT) | ssl.VERIFY_X509_PARTIAL_CHAIN


def client_context(tls_verify: bool, tls_ca_file: Path | None) -> ssl.SSLContext:
    """How the agent's TLS link to a camera (https://, rtsps://) is checked: against `source.tls_ca_file`,
    else the system's trusted CAs; with `source.tls_verify = false`, not at all."""
    context = ssl.create_default_context(cafile=str(tls_ca_file) if tls_ca_file else None)
    if tls_ca_file is not None:
        pin(context)
    if not tls_verify:  # a camera's own certificate, for no host name: encrypted, not authenticated
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def untrusted_certificate(err: ssl.SSLCertVerificationError) -> str:
    """A camera's certificate refused, said with what to set."""
    return (f"TLS: the camera's certificate is not trusted ({err.verify_message}): set source.tls_ca_file to it or "
            "its CA, or source.tls_verify = false on a network you trust")


class MjpegSource(Source):
    kind = "http"
    options = frozenset({"tls_verify", "tls_ca_file"})

    @classmethod
    def claims(cls, uri: str) -> bool:
        return re.match(r"^https?://", uri) is not None

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        return cls(uri, cfg.read_timeout_s, cfg.tls_verify, cfg.tls_ca_file)

    def __init__(self, uri: str, timeout_s: float = 5.0, tls_verify: bool = True, tls_ca_file: Path | None = None):
        super().__init__(uri)
        self.timeout_s = timeout_s
        self.tls_verify, self.tls_ca_file = tls_verify, tls_ca_file
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._boundary = b""
        #: bytes read and not yet taken (appended in place: a part of megabytes is many reads)
        self._buf = bytearray()
        self._jpeg: bytes | None = None
        #: a still image server's first picture, read as it opened
        self._jpeg_first: bytes | None = None
        #: FFmpeg, for a server that answers with something other than multipart JPEG
        self._ffmpeg: StreamSource | None = None
        url = urllib.parse.urlsplit(uri)
        #: where the requests go: the URL, or where it redirected to as the source opened (elsewhere: to
        #: another host, which is not sent the URL's user and password)
        self._url, self._elsewhere = uri, False
        self._user = None if url.username is None else urllib.parse.unquote(url.username)
        self._password = urllib.parse.unquote(url.password or "")
        #: the scheme the camera asked for, kept across requests and reopenings; Digest's count of uses
        self._challenge: httpauth.Challenge | None = None
        self._nc = 0

    def describe(self) -> str:
        return f"stream:{public_url(self.uri)}"

    # --- opening ---------------------------------------------------------------------------------
    def open(self) -> None:
        self.close()
        self.live, self.polled = True, False  # until the server answers with a still image
        self._url, self._elsewhere = self.uri, False
        conn = self._connect()
        try:
            resp = self._get(conn)
            for _ in range(_MAX_REDIRECTS):
                if resp.status not in _REDIRECTS or not resp.getheader("Location"):
                    break
                conn, resp = self._follow(conn, resp)
        except ssl.SSLCertVerificationError as err:
            conn.close()
            raise SourceError(f"cannot open {self.describe()}: {untrusted_certificate(err)}") from None
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise SourceError(f"cannot open {self.describe()}: {err}") from None
        if resp.status == 401:
            why = self._refused(resp)
            conn.close()
            raise SourceError(f"cannot open {self.describe()}: {why}")
        ctype = resp.getheader("Content-Type", "")
        boundary = _BOUNDARY.search(ctype)
        if resp.status == 200 and ctype.lower().startswith("image/"):
            # a still image (a camera's snapshot URL, ESP32-CAM's /capture, Frigate's latest.jpg):
            # polled, one request at a time, when inference has taken the last picture and at
            # most at the fps cap (no picture is fetched to be thrown away)
            self._conn, self._resp, self.nominal_fps = conn, resp, None
            self.live, self.polled = False, True
            self._jpeg_first = self._grab_snapshot(time.monotonic() + self.timeout_s)
            return
        if resp.status != 200 or not ctype.lower().startswith("multipart/x-mixed-replace") or boundary is None:
            # not multipart JPEG (a playlist, a video, a redirect, an error page): FFmpeg's
            conn.close()
            self._ffmpeg = StreamSource(self.uri, self.timeout_s)
            self._ffmpeg.open()
            self.nominal_fps = self._ffmpeg.nominal_fps
            return
        self._conn, self._resp = conn, resp
        # the delimiter is "--" and the boundary; some cameras declare it with the dashes already, and
        # send it with or without two more: searching for what they declare finds it either way
        declared = boundary.group(1).strip().encode("latin-1")
        self._boundary = declared if declared.startswith(b"--") else b"--" + declared
        self._buf = bytearray()
        self.nominal_fps = None

    def _follow(
        self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A redirect, followed (a camera behind a proxy that moved it to https, a snapshot URL that
        points at its script): the same connection where it stays on the same server. The user and
        password go only to the URL's own host: a redirect elsewhere is not answered with them."""
        here = urllib.parse.urlsplit(self._url)
        location = resp.getheader("Location", "")
        try:
            there = urllib.parse.urlsplit(urllib.parse.urljoin(self._url, location))
            _ = there.port  # not a number, or out of range: raises
            there.geturl().encode("ascii")  # http.client writes the request line in ASCII
        except ValueError:  # UnicodeEncodeError among them; raised out of open, it was a traceback
            raise SourceError(f"cannot open {self.describe()}: redirected to a URL that cannot be followed "
                              f"({plain(shown_url(location), 100)})") from None
        if there.scheme not in ("http", "https"):
            raise SourceError(f"cannot open {self.describe()}: redirected to a {there.scheme or 'relative'} URL")
        self._drain(conn, resp)
        if (there.scheme, there.hostname, there.port) != (here.scheme, here.hostname, here.port):
            conn.close()
            self._challenge = None
            self._elsewhere = there.hostname != urllib.parse.urlsplit(self.uri).hostname
        self._url = there.geturl()
        conn = conn if conn.sock is not None else self._connect()
        return conn, self._get(conn)

    def _connect(self) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self._url)
        try:
            port = url.port
        except ValueError:
            raise SourceError(f"cannot open {self.describe()}: bad port") from None
        host = url.hostname or ""
        if url.scheme != "https":
            return http.client.HTTPConnection(host, port, timeout=self.timeout_s)
        context = client_context(self.tls_verify, self.tls_ca_file)
        return http.client.HTTPSConnection(host, port, timeout=self.timeout_s, context=context)

    def _get(self, conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
        """GET the URL, answering an authentication challenge once. Nothing is sent with the first
        request: a camera that asks for Digest must never see the password in Basic's clear text. The
        scheme it asks for is then kept, and sent with every request after (a polled snapshot costs one
        request, not two), until it challenges again (a Digest nonce gone stale)."""
        resp = self._send(conn)
        if resp.status != 401 or self._user is None or self._elsewhere:
            return resp
        offered = httpauth.challenges(resp.msg.get_all("WWW-Authenticate") or [])
        usable = [c for c in offered if httpauth.supported(c)]
        if not usable:
            return resp
        self._challenge = next((c for c in usable if c.scheme == "digest"), usable[0])
        self._nc = 0
        self._drain(conn, resp)
        return self._send(conn)

    def _send(self, conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
        url = urllib.parse.urlsplit(self._url)
        path = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
        headers = {"Accept": "multipart/x-mixed-replace, image/*, */*"}
        ch, user, password = self._challenge, self._user, self._password
        if ch is not None and user is not None and not self._elsewhere:
            if ch.scheme == "basic":
                headers["Authorization"] = httpauth.basic(user, password)
            else:
                self._nc += 1
                headers["Authorization"] = httpauth.digest(ch, user, password, "GET", path, self._nc)
        failed: Exception | None = None
        with Cutoff(conn, self.timeout_s) as cut:
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as err:
                failed = err
        if cut.fired:  # cut short (headers that end where the socket was shut down parse as if whole)
            conn.close()
            raise TimeoutError(f"no answer within {self.timeout_s:g} s")
        if failed is not None:
            raise failed
        return resp

    def _drain(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        """Read a refusal's page to its end, so that the connection can carry the next request; one
        over _MAX_HEADER_BYTES closes it instead (the next request opens another)."""
        try:
            if conn.sock is not None:
                conn.sock.settimeout(self.timeout_s)
            with Cutoff(conn, self.timeout_s) as cut:
                page = resp.read(_MAX_HEADER_BYTES + 1)
            if cut.fired or len(page) > _MAX_HEADER_BYTES or not resp.isclosed():
                conn.close()
        except (OSError, http.client.HTTPException):
            conn.close()

    def _refused(self, resp: http.client.HTTPResponse) -> str:
        """Why a 401 ends the opening: what the camera asks for, and whether a password was sent."""
        schemes = ", ".join(c.scheme for c in httpauth.challenges(resp.msg.get_all("WWW-Authenticate") or []))
        offered = schemes or "no scheme named"
        if self._user is None or self._elsewhere:
            return f"401 {resp.reason}: the camera asks for a user and password ({offered})"
        if self._challenge is None:
            return f"401 {resp.reason}: the camera asks for {offered}, which the agent does not speak"
        return f"401 {resp.reason}: the camera refused the user and password ({self._challenge.scheme})"

    # --- reading ---------------------------------------------------------------------------------
    def grab(self) -> None:
        if self._ffmpeg is not None:
            self._ffmpeg.grab()
            return
        if self._conn is None:
            raise SourceError("not open")
        deadline = time.monotonic() + self.timeout_s
        if self.polled:
            self._jpeg, self._jpeg_first = self._jpeg_first or self._grab_snapshot(deadline), None
            return
        try:
            self._jpeg = self._next_part(deadline)
        except TimeoutError:
            raise SourceError(f"{self.describe()}: no frame within {self.timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as err:
            raise SourceError(f"{self.describe()}: {err or type(err).__name__}") from None

    def retrieve(self) -> np.ndarray:
        return self.retrieve_reduced(1)[0]

    def retrieve_reduced(self, reduce: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        if self._ffmpeg is not None:
            return self._ffmpeg.retrieve_reduced(reduce)
        jpeg, self._jpeg = self._jpeg, None
        return decode_frame(jpeg, self.describe(), reduce)

    def _grab_snapshot(self, deadline: float) -> bytes:
        """The next still: the response already opened (the first), else a new request on the same
        connection, made again on a fresh one where the camera closed it between two polls."""
        assert self._conn is not None
        try:
            if self._resp is None:
                try:
                    self._resp = self._get(self._conn)
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    self._conn.close()
                    self._resp = self._get(self._conn)
            resp, self._resp = self._resp, None
            ctype = resp.getheader("Content-Type", "")
            if resp.status != 200 or not ctype.lower().startswith("image/"):
                raise SourceError(f"{self.describe()}: answered {resp.status} {ctype!r} for a still image")
            return self._body(resp, deadline)
        except TimeoutError:
            raise SourceError(f"{self.describe()}: no picture within {self.timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as err:
            raise SourceError(f"{self.describe()}: {err or type(err).__name__}") from None

    def _body(self, resp: http.client.HTTPResponse, deadline: float) -> bytes:
        """A whole response body (by its length, its chunks or the connection's end), bounded in bytes
        and in time."""
        if resp.length is not None and not 0 < resp.length <= MAX_PART_BYTES:
            raise SourceError(f"{self.describe()}: a picture of {resp.length} bytes (at most {MAX_PART_BYTES})")
        body = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if self._conn is not None and self._conn.sock is not None:
                self._conn.sock.settimeout(left)
            chunk = resp.read1(_READ)
            if not chunk:
                resp.close()  # read to its end: the connection is free for the next request
                return bytes(body)
            body += chunk
            if len(body) > MAX_PART_BYTES:
                raise SourceError(f"{self.describe()}: a picture of over {MAX_PART_BYTES} bytes")

    def _next_part(self, deadline: float) -> bytes:
        """The body of the next part: past its boundary line and headers, Content-Length bytes, or
        (without one) everything up to the next boundary. Bounded in bytes, and in time by `deadline`."""
        self._until(self._boundary, _MAX_HEADER_BYTES + MAX_PART_BYTES, deadline, "boundary")  # leftovers too
        head = self._until(_HEADERS_END, _MAX_HEADER_BYTES, deadline, "end of a part's headers")
        length = None
        for line in head.splitlines():
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    length = None
        if length is None:
            end = re.compile(b"\r?\n" + re.escape(self._boundary))
            return self._until(end, MAX_PART_BYTES, deadline, "end of a part without a Content-Length", keep=True)
        if not 0 < length <= MAX_PART_BYTES:
            raise SourceError(f"{self.describe()}: a part of {length} bytes (at most {MAX_PART_BYTES})")
        while len(self._buf) < length:
            self._fill(deadline)
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return body

    def _fill(self, deadline: float) -> None:
        """Read what the socket has (one read), waiting no later than `deadline`."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no frame within {self.timeout_s:g} s")
        assert self._conn is not None and self._resp is not None
        if self._conn.sock is not None:
            self._conn.sock.settimeout(left)
        chunk = self._resp.read1(_READ)
        if not chunk:
            raise ConnectionError("the server closed the stream")
        self._buf += chunk  # in place

    def _until(
        self, mark: bytes | re.Pattern[bytes], most: int, deadline: float, what: str, keep: bool = False
    ) -> bytes:
        """The bytes before `mark` (`what`, for the error), consumed with it (`keep`: the mark stays, the
        next part's boundary), reading at most `most` bytes for them."""
        pattern = mark if isinstance(mark, re.Pattern) else re.compile(re.escape(mark))
        start = 0
        while True:
            found = pattern.search(self._buf, start)
            if found is not None:
                before = bytes(self._buf[: found.start()])
                del self._buf[: found.start() if keep else found.end()]
                return before
            if len(self._buf) > most:
                raise SourceError(f"{self.describe()}: no {what} within {most} bytes")
            start = max(0, len(self._buf) - 64)  # a mark cut across two reads is found whole next time
            self._fill(deadline)

    def close(self) -> None:
        if self._ffmpeg is not None:
            self._ffmpeg.close()
            self._ffmpeg = None
        if self._conn is not None:
            self._conn.close()
        self._conn, self._resp, self._buf, self._jpeg, self._jpeg_first = None, None, bytearray(), None, None


def decode_frame(
    jpeg: bytes | np.ndarray | None, source: str, reduce: int = 1
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The picture of a grabbed frame received whole, at 1/`reduce` of its size where it is a JPEG
    (`imageheader.decode_reduced`), and the whole frame's (height, width) where it came out smaller;
    FrameError for one that does not decode or declares too much (skipped: the camera goes on),
    SourceError where none was grabbed."""
    if jpeg is None:
        raise SourceError("no frame grabbed")
    try:
        return decode_reduced(jpeg, "frame", reduce)
    except ValueError as err:
        raise FrameError(f"{source}: {err}") from None
