"""What the benchmark scripts share: a real mosquitto on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """mosquitto in `work`, restartable on the same port (persistence on when asked)."""

    def __init__(self, work: Path, persistence: bool = False):
        self.work, self.port = work, free_port()
        user = "user root\n" if os.geteuid() == 0 else ""  # as root it would drop to a user that cannot read `work`
        store = f"persistence true\npersistence_location {work}/\nautosave_interval 1\n" if persistence else ""
        (work / "mosquitto.conf").write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n{store}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.work / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise SystemExit("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
