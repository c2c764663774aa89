"""The pinned, hashed locks (requirements/*.txt, made by scripts/lock.sh): they satisfy pyproject's
ranges on every supported Python, this environment was installed from them, and a Raspberry Pi or a
Jetson gets a wheel for every pin (no device ever builds from source)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from edge_agent.compat import tomllib

from .conftest import ROOT

LOCKS = {"agent": ("litert", "models", "audio", "sensors"), "dev": ("litert", "models", "audio", "sensors", "dev")}
PYTHONS = ("3.10", "3.11", "3.13")


def _pins(lock: Path, env: dict[str, str]) -> dict[str, str]:
    """name -> version of the pins whose markers hold in `env`."""
    out = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip().removesuffix("\\").strip()
        if not line or line.startswith("--"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            out[req.name.lower().replace("_", "-")] = str(req.specifier).removeprefix("==")
    return out


def _env(python: str) -> dict[str, str]:
    env = dict(default_environment())
    env.update(python_version=python, python_full_version=f"{python}.0", platform_machine="aarch64",
               sys_platform="linux", platform_system="Linux", implementation_name="cpython")
    return env


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_the_lock_satisfies_pyproject_on_every_supported_python(name: str) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    # the build backend too: the project is installed from the lock with --no-build-isolation
    wanted = [Requirement(r) for r in project["dependencies"] + pyproject["build-system"]["requires"]]
    for extra in LOCKS[name]:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    for python in PYTHONS:
        env = _env(python)
        pins = _pins(ROOT / "requirements" / f"{name}.txt", env)
        for req in wanted:
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            key = req.name.lower().replace("_", "-")
            assert key in pins, f"{name}.txt on {python}: {req.name} not pinned (run scripts/lock.sh)"
            assert req.specifier.contains(pins[key], prereleases=True), (name, python, req, pins[key])


def test_the_locked_build_backend_is_the_one_pyproject_names() -> None:
    """requirements/build.in (what scripts/lock.sh locks as the build backend) and pyproject.toml's
    [build-system] `requires` are the same requirements: were they to drift, the lock would pin a backend
    the build does not accept, and the install without build isolation would fail on every device."""
    locked = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements" / "build.in").read_text().splitlines()]
    built = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert sorted(str(Requirement(r)) for r in locked if r) == sorted(str(Requirement(r)) for r in built)


def test_this_environment_was_installed_from_the_lock() -> None:
    """Every pin of dev.txt, and the pip of pip.txt (installed before the lock, by the same scripts)."""
    env = dict(default_environment())
    pins = _pins(ROOT / "requirements" / "dev.txt", env)
    locked_pip = _pins(ROOT / "requirements" / "pip.txt", env)
    assert list(locked_pip) == ["pip"], locked_pip
    pins.update(locked_pip)
    wrong = {}
    for pkg, version in pins.items():
        try:
            have = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            wrong[pkg] = (version, None)
            continue
        if have != version:
            wrong[pkg] = (version, have)
    assert not wrong, wrong


@pytest.mark.parametrize("python", PYTHONS)
def test_every_pin_has_an_aarch64_wheel(python: str, tmp_path: Path) -> None:
    """uv, not `pip download --platform`: pip evaluates a lock's environment markers for the Python
    running it, so a universal lock cannot be checked for another Python with it. --system-certs: the
    machine's trust store, which pip uses too (uv's own roots lack a TLS-inspecting proxy's CA)."""
    uv = Path(sys.executable).parent / "uv"
    r = subprocess.run(
        [str(uv), "pip", "compile", str(ROOT / "requirements" / "agent.txt"), "--python-version", python,
         "--python-platform", "aarch64-manylinux_2_35", "--only-binary", ":all:", "--no-deps", "--no-header",
         "--quiet", "--system-certs", "-o", str(tmp_path / "resolved.txt")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    resolved = _pins(tmp_path / "resolved.txt", _env(python))
    assert resolved == _pins(ROOT / "requirements" / "agent.txt", _env(python))  # the lock's own versions
    assert "ai-edge-litert" in resolved and "opencv-python-headless" in resolved
