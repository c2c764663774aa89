"""How the agent's last run ended, told at the next start.

A box in the field restarts without anyone watching: the service manager starts the agent again after
a crash, the kernel's OOM killer or a watchdog kills it, the board loses power. Each start looks like
the last one, and a fleet sees only an agent that came back. So each run leaves a record in the state
directory (`run.json`: when it started, the kernel's boot id, a last look every few minutes, and how it
stopped, written as it stops), and Python's `faulthandler` writes the stack of every thread to
`crash.txt` on a fatal signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, and SIGABRT: a native library's abort,
and systemd's watchdog's signal for a process that stopped saying it makes progress). The next start
reads both and says which it was:

- `stopped`: asked to stop (SIGTERM, SIGINT, `--seconds`), and it did;
- `exited`: it stopped on its own with a non-zero exit code (a fault it could not go on with);
- `crashed`: a fatal signal, with the fault and where each thread was;
- `killed`: it vanished with the system still up and no fault caught: SIGKILL, which no process can
  catch, from the kernel's OOM killer, a service manager's stop timeout, or a person;
- `system restarted`: the kernel's boot id changed under it: a power cut, a reset, a kernel panic, a
  hardware watchdog (a clean reboot stops the agent first, and says `stopped`).

Counts of each persist across runs, for health and its metrics. A read-only or missing state directory
keeps no record, and says nothing rather than something wrong.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import IO, Any

from edge_agent.system import kernel_boot_id

log = logging.getLogger(__name__)

#: how a run can end, as health, its metric and Home Assistant's sensor name them
ENDINGS = ("stopped", "exited", "crashed", "killed", "system_restarted")

#: How often a running agent writes its last look: what bounds when a killed or powered-off run ended.
BEAT_S = 300.0
#: Lines of each thread's stack kept from a crash (faulthandler writes the innermost call first).
_STACK_LINES = 12
_HINTS = {
    "Aborted": "SIGABRT: a native library aborted, or systemd's watchdog found no progress for WatchdogSec",
    "Segmentation fault": "SIGSEGV: native code (a model's runtime or delegate, a decoder) read memory it "
                          "does not own",
    "Bus error": "SIGBUS: a mapped file shrank or a storage error under it (a model file, an SD card)",
    "Illegal instruction": "SIGILL: a library built for a newer CPU than this one",
    "Floating-point exception": "SIGFPE: an integer division by zero in native code",
}


class RunRecord:
    """The record of this run in `state_dir`, and what the one before it left. Used from the agent's
    start, its health loop (`beat`) and its shutdown."""

    def __init__(self, state_dir: Path, boot_id: str | None = None):
        self.path = state_dir / "run.json"
        self.crash_path = state_dir / "crash.txt"
        self.kernel_boot = boot_id if boot_id is not None else kernel_boot_id()
        self.doc: dict[str, Any] = {}
        #: how the last run ended (None on the first run, or where nothing could be read)
        self.last: dict[str, Any] | None = None
        self._crash_file: IO[str] | None = None
        self._beat = 0.0

    def begin(self, agent_version: str, catch_faults: bool = True) -> dict[str, Any] | None:
        """Read what the last run left, then start this run's record (and, unless another handler already
        holds the fatal signals, catch them into `crash.txt`). Returns how the last run ended."""
        before = self._load()
        crash = ""
        try:
            crash = self.crash_path.read_text(errors="replace")
        except OSError:
            pass
        counts: dict[str, int] = {}
        try:
            counts = {k: int(v) for k, v in (before or {}).get("counts", {}).items() if k in ENDINGS}
            self.last = ended(before, crash, self.kernel_boot) if before else None
        except (AttributeError, TypeError, ValueError) as err:  # a record not as written (edited, damaged)
            log.warning("%s not as this agent writes it (%s): how the last run ended is not known", self.path, err)
            self.last = None
        if self.last is not None:
            counts[self.last["ended"]] = counts.get(self.last["ended"], 0) + 1
        now = round(time.time(), 3)
        self.doc = {"kernel_boot": self.kernel_boot, "pid": os.getpid(), "agent_version": agent_version,
                    "started": now, "seen": now, "counts": counts}
        try:
            if catch_faults and not faulthandler.is_enabled():
                self._crash_file = open(self.crash_path, "w")  # held open: faulthandler writes to its descriptor
                faulthandler.enable(self._crash_file, all_threads=True)
            elif crash:
                self.crash_path.unlink(missing_ok=True)  # told once
        except OSError as err:  # the record is what suffers, never the run
            log.warning("%s not opened (%s): a crash of this run leaves no stacks", self.crash_path, err)
        self.doc["faults_caught"] = self._crash_file is not None
        self._save()
        self._beat = time.monotonic()
        if self.last is not None:
            say = log.info if self.last["ended"] == "stopped" else log.warning
            say("the last run %s", describe(self.last))
            if crash:
                log.warning("what the last run's threads were doing as it crashed:\n%s", crash.strip())
        return self.last

    def counts(self) -> dict[str, int]:
        """How many runs ended each way, this device's whole life (every ending, 0 where none)."""
        have = self.doc.get("counts", {})
        return {k: int(have.get(k, 0)) for k in ENDINGS}

    def beat(self) -> None:
        """Write the last look, at most every BEAT_S: a few hundred bytes every few minutes."""
        if self.doc and time.monotonic() - self._beat >= BEAT_S:
            self._beat = time.monotonic()
            self.doc["seen"] = round(time.time(), 3)
            self._save()

    def end(self, exit_code: int) -> None:
        """This run stops as asked (0) or on its own (another code): written last, so that a run that
        dies on the way out is not recorded as stopped."""
        if not self.doc:
            return
        if self._crash_file is not None:
            faulthandler.disable()
            self._crash_file.close()
            self._crash_file = None
            self.crash_path.unlink(missing_ok=True)  # empty: nothing struck this run
        now = round(time.time(), 3)
        self.doc.update(seen=now, stopped=now, exit_code=exit_code)
        self._save()

    def _load(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:  # a damaged record: the next one starts afresh
            log.warning("%s unreadable (%s): how the last run ended is not known", self.path, err)
            return None
        return doc if isinstance(doc, dict) else None

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.doc))
            os.replace(tmp, self.path)
        except OSError as err:  # a disk that filled or went read-only: the record is what suffers
            log.warning("run record not written (%s)", err)


