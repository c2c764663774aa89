"""Progress output: a bar on a real terminal (a pseudo-terminal), short plain lines elsewhere."""

from __future__ import annotations

import io
import os
import select

from edge_agent.progress import Progress


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    with Progress("calibrating", 1000, "frames", out) as p:
        for _ in range(1000):
            p.update()
        p.note("done")
    lines = out.getvalue().splitlines()
    assert lines[0] == "calibrating: 1/1000 frames" and lines[-2] == "calibrating: 1000/1000 frames"
    assert lines[-1] == "calibrating: done" and len(lines) <= 12  # a line per tenth, not per step
    assert "\r" not in out.getvalue()


def test_state_changes_get_their_own_line() -> None:
    out = io.StringIO()
    p = Progress("d1", 100, "%", out)
    for pct, state in [(0, "downloading"), (5, "downloading"), (50, "downloading"), (100, "verifying")]:
        p.set(pct, state)
    p.note("active")
    p.note("active")
    assert out.getvalue().splitlines() == [
        "d1: downloading 0/100 %",
        "d1: downloading 50/100 %",
        "d1: verifying 100/100 %",
        "d1: active",
    ]


def test_a_bar_on_a_terminal() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            with Progress("sending model", 64, "kB", tty) as p:
                assert p.is_bar
                for _ in range(64):
                    p.update()
            tty.flush()
        chunks = []
        while select.select([master], [], [], 0.2)[0]:  # everything written so far, however it was split
            chunks.append(os.read(master, 65536))
        data = b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)
        os.close(slave)
    assert "sending model" in data and "\r" in data and "64.0/64" in data and "100%|" in data


def test_a_percentage_bar_shows_the_current_state_and_no_rate() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            with Progress("d1", 100, "%", tty) as p:
                p.set(40, "downloading")
                p.set(100, "verifying")
                p.set(100, "active")
            tty.flush()
        chunks = []
        while select.select([master], [], [], 0.2)[0]:
            chunks.append(os.read(master, 65536))
        data = b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)
        os.close(slave)
    last = data.replace("\r\n", "\n").split("\r")[-1]  # what the terminal shows at the end
    assert "%/s" not in data and "it/s" not in data
    assert "100%|" in last and "active" in last and "verifying" not in last, repr(last)
