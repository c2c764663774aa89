#!/usr/bin/env python3
"""The status page in a real browser: how closely the live picture follows the agent, and how legible
its labels are on the pixels Chromium renders.

Starts the agent on the demo video (real mosquitto, the status page on), opens the page in Debian's
headless Chromium through Playwright, counts the frames the page shows over `--seconds` against the
frames the agent published, then pauses the picture and measures the WCAG contrast of each label.

    python benchmarks/live_view.py --fps 15 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Broker, free_port  # noqa: E402
from edge_agent.snapshots import contrast  # noqa: E402


def published(base: str) -> float:
    with urllib.request.urlopen(base + "/api/status", timeout=5) as r:
        return float(json.load(r)["health"]["frames"]["published"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fps", type=float, default=15.0, help="the agent's frame rate cap")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to count frames")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("Debian's chromium is needed (apt-get install chromium)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp)).start()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        env.update(EDGE_AGENT_MQTT__HOST="127.0.0.1", EDGE_AGENT_MQTT__PORT=str(broker.port),
                   EDGE_AGENT_STATE_DIR=str(Path(tmp) / "state"))
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--source", "demo", "--fps", str(args.fps),
             "--set", "http.enabled=true", "--set", f"http.port={port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    published(base)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(base + "/")
                page.wait_for_function("window.framesLoaded >= 3", timeout=30_000)
                n0, a0, t0 = page.evaluate("window.framesLoaded"), published(base), time.monotonic()
                page.wait_for_timeout(args.seconds * 1000)
                n1, a1, t1 = page.evaluate("window.framesLoaded"), published(base), time.monotonic()
                page.wait_for_function("window.frameLabels && window.frameLabels.length > 0", timeout=30_000)
                page.click("#frame")
                page.wait_for_function("window.frameHeld === true", timeout=10_000)
                labels = page.evaluate("window.frameLabels")
                shot = cv2.imdecode(np.frombuffer(page.locator("#frame").screenshot(), np.uint8), cv2.IMREAD_COLOR)
                browser.close()
        finally:
            agent.terminate()
            agent.wait(20)
            broker.stop()
    f = shot.shape[1] / 640
    ratios = [contrast(shot[round(y1 * f) + 1: round(y2 * f) - 1, round(x1 * f) + 1: round(x2 * f) - 1])
              for x1, y1, x2, y2 in labels]
    page_fps, agent_fps = (n1 - n0) / (t1 - t0), (a1 - a0) / (t1 - t0)
    print("| figure | value |\n| --- | --- |")
    print(f"| agent, frames published per s | {agent_fps:.1f} |")
    print(f"| page, frames shown per s | {page_fps:.1f} |")
    print(f"| shown / published | {page_fps / agent_fps:.2f} |")
    print(f"| label contrast (WCAG), min of {len(ratios)} | {min(ratios):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
