"""The unit file passes systemd's own verifier and asks for what the agent relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

UNIT = ROOT / "systemd" / "edge-agent.service"


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze missing: scripts/test.sh installs the systemd package")
    edge_agent = shutil.which("edge-agent") or str(Path(__import__("sys").executable).parent / "edge-agent")
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-agent/.venv/bin/edge-agent", edge_agent))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "edge-agent.service" not in r.stderr, r.stderr  # unknown keys only warn: treat as failure


def test_unit_contract() -> None:
    s = unit_settings()
    assert s["Service.Type"] == ["notify"] and s["Service.WatchdogSec"] == ["30"]
    assert s["Service.Restart"] == ["on-failure"] and s["Unit.StartLimitIntervalSec"] == ["0"]
    assert s["Service.NoNewPrivileges"] == ["yes"] and s["Service.ProtectSystem"] == ["strict"]
    assert s["Service.StateDirectory"] == ["edge-agent"] and s["Service.ConfigurationDirectory"] == ["edge-agent"]
    assert s["Service.DevicePolicy"] == ["closed"]
    assert "char-video4linux rw" in s["Service.DeviceAllow"]
    assert s["Service.ExecStart"][0].endswith("run --config /etc/edge-agent/config.toml")
    assert s["Service.User"] == ["edge-agent"] and s["Service.CapabilityBoundingSet"] == [""]


def test_install_script_files_only(tmp_path: Path) -> None:
    r = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    h = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "--prefix" in h.stdout


def test_an_upgrade_whose_code_refuses_the_running_settings_replaces_nothing(tmp_path: Path) -> None:
    """A setting the new version refuses (exit 2) would leave the service stopped at its next start, as
    systemd does not retry a configuration error: the install stops first, naming the key, and leaves the
    installed version as it was. The check runs the new code on the installed version's packages."""
    prefix = tmp_path / "opt"
    (prefix / ".venv" / "bin").mkdir(parents=True)
    python = prefix / ".venv" / "bin" / "python"
    # the installed version's packages, for the check alone: were the install to go on, its pip would fail here
    python.write_text(f'#!/bin/sh\n[ "$1 $2" = "-m edge_agent" ] || exit 97\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    cfg = tmp_path / "config.toml"
    cfg.write_text('device_id = "door"\n[mqtt]\nhost = "localhost"\n[source]\nuri = "0"\nrealtime = false\n')
    r = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--prefix", str(prefix), "--no-system",
                        "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "source.realtime: source '0' is of the camera kind, which never reads it" in r.stderr, r.stderr
    assert f"not installed: this version refuses {cfg}" in r.stderr
    assert sorted(p.name for p in prefix.iterdir()) == [".venv"]  # nothing copied, nothing installed


def test_the_docs_document_every_setting() -> None:
    from edge_agent.config import describe_fields

    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = [env for _, env, _, _ in describe_fields() if f"`{env}`" not in page]
    assert missing == []
    readme = (ROOT / "README.md").read_text()
    assert "scripts/demo.sh" in readme and "scripts/test.sh" in readme


def test_security_exposure_is_ok(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool is not None
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text())
    r = subprocess.run([tool, "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60)
    line = next(ln for ln in r.stdout.splitlines() if "Overall exposure level" in ln)
    level = float(line.split(":")[1].split()[0])
    assert level <= 2.0, line
    assert "char-video4linux rw" in UNIT.read_text()  # still reaches the cameras
