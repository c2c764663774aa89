"""Remote commands on `{prefix}/{device_id}/cmd` (and group topics): validate, dispatch, answer once.

Every message that arrives gets exactly one result on `{prefix}/{device_id}/cmd/result`:
`accepted`/`done` or `rejected` with a reason. Nothing in a payload can raise out of here:
size, UTF-8, JSON, nesting depth, types and unknown fields are checked before a handler runs.
A repeated `id` is answered again from memory, not executed twice.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.sinks.base import Inbound

log = logging.getLogger(__name__)

#: Payloads above this are refused unread: a command is a few hundred bytes.
MAX_BYTES = 64 * 1024
#: JSON nesting beyond this is refused (parsers recurse; attackers nest).
MAX_DEPTH = 16
#: Results remembered for answering duplicate ids.
REMEMBER = 1024
_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_NAME = re.compile(r"^[a-z][a-z0-9\-]{0,63}$")


#: The answer to a command the broker replays from its store (published with retain): run once when
#: sent, never again at each reconnect or start.
RETAINED = (
    "a retained command, replayed by the broker on subscribing, is not run: publish commands without "
    "retain, and clear this one with an empty retained message on its topic"
)
#: A handler returns {ACCEPTED: "accepted", ...} for work that continues after the answer.
ACCEPTED = "_status"


class Rejected(Exception):
    """The command is refused; the message is the reason sent back."""


@dataclass(frozen=True)
class Command:
    id: str
    name: str
    args: dict[str, Any]
    topic: str


Handler = Callable[[Command], dict[str, Any]]


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of decoded JSON, iteratively (no recursion for the attacker to exhaust)."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _bracket_depth(text: str) -> int:
    """Depth of [ and { outside strings, before json.loads is trusted with the text."""
    depth = deepest = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse(payload: bytes, topic: str) -> tuple[str | None, Command]:
    """(id if one could be read, Command) or Rejected carrying the id it could read as args[0]."""
    if len(payload) > MAX_BYTES:
        raise Rejected(f"payload of {len(payload)} bytes exceeds {MAX_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("payload is not valid UTF-8") from None
    if _bracket_depth(text) > MAX_DEPTH:
        raise Rejected(f"JSON nested deeper than {MAX_DEPTH}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise Rejected("payload is not valid JSON") from None
    if not isinstance(doc, dict):
        raise Rejected("a command must be a JSON object")
    cid = doc.get("id")
    if not isinstance(cid, str) or not _ID.match(cid):
        raise Rejected("'id' must be a string of 1-128 of A-Z a-z 0-9 _ . : -")
    try:
        name = doc.get("command")
        if not isinstance(name, str) or not _NAME.match(name):
            raise Rejected("'command' must be a lower-case name")
        args = doc.get("args", {})
        if not isinstance(args, dict):
            raise Rejected("'args' must be an object")
        unknown = set(doc) - {"id", "command", "args"}
        if unknown:
            raise Rejected(f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
        if _depth(args, MAX_DEPTH) > MAX_DEPTH:
            raise Rejected(f"args nested deeper than {MAX_DEPTH}")
    except Rejected as err:
        known = name if isinstance(name, str) and _NAME.match(name) else None
        raise Rejected(str(err), cid, known) from None
    return cid, Command(cid, name, args, topic)


def no_args(cmd: Command) -> None:
    if cmd.args:
        raise Rejected(f"'{cmd.name}' takes no args")


class CommandProcessor:
    """One thread: takes raw messages from the MQTT inbox, answers each exactly once."""

    def __init__(
        self, inbox: queue.Queue[Inbound], publish: Callable[[dict[str, Any]], None], stop: threading.Event
    ):
        self.inbox = inbox
        self.publish = publish
        self.stop = stop
        self.handlers: dict[str, Handler] = {}
        self._done: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.counts = {"received": 0, "rejected": 0, "done": 0, "duplicate": 0, "errors": 0}
        self.heartbeat = time.monotonic()
        self._thread: threading.Thread | None = None

    def register(self, name: str, handler: Handler) -> None:
        self.handlers[name] = handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                topic, payload, retained = self.inbox.get(timeout=0.25)
            except queue.Empty:
                continue
            try:
                answer = self.handle(topic, payload, retained)
                self.publish(answer)
                self.remember(answer)  # only once it is out: a retry of an unanswered id is run again
            except Exception:  # loop boundary: one bad command must not stop the others
                self.counts["errors"] += 1
                log.exception("command processing failed")

    def handle(self, topic: str, payload: bytes, retained: bool = False) -> dict[str, Any]:
        """One message, one answer. `retained`: the broker replayed it from its store on subscribing (it
        was published with retain), which happens again at every reconnect and every start; it is
        answered and not run, or a retained `rollback` would undo a release at each boot."""
        self.counts["received"] += 1
        cid: str | None = None
        name: str | None = None
        result: dict[str, Any]
        try:
            cid, cmd = parse(payload, topic)
            name = cmd.name
            if cid is not None and cid in self._done:
                self.counts["duplicate"] += 1
                return {**self._done[cid], "duplicate": True}
            if retained:
                raise Rejected(RETAINED, cid, cmd.name)
            handler = self.handlers.get(cmd.name)
            if handler is None:
                known = ", ".join(sorted(self.handlers))
                raise Rejected(f"unknown command '{cmd.name}'; known: {known}", cid, cmd.name)
            try:
                out = handler(cmd)
            except Rejected as err:
                raise Rejected(str(err.args[0]), cid, cmd.name) from None
            status = str(out.pop(ACCEPTED, "done"))  # long jobs answer 'accepted', then report elsewhere
            result = {"id": cid, "command": cmd.name, "status": status, "result": out}
            self.counts["done"] += 1
        except Rejected as err:
            cid = cid if cid is not None else (err.args[1] if len(err.args) > 1 else None)
            name = name or (err.args[2] if len(err.args) > 2 else None)
            result = {"id": cid, "command": name, "status": "rejected", "reason": str(err.args[0])}
            self.counts["rejected"] += 1
        except Exception as err:  # a handler's own failure is still one answer
            log.exception("command %s failed", cid)
            reason = f"failed: {type(err).__name__}: {err}"[:500]
            result = {"id": cid, "command": name, "status": "rejected", "reason": reason}
            self.counts["rejected"] += 1
        result["ts"] = round(time.time(), 3)
        return result

    def remember(self, answer: dict[str, Any]) -> None:
        """Keep an answer for its id, so that a repeated id is answered again, not run twice."""
        cid = answer.get("id")
        if cid is None or answer.get("duplicate"):
            return
        self._done[cid] = answer
        while len(self._done) > REMEMBER:
            self._done.popitem(last=False)
