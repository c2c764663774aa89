"""Model downloads against real local HTTP servers that misbehave in the usual ways."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.fleet import FileServer
from edge_agent.ota.download import DownloadError, download

from .conftest import SHORT

DATA = SHORT.read_bytes()
SHA = hashlib.sha256(DATA).hexdigest()


class Misbehaving(http.server.BaseHTTPRequestHandler):
    mode = "cut"  # cut | norange | endless | stall
    served: list[str] = []
    release = threading.Event()

    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.served.append(rng or "")
        start = int(rng[6:].split("-")[0]) if rng and self.mode != "norange" else 0
        body = DATA[start:]
        self.send_response(206 if start else 200)
        if start:
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
        if len(self.served) == 1 and self.mode in ("cut", "norange"):
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
