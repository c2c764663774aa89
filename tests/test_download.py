"""Model downloads against real local HTTP servers that misbehave in the usual ways."""

from __future__ import annotations

import hashlib
import http.server
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.fleet import FileServer
from edge_agent.ota.download import DownloadError, download

from .conftest import SHORT, streamed_get

DATA = SHORT.read_bytes()
SHA = hashlib.sha256(DATA).hexdigest()


class Misbehaving(http.server.BaseHTTPRequestHandler):
    mode = "cut"  # cut | norange | endless | stall | wrongrange | hugerange (any other: serves what is asked)
    served: list[str] = []
    release = threading.Event()

    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.served.append(rng or "")
        start = int(rng[6:].split("-")[0]) if rng and self.mode != "norange" else 0
        if start and self.mode == "wrongrange":
            start = 7  # a 206, but not from where it was asked
        body = DATA[start:]
        self.send_response(206 if start else 200)
        if start and self.mode == "hugerange":  # a 206 whose range no int() takes: thousands of digits
            self.send_header("Content-Range", f"bytes {'9' * 5000}-{len(DATA) - 1}/{len(DATA)}")
        elif start:
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        self.send_header("Content-Length", str(len(body) if self.mode != "endless" else 10 * len(DATA)))
        self.end_headers()
        if self.mode == "endless":
            try:
                for _ in range(10):
                    self.wfile.write(DATA)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client hangs up at the size it was promised: what the test wants
            return
        if self.mode == "stall" and len(self.served) == 1:
            self.wfile.write(body[:1000])
            self.wfile.flush()
            self.release.wait(30)
            return
        if len(self.served) == 1 and self.mode in ("cut", "norange", "wrongrange", "hugerange"):
            self.wfile.write(body[: len(body) // 3])  # then the connection drops
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[type[Misbehaving]]:
    handler = type("H", (Misbehaving,), {"served": [], "release": threading.Event()})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    handler.url = f"http://127.0.0.1:{srv.server_address[1]}/m.tflite"  # type: ignore[attr-defined]
    yield handler
    handler.release.set()
    srv.shutdown()


def test_resumes_with_range_after_a_dropped_connection(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server.mode = "cut"
    out = download([server.url], tmp_path / "m.part", len(DATA), SHA, 5, 60)
    assert out.read_bytes() == DATA
    assert server.served[0] == "" and server.served[1].startswith("bytes=")


def test_server_without_range_support_starts_over(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server.mode = "norange"
    assert download([server.url], tmp_path / "m.part", len(DATA), SHA, 5, 60).read_bytes() == DATA


def test_a_range_other_than_the_one_asked_for_starts_over(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Appending a 206 from elsewhere in the file would make a file that is not the model."""
    server.mode = "wrongrange"
    assert download([server.url], tmp_path / "m.part", len(DATA), SHA, 5, 60).read_bytes() == DATA
    assert server.served[0] == "" and server.served[1].startswith("bytes=") and server.served[2] == ""


def test_a_range_no_number_can_hold_starts_over(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A Content-Range of thousands of digits raised ValueError from int() out of the download (no
    retry, the part file left behind); it is now a range other than the one asked for."""
    server.mode = "hugerange"
    assert download([server.url], tmp_path / "m.part", len(DATA), SHA, 5, 60).read_bytes() == DATA
    assert server.served[1].startswith("bytes=") and server.served[2] == ""


def test_endless_body_is_cut_at_the_manifest_size(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server.mode = "endless"
    with pytest.raises(DownloadError, match="more than"):
        download([server.url], tmp_path / "m.part", len(DATA), SHA, 5, 60)
    assert not (tmp_path / "m.part").exists()


def test_stalled_server_is_resumed(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server.mode = "stall"
    assert download([server.url], tmp_path / "m.part", len(DATA), SHA, 1, 60).read_bytes() == DATA
    assert len(server.served) >= 2


def test_hash_mismatch_deadline_and_404(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server.mode = "ok"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download([server.url], tmp_path / "a.part", len(DATA), "0" * 64, 5, 60)
    server.mode, server.served[:] = "stall", []
    with pytest.raises(DownloadError, match="not complete within"):
        download([server.url], tmp_path / "b.part", len(DATA), SHA, 1, 2)
    fs = FileServer(tmp_path, "127.0.0.1", 0)
    try:
        with pytest.raises(DownloadError, match="404"):
            download([f"http://127.0.0.1:{fs.port}/absent"], tmp_path / "c.part", 10, SHA, 2, 10)
    finally:
        fs.close()


def test_fleet_file_server_honours_range(tmp_path: Path) -> None:
    (tmp_path / "m.tflite").write_bytes(DATA)
    fs = FileServer(tmp_path, "127.0.0.1", 0)
    try:
        part = tmp_path / "m.part"
        part.write_bytes(DATA[:5000])  # a download interrupted earlier
        assert download([f"http://127.0.0.1:{fs.port}/m.tflite"], part, len(DATA), SHA, 5, 30).read_bytes() == DATA
    finally:
        fs.close()


def _get(url: str, rng: str | None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Range": rng} if rng is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_fleet_file_server_answers_any_range_header(tmp_path: Path) -> None:
    """What a device, a proxy or a curious client may send: a range with an end, the last N bytes, one
    past the end, and headers it does not parse (several ranges, garbage), which get the whole file.
    Before, an end was ignored, `bytes=-N` sent the whole file as a 206 from 0, and garbage made the
    handler raise."""
    (tmp_path / "m.tflite").write_bytes(DATA)
    fs = FileServer(tmp_path, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{fs.port}/m.tflite"
    n = len(DATA)
    try:
        assert _get(url, "bytes=100-199")[::2] == (206, DATA[100:200])
        assert _get(url, "bytes=100-199")[1]["Content-Range"] == f"bytes 100-199/{n}"
        assert _get(url, "bytes=-500")[::2] == (206, DATA[-500:])
        assert _get(url, f"bytes={n - 10}-{n + 1000}")[::2] == (206, DATA[-10:])
        assert _get(url, f"bytes={n}-")[0] == 416 and _get(url, f"bytes={n}-")[1]["Content-Range"] == f"bytes */{n}"
        for ignored in ("bytes=0-9,20-29", "bytes=abc-", "items=0-9", "bytes=-", None):
            assert _get(url, ignored)[::2] == (200, DATA), ignored
    finally:
        fs.close()


def test_fleet_file_server_sends_a_range_a_chunk_at_a_time(tmp_path: Path) -> None:
    """A range that stops short of the end (a device resuming with a bounded request, or a client
    asking for all but the last byte of a large model, many at once) is sent a chunk at a time. Before,
    such a range was read into memory whole for each request."""
    import hashlib
    import os

    data = os.urandom(8 << 20)
    (tmp_path / "big.tflite").write_bytes(data)
    fs = FileServer(tmp_path, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{fs.port}/big.tflite"
    n = len(data)
    try:
        for rng, part in ((f"bytes=1-{n - 2}", data[1:-1]), ("bytes=10-", data[10:]), (None, data)):
            status, _, digest, peak = streamed_get(url, rng)
            assert (status, digest) == (200 if rng is None else 206, hashlib.sha256(part).hexdigest()), rng
            assert peak < n // 4, f"{rng}: {peak} bytes held while sending {len(part)}"
    finally:
        fs.close()


def test_fleet_file_server_lets_idle_devices_go(tmp_path: Path) -> None:
    """Devices that connect and go quiet (a link that died mid-download) are let go after the idle
    timeout, and beyond `max_connections` at once a connection is closed unread: the host never
    holds a thread per vanished device. Before, each held a thread for ever."""
    (tmp_path / "m.tflite").write_bytes(DATA)
    fs = FileServer(tmp_path, "127.0.0.1", 0, client_timeout_s=1.0, max_connections=3)
    idle: list[socket.socket] = []
    try:
        idle = [socket.create_connection(("127.0.0.1", fs.port)) for _ in range(6)]
        for s in idle:
            s.settimeout(20)
            assert s.recv(1) == b""  # closed by the server, having sent nothing
        assert fs.httpd.refused >= 1
        assert download([f"http://127.0.0.1:{fs.port}/m.tflite"], tmp_path / "m.part", len(DATA), SHA, 5,
                        30).read_bytes() == DATA
    finally:
        for s in idle:
            s.close()
        fs.close()


class Raw:
    """A TCP server that answers each connection with what `answer` writes to the socket: what no
    HTTP server library would send."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/m.tflite"
        self.connections = 0
        self.answering = threading.Event()  # a connection is being answered now
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                self.answering.set()
                self.answer(conn)
            except OSError:
                pass  # the client hung up: what a cut is

    def close(self) -> None:
        self.sock.close()


def _trickle(data: bytes, every_s: float = 0.2) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        for i in range(len(data)):
            conn.sendall(data[i : i + 1])
            time.sleep(every_s)  # the server's pace, inside the client's stall timeout
    return answer


TRICKLES = {
    "body": _trickle(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(DATA) + DATA),
    "headers": _trickle(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 60000),
}


@pytest.mark.parametrize("where", sorted(TRICKLES))
def test_a_server_that_trickles_is_cut_at_the_deadline_or_when_cancelled(where: str, tmp_path: Path) -> None:
    """A byte every 0.2 s never trips a 1 s stall timeout; before, the download read on past its
    deadline for as long as the server kept it up (the whole model: hours), and the update thread
    with it, so no newer deploy or rollback could start."""
    srv = Raw(TRICKLES[where])
    try:
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"not complete within 2 s .*still sending"):
            download([srv.url], tmp_path / "a.part", len(DATA), SHA, 1, 2)
        assert time.monotonic() - start < 15  # the deadline and the watch's poll, not the server's pace
        srv.answering.clear()
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"^a newer deploy$"):
            download([srv.url], tmp_path / "b.part", len(DATA), SHA, 1, 600,
                     cancelled=lambda: "a newer deploy" if srv.answering.is_set() else None)
        assert time.monotonic() - start < 60  # the deadline is 600 s
    finally:
        srv.close()


ANSWERS = {
    "not HTTP": lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n"),
    "too many headers": lambda conn: conn.sendall(
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n"),
    "a chunk cut short": lambda conn: conn.sendall(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(DATA) + DATA[:5000]),
}


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_a_mirror_that_answers_what_is_not_http_is_left_for_the_next(  # type: ignore[no-untyped-def]
        answer: str, server, tmp_path: Path) -> None:
    """Before, http.client's own errors were not taken as a failed attempt: they ended the update
    (with a traceback) although the next mirror had the file."""
    server.mode = "ok"
    bad = Raw(ANSWERS[answer])
    try:
        assert download([bad.url, server.url], tmp_path / "m.part", len(DATA), SHA, 5, 60).read_bytes() == DATA
        assert bad.connections == 1 and len(server.served) == 1
        if answer == "a chunk cut short":  # what came before the cut is kept
            assert server.served[0] == "bytes=5000-"
    finally:
        bad.close()


def test_a_redirect_is_followed_to_http_only(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """urllib's own opener would follow a mirror's redirect to an FTP server (here, one that only
    counts who connects); the model comes from the next mirror instead. So it does after mirrors that
    redirect to what is no URL (an IPv6 address left open, a host in brackets that is no address),
    where urllib raised a ValueError out of the download."""
    server.mode = "ok"
    ftp = Raw(lambda conn: None)
    port = ftp.sock.getsockname()[1]

    def redirect(to: bytes) -> Raw:
        return Raw(lambda conn: conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % to))

    to_ftp = redirect(b"ftp://127.0.0.1:%d/m.tflite" % port)
    to_nowhere = [redirect(b"http://[::1/m.tflite"), redirect(b"//[zz]/m.tflite")]
    to_http = redirect(server.url.encode())
    try:
        mirrors = [to_ftp.url, *(r.url for r in to_nowhere), to_http.url]
        got = download(mirrors, tmp_path / "m.part", len(DATA), SHA, 2, 60)
        assert got.read_bytes() == DATA
        assert ftp.connections == 0 and to_ftp.connections == 1 and to_http.connections == 1
        assert [r.connections for r in to_nowhere] == [1, 1]
    finally:
        for s in (ftp, to_ftp, to_http, *to_nowhere):
            s.close()


def test_over_https_a_download_resumes_and_a_stalled_one_is_cut_at_the_deadline(  # type: ignore[no-untyped-def]
        tmp_path: Path, monkeypatch) -> None:
    """The same watched connections over TLS, against a server whose certificate the system's CA store
    (here `SSL_CERT_FILE`, as OpenSSL reads it) trusts: a dropped connection is resumed with a Range,
    and a server that stops sending mid-body is cut when the deadline passes, long before its 30 s
    stall timeout would have ended the read."""
    import ssl

    from .test_mqtt import _make_pki

    ca, cert, key, _ = _make_pki(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    handler = type("H", (Misbehaving,), {"served": [], "release": threading.Event(), "mode": "cut"})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{srv.server_address[1]}/m.tflite"
    try:
        assert download([url], tmp_path / "a.part", len(DATA), SHA, 5, 60).read_bytes() == DATA
        assert handler.served[0] == "" and handler.served[1].startswith("bytes=")
        handler.mode, handler.served[:] = "stall", []
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"not complete within 2 s \(1000 of .*still sending"):
            download([url], tmp_path / "b.part", len(DATA), SHA, 30, 2)
        assert time.monotonic() - start < 15
    finally:
        handler.release.set()
        srv.shutdown()


def test_a_signed_urls_signature_is_logged_and_reported_nowhere(  # type: ignore[no-untyped-def]
    server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A download URL signed for a while (an object store's `?X-Amz-Signature=...`) is a credential: the
    log and the error, which a command's result publishes, show the URL without its query."""
    secret = "X-Amz-Signature=c2VjcmV0LXNpZ25hdHVyZQ"
    server.mode = "cut"  # the first connection drops: the retry is logged
    with caplog.at_level(logging.WARNING, logger="edge_agent.ota.download"):
        download([f"{server.url}?{secret}"], tmp_path / "a.part", len(DATA), SHA, 5, 60)
    assert f"download of {server.url}?...: connection closed early" in caplog.text, caplog.text
    fs = FileServer(tmp_path, "127.0.0.1", 0)
    try:
        with pytest.raises(DownloadError, match="404") as err:
            download([f"http://127.0.0.1:{fs.port}/absent?{secret}"], tmp_path / "b.part", 10, SHA, 2, 10)
    finally:
        fs.close()
    assert str(err.value).startswith(f"http://127.0.0.1:{fs.port}/absent?...: HTTP 404")
    assert secret not in caplog.text and secret not in str(err.value)
