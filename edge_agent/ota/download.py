"""HTTP download of a model: Range resume, stall timeout, total deadline, byte cap, streaming sha256."""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.netcut import cut
from edge_agent.redact import shown_url

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
#: Client errors that a retry will not cure; anything else (5xx, 408, 429, a dropped connection) is retried.
_RETRYABLE_4XX = (408, 425, 429)
#: Backoff between attempts: doubles from the first to the last.
_BACKOFF_S = (1.0, 30.0)
#: Free space left over after a download, so the state directory never fills to the brim.
DISK_MARGIN = 16 * 1024 * 1024
#: How often the watch over a download looks at its deadline and whether it was cancelled.
_WATCH_S = 0.2
#: A 206's range (ASCII digits, at most 18: thousands of them would raise from int(), out of the download).
_CONTENT_RANGE = re.compile(r"bytes\s+([0-9]{1,18})-[0-9]{1,18}/(?:[0-9]{1,18}|\*)", re.IGNORECASE)


class DownloadError(Exception):
    """The download failed for good; the message says why."""


class _Watch:
    """Cuts the connection a download is blocked on once its deadline passes or it is cancelled.

    The stall timeout bounds each wait for a byte, not a response: a server that sends one byte just
    inside it (in the status line, the headers or the body) would otherwise hold the update thread
    for as long as it likes, and with it every deploy and rollback queued behind. Shutting the socket
    down from here makes the blocked read return, and the download loop then sees why it stopped."""

    def __init__(self, deadline: float, cancelled: Callable[[], str | None] | None) -> None:
        self.deadline = deadline
        self.cancelled = cancelled
        self.sock: socket.socket | None = None
        #: an open connection was cut (the deadline passed, or the download was cancelled)
        self.fired = False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ota-download-watch", daemon=True)

    def __enter__(self) -> _Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.done.wait(_WATCH_S):
            try:
                why = time.monotonic() > self.deadline or (self.cancelled is not None and self.cancelled())
            except Exception:  # loop boundary: a failing check is the download loop's to report, not ours
                log.exception("download watch: the cancellation check failed")
                why = False
            sock = self.sock
            if why and sock is not None and sock.fileno() != -1:  # open: a read may be blocked on it
                self.fired = True  # before the cut: the reader wakes at once and may look at it first
                cut(sock)

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's default handlers for HTTP(S), proxies and redirects, with connections this watch can
        cut; no FTP, file or data URLs, which a redirect could otherwise lead to."""
        watch = self

        class Http(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                watch.sock = self.sock

        class Https(http.client.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                watch.sock = self.sock

        class HttpHandler(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(Http, req)

        class HttpsHandler(urllib.request.HTTPSHandler):
            def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(Https, req)

        opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), HttpHandler(),
                        HttpsHandler(), urllib.request.HTTPDefaultErrorHandler(),
                        _Redirects(), urllib.request.HTTPErrorProcessor()):
            opener.add_handler(handler)
        return opener


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, where one to what is no URL (an IPv6 address left open, a host in brackets that
    is no address) is an HTTP error the download reports and retries, as one to a scheme urllib does not
    follow is; urllib raised a ValueError out of the download."""

    def http_error_302(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any
    ) -> Any:
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except ValueError:
            raise urllib.error.HTTPError(
                req.full_url, code, "redirected to a URL that cannot be followed", headers, fp
            ) from None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _hash_existing(path: Path) -> tuple[int, hashlib._Hash]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h