def ended(before: dict[str, Any], crash: str, kernel_boot: str | None) -> dict[str, Any]:
    """How the run that left `before` (its run.json) and `crash` (its crash.txt) ended, seen from a start
    under `kernel_boot`."""
    out: dict[str, Any] = {
        "started": before.get("started"),
        "last_seen": before.get("seen"),
        "agent_version": before.get("agent_version"),
    }
    if before.get("stopped") is not None:
        code = int(before.get("exit_code") or 0)
        out.update(ended="stopped" if code == 0 else "exited", stopped=before["stopped"], exit_code=code)
    elif crash.strip():
        fault, stack = parse_crash(crash)
        out.update(ended="crashed", fault=fault, stack=stack, hint=_HINTS.get(fault or ""))
    elif before.get("kernel_boot") not in (None, kernel_boot):
        out["ended"] = "system_restarted"
    else:
        out["ended"] = "killed"
        if not before.get("faults_caught", True):  # a fatal signal would have left no trace either
            out["hint"] = "no fault handler of this agent was installed: it may have crashed"
    return out


def parse_crash(text: str) -> tuple[str | None, list[str]]:
    """faulthandler's report -> (the fault, as it names it, and the stack of the thread it struck,
    innermost call first). The thread it struck is `Current thread`; a SIGABRT sent from outside strikes
    whichever thread the kernel chose, so the other threads' stacks are in the log as written."""
    m = re.search(r"Fatal Python error: ([^\n]+)", text)
    fault = m.group(1).strip() if m else None
    blocks = re.split(r"\n\s*\n", text)
    current = next((b for b in blocks if b.lstrip().startswith("Current thread")), "")
    stack = [line.strip() for line in current.splitlines()[1:] if line.strip().startswith("File ")]
    return fault, stack[:_STACK_LINES]


def describe(last: dict[str, Any]) -> str:
    """One line for the log: how the last run ended, and when."""
    def when(ts: Any) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if isinstance(ts, (int, float)) else "?"

    how = last["ended"]
    if how == "stopped":
        return f"stopped cleanly at {when(last.get('stopped'))}"
    if how == "exited":
        return f"exited with code {last.get('exit_code')} at {when(last.get('stopped'))}"
    if how == "crashed":
        return (f"crashed ({last.get('fault') or 'a fatal signal'}; {last.get('hint') or 'see its stack'}), "
                f"some time after {when(last.get('last_seen'))}")
    if how == "system_restarted":
        return (f"ended as the system restarted under it (a power cut, a reset, a kernel panic), some time after "
                f"{when(last.get('last_seen'))}")
    return (f"was killed (SIGKILL: the kernel's OOM killer, a stop that timed out, or kill -9), some time after "
            f"{when(last.get('last_seen'))}" + (f"; {last['hint']}" if last.get("hint") else ""))
