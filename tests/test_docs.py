"""The documentation against the project: every link, command, flag, file, setting and variable
the pages name must exist, so a page cannot drift from the code unnoticed."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from edge_agent.cli import build_parser
from edge_agent.config import describe_fields

from .conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_CODE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"(?<![\w./-])((?:scripts|benchmarks|edge_agent|tests|docs|systemd)/[\w./-]*[\w/])")
_ENV = re.compile(r"\bEDGE_AGENT_[A-Z0-9_]+\b")
_SET = re.compile(r"--set[ =]'?([a-z_][\w.\[\]]*)=")


def _snippets(text: str) -> list[str]:
    """Code blocks (line by line) and inline code."""
    out = [line for block in _CODE.findall(text) for line in block.splitlines()]
    return out + _INLINE.findall(_CODE.sub("", text))


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
    return dict(sub.choices) if sub is not None else {}


def _command_problems(line: str) -> list[str]:
    """`edge-agent SUB [SUB2] --flag ...`: the commands and flags must exist."""
    try:
        words = shlex.split(line.split("#", 1)[0].replace("\\|", " "))
    except ValueError:
        words = line.split()
    if "edge-agent" not in words:
        return []
    words = words[words.index("edge-agent") + 1 :]
    node = build_parser()
    problems = []
    while words and (subs := _subparsers(node)):
        if words[0].startswith("-"):
            break
        if words[0] not in subs:
            if words[0].isupper() or "|" in words[0] or words[0] in ("...", "COMMAND"):
                return problems  # a placeholder (`edge-agent fleet keygen|sign|...`)
            return [f"`{line}`: no command {words[0]!r}"]
        node = subs[words.pop(0)]
    flags = set(node._option_string_actions)
    for w in words:
        if w.startswith("--"):
            flag = w.split("=", 1)[0]
            if flag not in flags:
                problems.append(f"`{line}`: {flag} is not a flag of this command")
    return problems


def test_every_link_between_pages_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
    assert len(PAGES) >= 15


def test_every_documented_command_and_flag_exists() -> None:
    problems = []
    count = 0
    for page in PAGES:
        for snippet in _snippets(page.read_text()):
            if "edge-agent " in snippet or snippet.startswith("edge-agent"):
                count += 1
                problems += [f"{page.name}: {p}" for p in _command_problems(snippet)]
    assert count > 40  # the check sees the commands
    assert not problems, problems


def test_every_documented_path_exists() -> None:
    missing = []
    for page in PAGES:
        for snippet in _snippets(page.read_text()):
            for path in _PATH.findall(snippet):
                if any(mark in path for mark in ("NAME", "{", "*")):
                    continue
                if not (ROOT / path).exists():
                    missing.append(f"{page.name}: {path}")
    assert not missing, missing


def test_every_documented_setting_and_variable_exists() -> None:
    rows = describe_fields()
    keys = {k for k, _, _, _ in rows}
    envs = {e for _, e, _, _ in rows if e.startswith("EDGE_AGENT_")}
    unknown = []
    for page in PAGES:
        text = page.read_text()
        for env in _ENV.findall(text):
            if env not in envs and not any(e.startswith(env + "__") for e in envs):
                unknown.append(f"{page.name}: {env}")
        for key in _SET.findall(text):
            base = key.split("[", 1)[0]
            if base == "key.sub" or any(part.isupper() for part in base.split(".")):
                continue  # a placeholder
            if base not in keys and not any(k.startswith(base + ".") for k in keys) and not base.startswith(
                ("pipelines", "models")
            ):
                unknown.append(f"{page.name}: --set {key}")
    assert not unknown, unknown


def test_getting_started_can_be_followed_as_written(tmp_path: Path) -> None:
    """Step 3's commands, run as written (in the activated shell), all succeed."""
    import os
    import subprocess

    text = (ROOT / "docs" / "getting-started.md").read_text()
    step = text.split("## 3.", 1)[1].split("\n## ", 1)[0]
    block = _CODE.findall(step)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_STATE_DIR"] = str(tmp_path / "state")
    script = f"source {ROOT / '.venv' / 'bin' / 'activate'}\nset -e\n{block}"
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '"label":"face"' in r.stdout  # predict --json found the face in the demo frame


def test_getting_started_reaches_predictions_through_a_broker(tmp_path: Path) -> None:
    """Step 4 as written, on a free port instead of the page's 18830, its limit scaled to the machine's
    speed. The listener waits for five messages, not a few seconds: with a fixed time, a loaded
    machine's agent could start after the listener had gone (it did, in a CI run beside the arm64
    smoke: no prediction in the listener's 4 s)."""
    import math
    import os
    import signal
    import subprocess

    from .conftest import free_port, scaled

    text = (ROOT / "docs" / "getting-started.md").read_text()
    step = text.split("## 4.", 1)[1].split("\n## ", 1)[0]
    port = str(free_port())
    block = _CODE.findall(step)[0].replace("18830", port)
    block = re.sub(r"--seconds (\d+)", lambda m: f"--seconds {math.ceil(scaled(float(m.group(1))))}", block)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_STATE_DIR"] = str(tmp_path / "state")
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin"
    script = f"source {ROOT / '.venv' / 'bin' / 'activate'}\nset -e\n{block}"
    # its own process group: an agent left behind by a step that failed is stopped with the shell
    p = subprocess.Popen(["bash", "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=scaled(120))
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        subprocess.run(["pkill", "-f", f"mosquitto -p {port}"], check=False)
    assert p.returncode == 0, out[-3000:] + err[-3000:]
    lines = out.splitlines()
    preds = [line for line in lines if line.startswith("#")]
    assert len(lines) == 5 and len(preds) >= 3 and all("face" in line for line in preds), out[-2000:]


def test_files_the_code_tells_users_about_exist() -> None:
    """Error messages and help texts name scripts and files a user can find."""
    missing = []
    for src in sorted((ROOT / "edge_agent").rglob("*.py")):
        for path in _PATH.findall(src.read_text()):
            if path.startswith(("scripts/", "docs/", "benchmarks/", "systemd/")) and not (ROOT / path).exists():
                missing.append(f"{src.relative_to(ROOT)}: {path}")
    assert not missing, missing