def download(
    urls: list[str],
    dest: Path,
    size: int,
    sha256: str,
    stall_s: float,
    deadline_s: float,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], str | None] | None = None,
) -> Path:
    """Fetch into `dest` (a .part file, resumed if present) and verify; returns dest.

    Permanent failures end the download at once with the reason: a client error from every URL (404,
    403, 416: the file is smaller than the manifest says), or the local file that cannot be written
    (read-only or full disk). Transient ones (5xx, a stall, a dropped connection, an answer that is
    not HTTP, a range other than the one asked for) are retried with exponential backoff until the
    deadline, each logged. The deadline holds whatever the server does: a connection still open when
    it passes is cut. `cancelled` (checked between reads, while backing off, and by the watch that
    cuts the connection) gives a reason to stop, such as a newer deploy."""
    if not urls:
        raise DownloadError("no URL to download from")
    have = dest.stat().st_size if dest.exists() else 0
    if have > size:
        dest.unlink()
        have = 0
    free = shutil.disk_usage(dest.parent).free
    if free - (size - have) < DISK_MARGIN:
        raise DownloadError(
            f"not enough disk: {free // 2**20} MiB free, {(size - have) // 2**20} MiB needed "
            f"plus a margin of {DISK_MARGIN // 2**20} MiB"
        )
    got, hasher = _hash_existing(dest) if have else (0, hashlib.sha256())
    deadline = time.monotonic() + deadline_s
    with _Watch(deadline, cancelled) as watch:
        opener = watch.opener()
        last_error = "no attempt"
        attempt = 0
        refused: dict[str, str] = {}  # URL -> the permanent error it gave
        backoff = _BACKOFF_S[0]
        while got < size:
            _check(cancelled)
            if time.monotonic() > deadline:
                why = "the server was still sending" if watch.fired else last_error  # cut mid-response
                raise DownloadError(f"not complete within {deadline_s:g} s ({got} of {size} bytes): {why}")
            live = [u for u in urls if u not in refused]
            url = live[attempt % len(live)]
            attempt += 1
            req = urllib.request.Request(url, headers={"Range": f"bytes={got}-"} if got else {})
            try:
                with opener.open(req, timeout=stall_s) as resp:
                    if got and _range_start(resp) != got:  # no Range support, or not the range asked for
                        if resp.status == 206 and _range_start(resp) != 0:
                            sent = resp.headers["Content-Range"]
                            raise _WrongRange(f"asked for bytes from {got}, the server sent {sent}")
                        got, hasher = 0, hashlib.sha256()  # the whole file again: start over
                    out = _open(dest, "ab" if got else "wb")
                    with out:
                        while time.monotonic() < deadline:
                            _check(cancelled)
                            # at most one read from the socket: a trickle cannot hold this past the deadline.
                            # Once `size` bytes are in, one more byte is asked for: the end of the body
                            # (nothing), or the proof that the server sends more than the manifest's size
                            chunk = resp.read1(min(_CHUNK, size - got + 1))
                            if not chunk:
                                break
                            if got + len(chunk) > size:
                                raise DownloadError(f"server sent more than the manifest's {size} bytes")
                            _write(out, chunk, dest)
                            hasher.update(chunk)
                            got += len(chunk)
                            backoff = _BACKOFF_S[0]  # progress: the next trouble starts the backoff afresh
                            if progress is not None:
                                progress(got, size)
                if got < size:
                    late = time.monotonic() >= deadline
                    last_error = "the server was still sending" if late else "connection closed early"
            except DownloadError:
                _discard(dest)
                raise
            except TimeoutError:
                last_error = f"stalled for {stall_s:g} s"
            except _WrongRange as err:
                last_error = str(err)  # the next request asks for the whole file
                got, hasher = 0, hashlib.sha256()
            except http.client.HTTPException as err:  # not HTTP, too many headers, a chunk cut short: as a drop
                last_error = f"bad HTTP response: {err!r}"
            except urllib.error.HTTPError as err:
                last_error = f"HTTP {err.code}"
                if 400 <= err.code < 500 and err.code not in _RETRYABLE_4XX:
                    why = "the file is smaller than the manifest's size" if err.code == 416 else err.reason
                    refused[url] = f"HTTP {err.code} ({why})"
                    if len(refused) == len(set(urls)):
                        raise DownloadError("; ".join(f"{shown_url(u)}: {r}" for u, r in refused.items())) from None
                    continue
            except (urllib.error.URLError, OSError) as err:
                last_error = str(getattr(err, "reason", err))
            if got < size and time.monotonic() < deadline:
                wait = min(backoff, max(0.0, deadline - time.monotonic()))
                log.warning("download of %s: %s; retrying in %.0f s (%d of %d bytes)", shown_url(url), last_error, wait,
                            got, size)
                _sleep(wait, cancelled)
                backoff = min(_BACKOFF_S[1], backoff * 2)
    if hasher.hexdigest() != sha256:
        _discard(dest)
        raise DownloadError(f"sha256 mismatch: got {hasher.hexdigest()[:16]}..., manifest says {sha256[:16]}...")
    return dest


class _WrongRange(Exception):
    """A 206 for bytes other than those asked for."""


def _range_start(resp: http.client.HTTPResponse) -> int:
    """Where the response's body starts in the file: 0 for a whole file."""
    if resp.status != 206:
        return 0
    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else -1


def _check(cancelled: Callable[[], str | None] | None) -> None:
    why = cancelled() if cancelled is not None else None
    if why:
        raise DownloadError(why)


def _sleep(seconds: float, cancelled: Callable[[], str | None] | None) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        _check(cancelled)
        time.sleep(min(0.1, left))


def _open(dest: Path, mode: str) -> Any:
    try:
        return open(dest, mode)
    except OSError as err:
        raise DownloadError(f"cannot write {dest}: {err.strerror or err}") from None


def _write(out: Any, chunk: bytes, dest: Path) -> None:
    try:
        out.write(chunk)
    except OSError as err:
        raise DownloadError(f"cannot write {dest}: {err.strerror or err}") from None


def _discard(dest: Path) -> None:
    """Remove a partial file that must not be resumed; a directory that refuses even that keeps it."""
    try:
        dest.unlink(missing_ok=True)
    except OSError:
        pass
