"""Commands: every message gets exactly one answer; nothing a payload holds can stop the agent."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.commands import MAX_BYTES, MAX_DEPTH, Rejected, parse
from edge_agent.sinks.mqtt import Subscriber

from .conftest import SHORT, Broker, collect


def test_parse_accepts_a_well_formed_command() -> None:
    cid, cmd = parse(b'{"id": "a-1", "command": "ping"}', "t")
    assert cid == "a-1" and cmd.name == "ping" and cmd.args == {}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"command": "ping"}', "'id'"),
        (b'{"id": "../../etc/passwd", "command": "ping"}', "'id'"),
        (b'{"id": 5, "command": "ping"}', "'id'"),
        (b'{"id": "x", "command": "PING; rm -rf /"}', "'command'"),
        (b'{"id": "x", "command": "ping", "args": []}', "'args'"),
        (b'{"id": "x", "command": "ping", "extra": 1}', "unknown field"),
        (b"[" * 100_000 + b"]" * 100_000, "exceeds"),
        (b"[" * 1000 + b"]" * 1000, "nested deeper"),
        (b'{"id": "x", "command": "ping", "args": ' + b'{"a":' * 20 + b"1" + b"}" * 21, "nested deeper"),
        (b"1" * 5000, "not valid JSON"),  # an integer too long to convert
    ],
)
def test_parse_rejections(payload: bytes, reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        parse(payload, "t")


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                         inner, max_size=4),
                        max_leaves=30)


def _payloads() -> st.SearchStrategy[bytes]:
    names = st.sampled_from(["ping", "status", "reload", "deploy", "rollback", "", "x" * 70, "../x", "Ping"])
    ids = st.text(max_size=20) | st.integers() | st.none()
    structured = st.fixed_dictionaries(
        {"id": ids, "command": names | st.integers()},
        optional={"args": _json_values(), "junk": _json_values()},
    ).map(lambda d: json.dumps(d).encode())
    nested = st.integers(MAX_DEPTH - 2, MAX_DEPTH + 40).map(
        lambda n: ('{"id":"deep","command":"ping","args":' + '{"a":' * n + "0" + "}" * (n + 1)).encode()
    )
    huge = st.integers(MAX_BYTES - 10, MAX_BYTES + 1000).map(lambda n: b'{"id":"big","command":"ping","args":{"s":"'
                                                            + b"a" * n + b'"}}')
    return st.binary(max_size=300) | _json_values().map(lambda v: json.dumps(v).encode()) | structured | nested | huge


@pytest.fixture
def running_agent(broker: Broker, agent_factory):  # type: ignore[no-untyped-def]
    agent = agent_factory(["run", "--device-id", "fuzz", "--source", "synthetic", "--fps", "20",
                           "--model", str(SHORT)], env=broker.env())
    sub = Subscriber(broker.mqtt(), ["edge/fuzz/cmd/result", "edge/fuzz/predictions"])
    assert sub.start(10)
    collect(sub, lambda t, p, r: t.endswith("/predictions"), 30)
    yield agent, sub
    sub.stop()


def _next_result(sub: Subscriber, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = sub.get(0.2)
        if m is not None and m[0].endswith("/cmd/result"):
            return dict(orjson.loads(m[1]))
    raise AssertionError("no command result")


def test_valid_commands_and_duplicates(running_agent) -> None:  # type: ignore[no-untyped-def]
    _, sub = running_agent
    sub.publish("edge/fuzz/cmd", b'{"id": "p1", "command": "ping"}')
    r = _next_result(sub)
    assert r["id"] == "p1" and r["status"] == "done" and "pong" in r["result"]
    sub.publish("edge/fuzz/cmd", b'{"id": "p1", "command": "ping"}')
    again = _next_result(sub)
    assert again["duplicate"] is True and again["result"] == r["result"]  # answered, not re-run
    sub.publish("edge/fuzz/cmd", b'{"id": "s1", "command": "status"}')
    s = _next_result(sub)
    assert s["status"] == "done" and s["result"]["accelerator"]["active"] == "cpu"
    sub.publish("edge/fuzz/cmd", b'{"id": "u1", "command": "self-destruct"}')
    u = _next_result(sub)
    assert u["status"] == "rejected" and "unknown command" in u["reason"]


@pytest.mark.emulation_slow(
    "600 generated payloads against a live agent: a volume test of parsing code that is the same on any "
    "CPU"
)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(payload=_payloads())
def test_any_payload_gets_exactly_one_answer(running_agent, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    agent, sub = running_agent
    sub.publish("edge/fuzz/cmd", payload)
    r = _next_result(sub)
    assert r["status"] in ("done", "rejected")
    if r["status"] == "rejected":
        assert isinstance(r["reason"], str) and r["reason"]
    assert agent.proc.poll() is None


def test_a_flood_of_garbage_is_answered_and_the_stream_goes_on(running_agent) -> None:  # type: ignore[no-untyped-def]
    agent, sub = running_agent
    for i in range(200):
        sub.publish("edge/fuzz/cmd", bytes([i % 256]) * (1 + i * 37 % 5000))
    results = [_next_result(sub) for _ in range(200)]
    assert all(r["status"] == "rejected" and r["id"] is None for r in results)
    collect(sub, lambda t, p, r: t.endswith("/predictions"), 10)
    sub.publish("edge/fuzz/cmd", b'{"id": "after", "command": "ping"}')
    assert _next_result(sub)["id"] == "after"
    assert agent.proc.poll() is None


def test_a_key_that_is_not_unicode_still_gets_its_answer_and_a_retry_is_answered(running_agent) -> None:  # type: ignore[no-untyped-def]
    """A lone surrogate in a key (valid JSON, not valid Unicode) once broke serialising the answer; the
    id had been remembered first, so a clean retry with the same id was never answered either."""
    agent, sub = running_agent
    sub.publish("edge/fuzz/cmd", b'{"id": "sur1", "command": "ping", "\\ud800": 1}')
    r = _next_result(sub)
    assert r["id"] == "sur1" and r["status"] == "rejected" and r["command"] == "ping"
    assert "unknown field" in r["reason"] and "\\ud800" in r["reason"]  # escaped, not dropped
    sub.publish("edge/fuzz/cmd", b'{"id": "sur2", "command": "ping", "args": {"\\udfff": "x"}}')
    r2 = _next_result(sub)
    assert r2["id"] == "sur2" and r2["status"] == "rejected" and r2["command"] == "ping"
    sub.publish("edge/fuzz/cmd", b'{"id": "sur1", "command": "ping"}')  # the same id again: answered from memory
    again = _next_result(sub)
    assert again["id"] == "sur1" and again["duplicate"] is True
    sub.publish("edge/fuzz/cmd", b'{"id": "r1", "command": "self-destruct"}')
    unknown = _next_result(sub)
    assert unknown["command"] == "self-destruct" and unknown["status"] == "rejected"
    assert agent.proc.poll() is None


def test_a_retained_command_runs_when_sent_and_never_again_at_a_reconnect_or_start(  # type: ignore[no-untyped-def]
    broker: Broker, agent_factory
) -> None:
    """A command published with retain stays in the broker, which sends it again at every subscribe:
    each reconnect and each start. Run then, a retained `rollback` would undo a release at every
    boot. The agent runs a command when it is sent (the broker passes it on without the retain flag
    to a client already subscribed) and answers a replay from the store without running it."""
    sub = Subscriber(broker.mqtt(), ["edge/ret/cmd/result", "edge/ret/predictions"])
    assert sub.start(10)
    sub.publish("edge/ret/cmd", b'{"id": "stored", "command": "ping"}', retain=True)  # before the agent exists
    args = ["run", "--device-id", "ret", "--source", "synthetic", "--fps", "20", "--model", str(SHORT)]
    agent = agent_factory(args, env=broker.env())
    replayed = _next_result(sub, 60)
    assert replayed["id"] == "stored" and replayed["status"] == "rejected", replayed
    assert "retained" in replayed["reason"] and "pong" not in json.dumps(replayed)
    collect(sub, lambda t, p, r: t.endswith("/predictions"), 30)
    sub.publish("edge/ret/cmd", b'{"id": "live", "command": "ping"}', retain=True)  # while it listens
    live = _next_result(sub)
    assert live["id"] == "live" and live["status"] == "done" and "pong" in live["result"], live
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    again = agent_factory(args, env=broker.env(), name="again")  # a new start: the store sends "live" again
    second = _next_result(sub, 60)
    assert second["id"] == "live" and second["status"] == "rejected" and "retained" in second["reason"], second
    assert again.proc.poll() is None
    sub.stop()
