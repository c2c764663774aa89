"""The MQTT sink against a real mosquitto: birth, will, reconnect, refusal, TLS, bounded queue."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import MQTTConfig, TLSConfig
from edge_agent.sinks.base import Message
from edge_agent.sinks.mqtt import MqttSink

from .conftest import SHORT, Broker, collect, free_port, run_cli, wait_until


def sink_for(cfg: MQTTConfig, device: str = "dev1") -> MqttSink:
    info = Message(f"{cfg.topic_prefix}/{device}/info", b'{"boot_id":"b1"}', qos=1, retain=True)
    s = MqttSink(cfg, device, lambda: [info])
    s.start()
    return s


def test_a_message_whose_handler_raises_never_ends_the_mqtt_client(broker: Broker) -> None:
    """paho re-raises what a message callback raises, out of its network thread, which then ends: no
    more messages, no reconnection (a stray OTA chunk topic whose index str.isdigit() took and int()
    did not did it). Whatever a handler raises is counted, logged, and the client goes on."""
    import queue

    from edge_agent.sinks.mqtt import Inbound, Subscriber

    class Handlers(queue.Queue[Inbound]):
        def put_nowait(self, item: Inbound) -> None:
            if item.topic.endswith("/bad"):
                raise ValueError("a handler's bug")
            super().put_nowait(item)

    inbox = Handlers()
    s = MqttSink(broker.mqtt(keepalive_s=5), "dev1", subscriptions=["edge/dev1/in/#"], inbox=inbox)
    s.start()
    pub = Subscriber(broker.mqtt(), [], client_id="in-publisher")
    try:
        assert s.wait_connected(10) and pub.start(10)

        def good_after_bad() -> bool:  # until the sink's subscription is in place: each pair in order
            pub.publish("edge/dev1/in/bad", b"x", qos=1)
            pub.publish("edge/dev1/in/good", b"x", qos=1)
            try:
                return inbox.get(timeout=0.5).topic == "edge/dev1/in/good"
            except queue.Empty:
                return False

        wait_until(good_after_bad, 20, what="a message taken in after one whose handler raised")
        assert s.drops["inbound_error"] >= 1
    finally:
        pub.stop()
        s.close(2)


def _publish_packet(topic: bytes, payload: bytes) -> bytes:
    """An MQTT PUBLISH at QoS 0 of whatever topic bytes, checked or not."""
    body = len(topic).to_bytes(2, "big") + topic + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


def test_a_topic_from_the_broker_that_is_not_utf8_never_ends_the_mqtt_client() -> None:
    """A broker (or what answers on its port) that forwards a message whose topic is not UTF-8, which
    mosquitto never does: paho's `topic` raised in the sink's callback and in the plain subscriber's,
    which ended the client's network thread for good. The agent still said it was connected, and
    neither published nor received anything again. The message is now dropped and counted, and the
    next one is taken in."""
    import queue as queue_mod

    from edge_agent.sinks.base import Inbound
    from edge_agent.sinks.mqtt import Subscriber

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def broker() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)  # CONNECT
                conn.sendall(bytes([0x20, 2, 0, 0]))  # CONNACK: accepted
                conn.sendall(_publish_packet(b"edge/dev1/\xff\xfe", b"bad")
                             + _publish_packet(b"edge/dev1/cmd", b"good"))
                while conn.recv(65536):  # SUBSCRIBE, PINGREQ... until the client goes
                    pass

    threading.Thread(target=broker, daemon=True).start()
    inbox: queue_mod.Queue[Inbound] = queue_mod.Queue()
    s = MqttSink(MQTTConfig(host="127.0.0.1", port=port), "dev1", subscriptions=["edge/dev1/#"], inbox=inbox)
    s.start()
    try:
        got = inbox.get(timeout=10)
        assert (got.topic, got.payload) == ("edge/dev1/cmd", b"good")
        assert s.drops["inbound_error"] == 1
    finally:
        s.close(2)
    sub = Subscriber(MQTTConfig(host="127.0.0.1", port=port), [])
    try:
        assert sub.start(10)
        assert sub.messages.get(timeout=10)[:2] == ("edge/dev1/cmd", b"good")
        assert sub.malformed == 1
    finally:
        sub.stop()
        server.close()


def test_birth_retained_state_messages_and_clean_offline(broker: Broker, subscriber_factory) -> None:  # type: ignore[no-untyped-def]
    sub = subscriber_factory(["edge/dev1/#"])
    s = sink_for(broker.mqtt(keepalive_s=5))
    assert s.wait_connected(10)
    collect(sub, lambda t, p, r: t == "edge/dev1/availability" and p == "online", 5)
    collect(sub, lambda t, p, r: t == "edge/dev1/info" and p["boot_id"] == "b1", 5)
    for i in range(50):
        assert s.submit(Message("edge/dev1/predictions", f'{{"seq":{i}}}'.encode(), qos=1))
    seqs = [collect(sub, lambda t, p, r: t.endswith("/predictions"), 5)[1]["seq"] for _ in range(50)]
    assert seqs == list(range(50))
    assert s.flush(5)
    s.close(5)
    collect(sub, lambda t, p, r: t == "edge/dev1/availability" and p == "offline", 5)
    # a late subscriber sees the retained 'offline', not a stale 'online'
    late = subscriber_factory(["edge/dev1/availability"])
    assert collect(late, lambda t, p, r: True, 5)[1:] == ("offline", True)


def test_while_messages_keep_coming_the_publisher_gathers_them_for_linger_ms(
    broker: Broker, subscriber_factory  # type: ignore[no-untyped-def]
) -> None:
    """`mqtt.linger_ms`: the first message after a quiet spell goes at once; those submitted right after it
    wait for the rest of the linger and go together (one wake-up of the publisher, not one each)."""
    sub = subscriber_factory(["edge/dev1/predictions"])
    s = sink_for(broker.mqtt(qos=0, linger_ms=1000))
    try:
        assert s.wait_connected(10)
        t0 = time.monotonic()
        assert s.submit(Message("edge/dev1/predictions", b"0", qos=0))
        assert collect(sub, lambda t, p, r: True, 5)[1] == 0
        first = time.monotonic() - t0
        for i in (1, 2, 3):
            assert s.submit(Message("edge/dev1/predictions", str(i).encode(), qos=0))
        assert [collect(sub, lambda t, p, r: True, 5)[1] for _ in range(3)] == [1, 2, 3]
        rest = time.monotonic() - t0
        assert first < 1.0, f"the first message after a quiet spell took {first:.2f} s"
        # sent no sooner than a linger after the first one was (itself after t0)
        assert rest >= 1.0, f"messages submitted while the publisher was busy arrived after {rest:.2f} s"
    finally:
        s.close(2)


def test_commands_are_subscribed_before_the_birth_so_nothing_sent_in_answer_to_it_is_lost(tmp_path: Path) -> None:
    """Whatever answers the agent's `online` or its retained state at once (a fleet sending a command on
    seeing it, a Home Assistant button pressed as its discovery arrives) must find the subscription in
    place. The broker handles one connection's packets in order: the SUBSCRIBE of the commands has to come
    before the birth. The agent's own availability is subscribed after it, so that the retained `online`
    comes back on it (how a 3.1.1 broker that drops what the agent publishes is found out)."""
    port = free_port()
    b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_type all\nlog_dest stdout\n",
               port=port).start()
    inbox: queue.Queue[Any] = queue.Queue()
    info = Message("edge/dev1/info", b'{"boot_id":"b1"}', qos=1, retain=True)
    s = MqttSink(b.mqtt(), "dev1", lambda: [info], subscriptions=["edge/dev1/cmd"], inbox=inbox)
    s.start()
    try:
        assert s.wait_connected(10)
        wait_until(lambda: s._echoed, 10, what="the retained online back on the availability subscription")
        assert s.refused_subscriptions == []
    finally:
        s.close(2)
        b.stop()
    events = []  # what the broker received from the agent, in order (mosquitto's log: a SUBSCRIBE's topics
    for line in b.log.read_text().splitlines():  # follow it a line each, "\t<topic> (QoS n)")
        text = line.split(": ", 1)[-1]
        if text.startswith("Received SUBSCRIBE from edge-agent-dev1"):
            events.append("SUBSCRIBE")
        elif text.startswith("\t") and events and events[-1].startswith("SUBSCRIBE"):
            events[-1] += " " + text.strip().split(" (QoS")[0]
        elif text.startswith("Received PUBLISH from edge-agent-dev1"):
            topic = text.split("'")[1]
            events.append(f"PUBLISH {topic.rsplit('/', 1)[-1]}")
    assert events[:4] == ["SUBSCRIBE edge/dev1/cmd", "PUBLISH availability", "PUBLISH info",
                          "SUBSCRIBE edge/dev1/availability"], events


def test_queue_is_bounded_while_broker_is_away_and_drains_in_order(tmp_path: Path) -> None:
    b = Broker(tmp_path)
    s = sink_for(b.mqtt(queue_size=20, reconnect_min_s=0.1, reconnect_max_s=0.5))
    try:
        t0 = time.monotonic()
        accepted = [s.submit(Message("edge/dev1/predictions", str(i).encode(), qos=1)) for i in range(30)]
        assert time.monotonic() - t0 < 0.5  # never blocks on the network
        assert accepted == [True] * 20 + [False] * 10
        assert s.drops["broker_down"] == 10 and s.queue_depth() == 20
        b.start()
        from edge_agent.sinks.mqtt import Subscriber

        sub = Subscriber(b.mqtt(), ["edge/dev1/predictions"])
        assert sub.start(10)
        # the sink connects on its own (backoff) and delivers what it held
        got = [collect(sub, lambda t, p, r: True, 15)[1] for _ in range(20)]
        assert got == list(range(20))
        sub.stop()
    finally:
        s.close(2)
        b.stop()


def test_birth_republished_after_broker_restart(broker: Broker, subscriber_factory) -> None:  # type: ignore[no-untyped-def]
    s = sink_for(broker.mqtt(reconnect_min_s=0.1, reconnect_max_s=1))
    try:
        assert s.wait_connected(10)
        broker.stop()  # retained state is lost: persistence is off
        wait_until(lambda: not s.is_connected(), 10, what="disconnect to be noticed")
        assert s.stats()["state"] == "disconnected"
        broker.start()
        wait_until(s.is_connected, 15, what="reconnect")
        late = subscriber_factory(["edge/dev1/availability", "edge/dev1/info"])
        seen = {collect(late, lambda t, p, r: r, 5)[0] for _ in range(2)}
        assert seen == {"edge/dev1/availability", "edge/dev1/info"}
        assert s.connects == 2
    finally:
        s.close(2)


def test_last_will_on_sigkill(broker: Broker, subscriber_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    sub = subscriber_factory(["edge/willdev/availability"])
    agent = agent_factory(["run", "--model", str(SHORT), "--source", "synthetic", "--device-id", "willdev"],
                          env=broker.env())
    collect(sub, lambda t, p, r: p == "online", 20)
    agent.proc.send_signal(signal.SIGKILL)
    agent.wait(5)
    collect(sub, lambda t, p, r: p == "offline", 10)


def test_refused_connack_is_reported_not_taken_for_connected(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "agent", "right"], check=True)
    port = free_port()
    conf = f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
    b = Broker(tmp_path, conf, port).start()
    try:
        bad = sink_for(b.mqtt(username="agent", password="wrong"))
        wait_until(lambda: bad.stats()["state"] == "refused", 10, what="refusal")
        assert not bad.is_connected() and "refused" in str(bad.last_error)
        assert "wrong" not in str(bad.stats())
        bad.close(1)
        good = sink_for(b.mqtt(username="agent", password="right"))
        assert good.wait_connected(10)
        good.close(2)
        # the tools say the broker refused them, not that there is none
        mq = ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--set", "mqtt.username=agent",
              "--set", "mqtt.password=wrong"]
        for cmd in (["listen", "--seconds", "1"], ["fleet", "status"]):
            r = run_cli(*cmd, *mq)
            assert r.returncode == 1 and f"the broker at 127.0.0.1:{port} refused: " in r.stderr, r.stderr
            assert "no broker" not in r.stderr and "wrong" not in r.stderr, r.stderr
    finally:
        b.stop()


def test_a_broker_that_closes_the_connection_unanswered_is_said_to_and_told_from_one_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """mosquitto set with `retain_available false` closes the connection of a 3.1.1 client whose will is
    retained (the agent's), before any CONNACK: MQTT 3.1.1 gives it no way to say why. Health and the
    log said "no broker at ... (disconnected: Unspecified error)" forever; they now say that the broker
    is there and closed the connection unanswered, with what does that and how to learn why. After two
    such closes the agent tries its Will unretained, is taken, and sends everything unretained, health
    saying it is a guess. The same broker's MQTT 5 refusal names the reason, and the agent connects
    again with its Will unretained, sends everything unretained (a broker that keeps none refuses each
    retained message), and says in health that what is usually retained reaches only who is subscribed
    when it is sent. A server that closes every connection unanswered, Will or not, stays "not
    accepted", the retained Will back after the trial."""
    port = free_port()
    b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous true\nretain_available false\n", port).start()
    caplog.set_level(logging.WARNING, logger="edge_agent.sinks.mqtt")
    srv = socket.create_server(("127.0.0.1", 0))  # takes each connection and closes it at once
    stop = threading.Event()

    def close_each() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                srv.accept()[0].close()
            except TimeoutError:
                continue

    closer = threading.Thread(target=close_each, daemon=True)
    closer.start()
    try:
        s = sink_for(b.mqtt(keepalive_s=5, reconnect_min_s=0.2, reconnect_max_s=1, down_log_s=1))
        wait_until(lambda: "before accepting it" in str(s.stats()["last_error"]), 15, what="the closed connection")
        err = str(s.stats()["last_error"])
        assert "a will or retained messages it does not allow" in err and 'mqtt.protocol = "5"' in err, err
        assert s.wait_connected(15)
        assert any("keeps no retained messages" in p and "a guess" in p for p in s.problems()), s.problems()
        assert "trying a Will unretained" in caplog.text
        s.close(1)
        shut = sink_for(MQTTConfig(host="127.0.0.1", port=srv.getsockname()[1], keepalive_s=5,
                                   reconnect_min_s=0.2, reconnect_max_s=0.5, down_log_s=1))
        try:
            wait_until(lambda: "not accepted by the broker at 127.0.0.1" in caplog.text, 15, what="the log")
            wait_until(lambda: "the Will is retained again" in caplog.text, 15, what="the trial given up")
            assert not shut.is_connected() and not shut.problems()
        finally:
            shut.close(1)
        from edge_agent.sinks.mqtt import Subscriber

        sub = Subscriber(b.mqtt(), ["edge/dev1/#"])
        assert sub.start(10)
        v5 = sink_for(b.mqtt(protocol="5", reconnect_min_s=0.2, reconnect_max_s=1))
        try:
            assert v5.wait_connected(15)
            assert "Retain not supported" in str(v5.stats()["last_error"])  # the first CONNECT's refusal
            v5.submit(Message("edge/dev1/predictions", b'{"seq": 1}', qos=1))
            got = {collect(sub, lambda t, p, r: True, 10)[0] for _ in range(3)}
            assert got == {"edge/dev1/availability", "edge/dev1/info", "edge/dev1/predictions"}, got
            assert any("keeps no retained messages" in p for p in v5.problems()), v5.problems()
            assert v5.connects == 1 and v5.is_connected()
        finally:
            sub.stop()
            v5.close(1)
    finally:
        stop.set()
        closer.join(5)
        srv.close()
        b.stop()


def test_a_broker_that_takes_qos_up_to_1_or_0_gets_every_message_within_it(tmp_path: Path) -> None:
    """A broker may take QoS up to 1 (AWS IoT Core) or 0 (mosquitto's `max_qos`), and ends the connection
    on a PUBLISH above it. With mqtt.qos = 2 every prediction cut the connection and was lost, and health
    blamed a client id in use elsewhere. Under MQTT 5 the broker names its Maximum QoS in its CONNACK,
    and each message now goes within it; where it takes no QoS 1, the Will asks for 0. MQTT 3.1.1 cannot
    say it: there health names mqtt.qos = 1 as the cure."""
    from edge_agent.sinks.mqtt import Subscriber

    for max_qos in (1, 0):
        port = free_port()
        b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_qos {max_qos}\n", port).start()
        s = sink_for(b.mqtt(protocol="5", qos=2, reconnect_min_s=0.2, reconnect_max_s=1))
        sub = Subscriber(b.mqtt(), ["edge/dev1/predictions"])
        try:
            assert sub.start(10) and s.wait_connected(10)
            for i in range(5):
                s.submit(Message("edge/dev1/predictions", str(i).encode(), qos=2))
            got = [collect(sub, lambda t, p, r: True, 15)[1] for _ in range(5)]
            assert got == list(range(5)), got
            assert s.connects == 1 and s.is_connected() and s.stats()["max_qos"] == max_qos
            assert not s.problems(), s.problems()
        finally:
            sub.stop()
            s.close(2)
            b.stop()
    port = free_port()
    b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_qos 1\n", port).start()
    s = sink_for(b.mqtt(qos=2, reconnect_min_s=0.1, reconnect_max_s=0.5))
    try:
        assert s.wait_connected(10)

        def cut_again() -> bool:
            s.submit(Message("edge/dev1/predictions", b"1", qos=2))
            return any("set mqtt.qos = 1" in p for p in s.problems())

        wait_until(cut_again, 20, what="health to name mqtt.qos = 1")
    finally:
        s.close(2)
        b.stop()


def test_no_more_messages_are_in_flight_than_an_mqtt_5_broker_takes(tmp_path: Path) -> None:
    """An MQTT 5 broker names in its CONNACK how many QoS 1 and 2 messages it takes in flight (its Receive
    Maximum), and one that holds to it ends the connection past it. The agent kept up to 100 whatever it
    said; it now keeps to it (mosquitto says 5 here), and every message of a burst arrives."""
    from edge_agent.sinks.mqtt import Subscriber

    port = free_port()
    b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 5\n", port).start()
    s = sink_for(b.mqtt(protocol="5"))
    sub = Subscriber(b.mqtt(), ["edge/dev1/predictions"])
    try:
        assert sub.start(10) and s.wait_connected(10)
        wait_until(lambda: s._client.max_inflight_messages == 5, 10, what="the broker's Receive Maximum kept")
        for i in range(50):
            s.submit(Message("edge/dev1/predictions", str(i).encode(), qos=1))
        assert [collect(sub, lambda t, p, r: True, 15)[1] for _ in range(50)] == list(range(50))
        assert s.connects == 1
    finally:
        sub.stop()
        s.close(2)
        b.stop()


def test_a_connection_cut_while_a_large_message_is_read_past_leaves_the_next_one_clean() -> None:
    """A message too large to take is read past as it comes. Where the connection ends partway (the
    broker restarts, the network drops), the next connection starts with nothing left to read past:
    kept, the bytes still owed would have swallowed the next connection's CONNACK and messages. A
    scripted broker: the first connection sends the header of a 5 MB message and a few bytes of it,
    then closes; the second accepts, and sends a command."""
    from edge_agent.sinks.base import Inbound

    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(20)
    served: queue.Queue[socket.socket] = queue.Queue()

    def read_packet(c: socket.socket) -> tuple[int, bytes]:
        first = c.recv(1)[0]
        length, mult = 0, 1
        while True:
            b = c.recv(1)[0]
            length += (b & 127) * mult
            mult *= 128
            if not b & 128:
                break
        body = b""
        while len(body) < length:
            body += c.recv(length - len(body))
        return first, body

    def accept_and_subscribe() -> socket.socket:
        """Up to the SUBSCRIBE of the agent's own availability, the last packet it sends on connecting
        (closed earlier, with its packets unread, the socket would be reset, and the client drop what it
        had not read yet)."""
        c, _ = srv.accept()
        assert read_packet(c)[0] >> 4 == 1  # CONNECT
        c.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
        while True:
            kind, body = read_packet(c)
            if kind >> 4 == 8:  # SUBSCRIBE: grant each topic QoS 1
                topics, pos = 0, 2
                while pos < len(body):
                    pos += 2 + int.from_bytes(body[pos : pos + 2], "big") + 1
                    topics += 1
                c.sendall(bytes([0x90, 2 + topics]) + body[:2] + b"\x01" * topics)
                if b"edge/dev1/availability" in body:
                    return c

    def publish(topic: bytes, payload: bytes, declared: int | None = None) -> bytes:
        rest = len(topic) + 2 + len(payload) if declared is None else declared
        enc = bytearray()
        while True:
            b, rest = rest % 128, rest // 128
            enc.append(b | (128 if rest else 0))
            if not rest:
                break
        return bytes([0x30]) + bytes(enc) + len(topic).to_bytes(2, "big") + topic + payload

    def broker() -> None:
        first = accept_and_subscribe()
        first.sendall(publish(b"edge/dev1/cmd", b"x" * 1000, declared=5 << 20))  # owes the rest of 5 MB
        first.close()
        second = accept_and_subscribe()
        second.sendall(publish(b"edge/dev1/cmd", b'{"id": "1", "command": "ping"}'))
        served.put(second)

    server = threading.Thread(target=broker, daemon=True)
    server.start()
    taken: queue.Queue[Inbound] = queue.Queue()
    cfg = MQTTConfig(host="127.0.0.1", port=srv.getsockname()[1], reconnect_min_s=0.2, reconnect_max_s=1)
    s = MqttSink(cfg, "dev1", subscriptions=["edge/dev1/cmd"], inbox=taken)
    s.start()
    try:
        got = taken.get(timeout=20)
        assert got.payload == b'{"id": "1", "command": "ping"}' and s.connects == 2
        assert s.drops["inbound_too_large"] == 1  # the large one, never taken
    finally:
        s.close(1)
        server.join(5)
        while not served.empty():
            served.get().close()
        srv.close()


def test_a_guess_that_the_broker_keeps_no_retained_messages_lasts_one_connection(tmp_path: Path) -> None:
    """Under MQTT 3.1.1 the agent guesses that a broker keeps no retained messages when it closes
    connections with a retained Will unanswered and takes one without. A broker that closed them for
    another reason (its connections all taken) would otherwise have lost the agent its retained state
    for good: the next connection starts from a retained Will again (here the broker restarts keeping
    retained messages)."""
    port = free_port()
    b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous true\nretain_available false\n", port).start()
    s = sink_for(b.mqtt(keepalive_s=5, reconnect_min_s=0.2, reconnect_max_s=1))
    try:
        assert s.wait_connected(15) and not s.retain_ok
        b.stop()
        b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous true\n", port).start()
        wait_until(lambda: s.connects == 2 and s.is_connected(), 20, what="the agent back on the restarted broker")
        assert s.retain_ok and not any("retained" in p for p in s.problems()), s.problems()
    finally:
        s.close(1)
        b.stop()


def test_a_server_that_accepts_and_never_answers_is_a_broker_away_since_start(caplog: pytest.LogCaptureFixture) -> None:
    """Something else on the broker's port (or a broker hung before its CONNACK) takes the connection
    and says nothing: the agent is not connected, gives up after the keepalive and tries again, and
    the broker is said to be away since the start, not since that attempt gave up."""
    srv = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except TimeoutError:
                continue

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    cfg = MQTTConfig(host="127.0.0.1", port=srv.getsockname()[1], keepalive_s=5, reconnect_max_s=1, down_log_s=1)
    caplog.set_level(logging.WARNING, logger="edge_agent.sinks.mqtt")
    s = sink_for(cfg)
    try:
        wait_until(lambda: len(accepted) >= 2, 30, what="a second attempt after the keepalive")
        assert not s.is_connected() and s.stats()["state"] == "disconnected"
        wait_until(lambda: "no broker at" in caplog.text, 10, what="the broker away in the log")
        line = next(r.getMessage() for r in caplog.records if "no broker at" in r.getMessage())
        away = float(line.split(" for ")[1].split(" s ")[0])
        assert away >= 5, line  # the keepalive it waited through, at least
    finally:
        stop.set()
        server.join(5)
        s.close(1)
        for c in accepted:
            c.close()
        srv.close()


def _dynsec_broker(tmp_path: Path, clients: dict[str, list[tuple[str, str]]]) -> Broker:
    """A mosquitto whose dynamic-security plugin gives each client (user, password = user) only the
    ACLs listed for it (acltype, topic), and an "admin" that may read everything: a broker that
    refuses a subscription with a failing SUBACK (the plain ACL file lets it and delivers nothing)."""
    import base64
    import glob
    import hashlib

    plugin = next(iter(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so")), None)
    assert plugin is not None, "mosquitto's dynamic-security plugin is missing (Debian's mosquitto has it)"

    def client(user: str) -> dict[str, Any]:
        salt = os.urandom(12)
        pw = hashlib.pbkdf2_hmac("sha512", user.encode(), salt, 101)
        return {"username": user, "password": base64.b64encode(pw).decode(), "salt": base64.b64encode(salt).decode(),
                "iterations": 101, "roles": [{"rolename": user}]}

    everything = [("subscribePattern", "#"), ("publishClientReceive", "#")]
    roles = {**clients, "admin": everything}
    doc = {
        "clients": [client(u) for u in roles],
        "roles": [{"rolename": u, "acls": [{"acltype": a, "topic": t, "allow": True} for a, t in acls]}
                  for u, acls in roles.items()],
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                             "unsubscribe": True},
    }
    (tmp_path / "dynsec.json").write_text(json.dumps(doc))
    port = free_port()
    conf = (f"listener {port} 127.0.0.1\nallow_anonymous false\nplugin {plugin}\n"
            f"plugin_opt_config_file {tmp_path / 'dynsec.json'}\n")
    return Broker(tmp_path, conf, port).start()


def test_a_subscription_the_broker_refuses_is_said_in_health_and_the_log(tmp_path: Path, agent_factory) -> None:  # type: ignore[no-untyped-def]
    """A broker's ACL that lets a device publish but refuses it `cmd` leaves it connected and
    publishing, and deaf to commands: that is said once in the log, and in health while it lasts."""
    from edge_agent.sinks.mqtt import Subscriber

    dev = [("publishClientSend", "edge/dev1/#"), ("publishClientReceive", "edge/dev1/#"),
           ("subscribePattern", "edge/dev1/availability"), ("subscribePattern", "edge/dev1/ota/#")]
    b = _dynsec_broker(tmp_path, {"dev1": dev})
    try:
        watch = Subscriber(b.mqtt(username="admin", password="admin"), ["edge/dev1/health"])
        assert watch.start(10)
        args = ["run", "--device-id", "dev1", "--source", "synthetic", "--fps", "5", "--model", str(SHORT)]
        agent = agent_factory(args, env={**b.env(), "EDGE_AGENT_MQTT__USERNAME": "dev1",
                                         "EDGE_AGENT_MQTT__PASSWORD": "dev1", "EDGE_AGENT_HEALTH__INTERVAL_S": "1"})
        _, health, _ = collect(watch, lambda t, p, r: isinstance(p, dict) and bool(p.get("problems")), 60)
        assert health["problems"] == ["broker refused subscriptions: edge/dev1/cmd"], health["problems"]
        assert health["status"] == "degraded" and health["broker"]["refused_subscriptions"] == ["edge/dev1/cmd"]
        assert agent.log().count("the broker refused the subscription to edge/dev1/cmd") == 1
        watch.stop()
        # `check`, run when the device is set up, asks for the same subscriptions and says so before it runs
        env = {**b.env(), "EDGE_AGENT_MQTT__USERNAME": "dev1", "EDGE_AGENT_MQTT__PASSWORD": "dev1",
               "EDGE_AGENT_DEVICE_ID": "dev1"}
        r = run_cli("check", "--source", "synthetic", "--model", str(SHORT), "--accelerator", "cpu", env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        (problem,) = json.loads(r.stdout)["problems"]
        assert "refused the subscription to edge/dev1/cmd (its ACL?)" in problem, problem
    finally:
        b.stop()


def test_a_publish_the_broker_refuses_is_said_in_health_and_the_log(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A broker's ACL that does not cover a topic (a pipeline's `edge/dev1/yard/predictions` under rules
    written for `edge/dev1/predictions`) keeps the connection and drops what is sent there. MQTT 3.1.1
    cannot tell the client; MQTT 5 says "Not authorized" in the acknowledgement, and the agent now says
    which topics: once each in the log, and in health. What the broker takes goes on arriving."""
    from edge_agent.sinks.mqtt import Subscriber

    caplog.set_level(logging.INFO, logger="edge_agent.sinks.mqtt")
    acl = tmp_path / "acl"
    acl.write_text("".join(f"topic readwrite edge/dev1/{t}\n" for t in ("availability", "info", "predictions"))
                   + "topic read edge/#\n")
    port = free_port()
    b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {acl}\n", port).start()
    sub = Subscriber(b.mqtt(), ["edge/dev1/#"])
    assert sub.start(10)
    s = sink_for(b.mqtt(protocol="5"))
    try:
        assert s.wait_connected(10)
        for _ in range(3):
            assert s.submit(Message("edge/dev1/yard/predictions", b"{}", qos=1))
        assert s.submit(Message("edge/dev1/predictions", b'{"seq": 7}', qos=1))
        assert collect(sub, lambda t, p, r: t == "edge/dev1/predictions", 10)[1] == {"seq": 7}
        wait_until(lambda: s.drops["refused"] == 3, 10, what="the three refusals")
        assert s.problems() == ["broker refused publishes on edge/dev1/yard/predictions (Not authorized)"]
        assert s.stats()["refused_publishes"] == ["edge/dev1/yard/predictions"]
        assert caplog.text.count("the broker refused a message on edge/dev1/yard/predictions") == 1
    finally:
        s.close(2)
        sub.stop()
        b.stop()


def test_a_broker_that_drops_everything_a_311_client_publishes_is_found_out(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Under MQTT 3.1.1 a broker acknowledges a message its ACL drops as one it took, so an agent whose
    every message was dropped (rules for another user or prefix) said it was connected and publishing,
    and its local health said nothing. Its own retained `online` coming back on its subscription to its
    availability now tells: once 10 s pass without it, health and the log say the broker drops what it
    publishes. Where the ACL lets it publish, the echo comes and nothing is said; under MQTT 5 the
    acknowledgements name the refused topics instead (above)."""
    caplog.set_level(logging.INFO, logger="edge_agent.sinks.mqtt")
    acl = tmp_path / "acl"
    acl.write_text("topic read edge/#\ntopic readwrite edge/dev2/#\n")  # dev1 may publish on nothing
    port = free_port()
    b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {acl}\n", port).start()
    dropped, fine = sink_for(b.mqtt()), sink_for(b.mqtt(), device="dev2")
    try:
        assert dropped.wait_connected(10) and fine.wait_connected(10)
        assert dropped.submit(Message("edge/dev1/predictions", b"{}", qos=1))
        said = wait_until(lambda: [p for p in dropped.problems() if "drops what this device publishes" in p], 30,
                          what="the drops said")
        assert said[0].startswith("the broker drops what this device publishes: its own 'online' on "
                                  "edge/dev1/availability has not come back in 1"), said
        assert dropped.state == "connected"  # as before: the connection itself is fine
        assert caplog.text.count("the broker drops what this client publishes") == 1
        assert not [p for p in fine.problems() if "drops" in p]  # its echo came: nothing said
    finally:
        dropped.close(2)
        fine.close(2)
        b.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_two_devices_with_one_device_id_are_told_apart_from_a_broker_restart(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """Two devices given one device_id (a cloned SD card) share a client id: the broker closes each
    one's connection when the other's arrives, and both reconnect every second, forever. Each says
    so (log and health) instead of a stream of "disconnected"; a broker restart is not taken for it,
    and the suspicion clears once a connection holds."""
    import edge_agent.sinks.mqtt as mqtt_sink

    monkeypatch.setattr(mqtt_sink, "_SHORT_LIVED_S", 4.0)
    caplog.set_level(logging.INFO, logger="edge_agent.sinks.mqtt")
    cfg = broker.mqtt(protocol=protocol, client_id="edge-agent-twin", reconnect_max_s=1)
    one = sink_for(cfg, "twin")
    assert one.wait_connected(10)
    broker.stop()  # a restart: one drop, then the connection holds
    broker.start()
    wait_until(one.is_connected, 20, what="reconnect after the restart")
    assert one.taken_over is None and one.problems() == []
    two = sink_for(cfg, "twin")
    try:
        wait_until(lambda: one.taken_over is not None and two.taken_over is not None, 30,
                   what="both twins to say another client holds their client id")
        assert "edge-agent-twin" in str(one.taken_over) and "cloned SD card" in caplog.text
        assert any("in use elsewhere" in p for p in two.problems()), two.problems()
    finally:
        two.close(1)
    wait_until(lambda: one.taken_over is None, 20, what="the suspicion to clear once the connection holds")
    assert one.is_connected() and one.problems() == []
    one.close(1)


_LIMIT = 20_000


def _limited_broker(tmp_path: Path) -> Broker:
    """A mosquitto that takes packets of up to _LIMIT bytes and closes the connection of a client that
    sends a larger one (`max_packet_size`; AWS IoT Core's limit is 128 KB, a snapshot's default cap 150)."""
    port = free_port()
    conf = f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_packet_size {_LIMIT}\n"
    return Broker(tmp_path, conf, port).start()


def _sized(topic: str, packet: int, protocol: str) -> Message:
    """A QoS 1 message whose PUBLISH packet is `packet` bytes."""
    from edge_agent.sinks.mqtt import packet_size

    n = packet - packet_size(topic, 0, 1, protocol == "5")
    n -= packet_size(topic, n, 1, protocol == "5") - packet
    assert packet_size(topic, n, 1, protocol == "5") == packet
    return Message(topic, b"x" * n, qos=1)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_message_larger_than_the_broker_takes_is_dropped_not_resent_at_every_reconnect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """A broker closes the connection on a packet larger than it takes, and the outbox used to send
    that message again, first, at every reconnect: one snapshot over the broker's limit cut the device
    off for good (nothing after it ever arrived, the connection dropped every second). Under MQTT 5
    the broker names its limit when it accepts the connection, and nothing larger is sent; under 3.1.1
    the limit shows as the connection closed twice on the same packet. Either way that message is
    dropped, counted and said in health and the log, everything after it arrives, and a later one as
    large is dropped without costing a connection; a packet of exactly the limit goes through."""
    from edge_agent.outbox import Outbox
    from edge_agent.sinks.mqtt import Subscriber

    caplog.set_level(logging.INFO, logger="edge_agent.sinks.mqtt")
    b = _limited_broker(tmp_path)
    cfg = b.mqtt(protocol=protocol, reconnect_min_s=0.1, reconnect_max_s=0.5)
    sub = Subscriber(b.mqtt(), ["edge/dev1/#"])
    assert sub.start(10)
    # the retained state every connection begins with holds one too large as well (a snapshot)
    snapshot = _sized("edge/dev1/snapshot/cat", 3 * _LIMIT, protocol)
    s = MqttSink(cfg, "dev1", lambda: [snapshot] if protocol == "5" else [],
                 Outbox(tmp_path / "o.sqlite", 1000, "drop_oldest", 60))
    s.start()
    try:
        assert s.wait_connected(10)
        assert s.submit(_sized("edge/dev1/events", 2 * _LIMIT, protocol))
        for i in range(5):
            assert s.submit(Message("edge/dev1/predictions", str(i).encode(), qos=1))
        got: set[int] = set()  # at least once: those sent behind the large one come again, unacknowledged
        while len(got) < 5:
            got.add(collect(sub, lambda t, p, r: t.endswith("/predictions"), 30)[1])
        assert got == set(range(5))
        # those behind it may have arrived before the connection it was closed on the second time
        wait_until(lambda: s.drops["too_large"] == 1 + (protocol == "5"), 20, what="the large one dropped")
        assert s.stats()["max_packet_bytes"] == (_LIMIT if protocol == "5" else 2 * _LIMIT - 1)
        assert any("larger than the broker takes" in p and "edge/dev1/" in p for p in s.problems()), s.problems()
        wait_until(lambda: s.outbox is not None and s.outbox.depth() == 0 and not s.queue_depth(), 10,
                   what="the backlog to drain")
        connects = s.connects
        assert connects == 1 if protocol == "5" else connects >= 3  # 3.1.1: closed twice on it, then known
        if protocol == "3.1.1":
            assert caplog.text.count("closed the connection right after a packet of") == 1
        # a later one as large is dropped at once; one of exactly the broker's limit goes through
        assert s.submit(_sized("edge/dev1/events", 2 * _LIMIT + 10, protocol))
        edge = _sized("edge/dev1/edge", _LIMIT if protocol == "5" else 2 * _LIMIT - 1, protocol)
        if protocol == "3.1.1":  # what it learnt is above the broker's real limit: tell it that
            s._max_packet = _LIMIT
            edge = _sized("edge/dev1/edge", _LIMIT, protocol)
        assert s.submit(edge)
        assert s.submit(_sized("edge/dev1/over", _LIMIT + 1, protocol))
        assert s.submit(Message("edge/dev1/predictions", b"5", qos=1))
        seen: list[tuple[str, Any]] = []  # up to prediction 5 (after duplicates of 0-4 still on their way)
        while seen[-1:] != [("predictions", 5)]:
            topic, doc, _ = collect(sub, lambda t, p, r: t.endswith(("/edge", "/over", "/predictions")), 10)
            seen.append((topic.rsplit("/", 1)[1], doc if topic.endswith("/predictions") else None))
        assert ("edge", None) in seen and ("over", None) not in seen, seen
        assert s.connects == connects and s.is_connected()
        assert s.drops["too_large"] == 3 + (protocol == "5")
        assert caplog.text.count("larger than the broker takes") == 2 + (protocol == "5")  # once per topic
    finally:
        s.close(2)
        sub.stop()
        b.stop()


def test_check_connects_and_logs_in_and_names_the_broker_when_it_cannot(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "agent", "right"], check=True)
    port = free_port()
    b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n", port).start()
    base = ["check", "--source", "synthetic", "--model", str(SHORT), "--accelerator", "cpu"]
    env = {**b.env(), "EDGE_AGENT_MQTT__USERNAME": "agent"}
    try:
        good = run_cli(*base, env={**env, "EDGE_AGENT_MQTT__PASSWORD": "right"})
        assert good.returncode == 0, good.stdout + good.stderr
        assert json.loads(good.stdout)["broker"] == {"address": f"127.0.0.1:{port} as agent", "ok": True}
        # the link the connection went over: the broker is on this machine
        link = json.loads(good.stdout)["network"]
        assert (link["interface"], link["kind"], link["up"], link["signal_dbm"]) == ("lo", "loopback", True, None)
        bad = run_cli(*base, env={**env, "EDGE_AGENT_MQTT__PASSWORD": "wrong"})
        assert bad.returncode == 1
        problems = json.loads(bad.stdout)["problems"]
        assert len(problems) == 1 and problems[0].startswith(f"broker 127.0.0.1:{port} as agent: refused")
        assert "wrong" not in bad.stdout + bad.stderr  # the password is never shown
    finally:
        b.stop()
    gone = run_cli(*base, env=b.env())  # nothing listens there any more
    assert gone.returncode == 1 and f"broker 127.0.0.1:{port}: connection refused" in gone.stdout
    assert run_cli(*base, "--offline", env=b.env()).returncode == 0


def test_run_logs_a_missing_broker_at_once_and_then_periodically(tmp_path: Path, agent_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()  # no broker there
    agent = agent_factory(["run", "--model", str(SHORT), "--source", "synthetic", "--device-id", "nob"],
                          env={"EDGE_AGENT_MQTT__HOST": "127.0.0.1", "EDGE_AGENT_MQTT__PORT": str(port),
                               "EDGE_AGENT_MQTT__DOWN_LOG_S": "1", "EDGE_AGENT_MQTT__RECONNECT_MAX_S": "1"})
    line = f"mqtt: no broker at 127.0.0.1:{port}"
    wait_until(lambda: line in agent.log(), 20, what="the missing broker in the log")
    wait_until(lambda: agent.log().count(line) >= 3, 20, what="the missing broker said again while it stays away")
    assert "messages waiting in the outbox" in agent.log()


def _make_pki(d: Path, valid: str = "now", rfc5280: bool = True) -> tuple[Path, Path, Path, Path]:
    """A CA, a server certificate it signed for localhost and 127.0.0.1 (valid now; "expired": it ran
    out an hour ago; "later": from tomorrow, as a device whose clock is behind sees any), its key, and
    another CA that signed nothing of this. rfc5280: the CA names its key (Subject Key Identifier) and
    what it may sign (Key Usage), and the server certificate names the CA's key (Authority Key
    Identifier), as RFC 5280 asks and Python 3.13 checks by default; False: none of them, as a camera's
    own CA signs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if rfc5280:
        ca = ca.add_extension(ski, critical=False).add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    srv_key = key()
    srv = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
           .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now + datetime.timedelta(days=1 if valid == "later" else -2))
           .not_valid_after(now + datetime.timedelta(hours=-1 if valid == "expired" else 48))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False))
    if rfc5280:
        srv = srv.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    other_key = key()
    other = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(other_key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(other_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = d / "ca.pem", d / "server.pem", d / "server.key", d / "other-ca.pem"
    paths[0].write_bytes(ca.sign(ca_key, hashes.SHA256()).public_bytes(pem))
    paths[1].write_bytes(srv.sign(ca_key, hashes.SHA256()).public_bytes(pem))
    paths[2].write_bytes(srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths[3].write_bytes(other.public_bytes(pem))
    return paths


def test_tls_with_verification(tmp_path: Path) -> None:
    ca, cert, key, other_ca = _make_pki(tmp_path)
    port = free_port()
    conf = (f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    b = Broker(tmp_path, conf, port).start()
    try:
        ok = sink_for(MQTTConfig(host="127.0.0.1", port=port, tls=TLSConfig(ca_file=ca), protocol="5"))
        assert ok.wait_connected(10)
        ok.close(2)
        untrusted = sink_for(MQTTConfig(host="127.0.0.1", port=port, tls=TLSConfig(ca_file=other_ca)))
        assert not untrusted.wait_connected(3)
        untrusted.close(1)
    finally:
        b.stop()


def test_a_client_certificate_and_ca_renewed_on_disk_are_used_at_the_next_connection(tmp_path: Path) -> None:
    """Short-lived client certificates are renewed on disk by another program, and brokers move to a new
    CA. The files were read once, at start: the broker, back on the new CA, refused every connection
    after, until a restart. Now they are read again before a connection where they changed. A pair
    caught half written (a new certificate beside the old key) is not taken, and the next try is."""
    import shutil

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    ca1, cert1, key1, _ = _make_pki(old)
    ca2, cert2, key2, _ = _make_pki(new)
    mine = tmp_path / "agent"  # the agent's copies, which the renewal rewrites in place
    mine.mkdir()
    for src in (ca1, cert1, key1):
        shutil.copy(src, mine / src.name)
    port = free_port()

    def broker(ca: Path, cert: Path, key: Path) -> Broker:
        conf = (f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\n"
                f"keyfile {key}\nrequire_certificate true\n")
        return Broker(tmp_path, conf, port).start()

    b = broker(ca1, cert1, key1)
    tls = TLSConfig(ca_file=mine / "ca.pem", cert_file=mine / "server.pem", key_file=mine / "server.key")
    sink = sink_for(MQTTConfig(host="127.0.0.1", port=port, tls=tls, reconnect_min_s=0.5, reconnect_max_s=1))
    try:
        assert sink.wait_connected(10)
        b.stop()
        wait_until(lambda: not sink.is_connected(), 10, what="the broker gone")
        shutil.copy(cert2, mine / "server.pem")  # renewed: the new certificate is there, its key not yet
        b = broker(ca2, cert2, key2)  # the broker back, on the new CA only
        client = sink._client  # type: ignore[attr-defined]
        wait_until(lambda: "TLS: the broker's certificate is not trusted" in (client.last_connect_error or ""), 10,
                   what="a try with the pair half written, and the old CA")
        assert not sink.is_connected() and client.tls_files.reloads == 0
        shutil.copy(key2, mine / "server.key")
        shutil.copy(ca2, mine / "ca.pem")
        assert sink.wait_connected(20), client.last_connect_error
        assert client.tls_files.reloads == 1
    finally:
        sink.close(2)
        b.stop()


def test_tls_without_a_ca_file_trusts_the_systems_cas_and_a_client_certificate_turns_it_on(tmp_path: Path) -> None:
    """TLS was on only with `tls.ca_file`: a broker with a public certificate (a cloud broker) needed a
    CA file the system already has, and a client certificate without a CA file meant no TLS at all, the
    certificate unused and the password in clear text. Now a client certificate, or port 8883, turns
    TLS on, verified against the system's trusted CAs where no CA file is given (OpenSSL's default
    paths, which SSL_CERT_FILE names here); `tls.enabled` says it outright."""
    ca, cert, key, other_ca = _make_pki(tmp_path)
    port = free_port()
    conf = (f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
            "require_certificate true\n")
    b = Broker(tmp_path, conf, port).start()
    try:
        base = ["check", "--source", "synthetic", "--model", str(SHORT), "--accelerator", "cpu"]
        mutual = {**b.env(), "EDGE_AGENT_MQTT__TLS__CERT_FILE": str(cert), "EDGE_AGENT_MQTT__TLS__KEY_FILE": str(key)}
        ok = run_cli(*base, env={**mutual, "SSL_CERT_FILE": str(ca)})
        assert ok.returncode == 0, ok.stdout + ok.stderr
        other = run_cli(*base, env={**mutual, "SSL_CERT_FILE": str(other_ca)})
        assert other.returncode == 1 and "TLS: the broker's certificate is not trusted" in other.stdout, other.stdout
        off = run_cli(*base, env={**mutual, "EDGE_AGENT_MQTT__TLS__ENABLED": "false"})
        assert off.returncode == 2 and "tls.enabled is false while a TLS file is set" in off.stderr, off.stderr
    finally:
        b.stop()
    assert TLSConfig().on(8883) and not TLSConfig().on(1883) and TLSConfig(enabled=True).on(1883)
    assert not TLSConfig(enabled=False).on(8883)


def test_a_password_sent_in_clear_text_over_a_network_is_said(caplog: pytest.LogCaptureFixture) -> None:
    """A broker password over plain MQTT to another host crosses the network readable by anyone on
    it; the agent did so without a word. It now says so once as it starts; not to this machine's own
    broker, nor over TLS."""
    cases = {
        "broker.example": MQTTConfig(host="broker.example", username="cam", password="pw"),
        "127.0.0.1": MQTTConfig(host="127.0.0.1", username="cam", password="pw"),
        "tls": MQTTConfig(host="broker.example", port=8883, username="cam", password="pw"),
        "no password": MQTTConfig(host="broker.example", username="cam"),
    }
    said = {}
    for name, cfg in cases.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edge_agent.sinks.mqtt"):
            MqttSink(cfg, "dev1")
        said[name] = "in clear text" in caplog.text
    assert said == {"broker.example": True, "127.0.0.1": False, "tls": False, "no password": False}, said


class _CommandLine:
    """An agent's sink subscribed to its command topic, and another client that sends there."""

    def __init__(self, broker: Broker, **mqtt: Any) -> None:
        import queue as queue_mod

        from edge_agent.sinks.base import Inbound

        self.inbox: queue_mod.Queue[Inbound] = queue_mod.Queue()
        self.sink = MqttSink(broker.mqtt(**mqtt), "dev1", subscriptions=["edge/dev1/cmd"], inbox=self.inbox)
        self.pub = MqttSink(broker.mqtt(protocol=mqtt.get("protocol", "3.1.1")), "sender")

    def __enter__(self) -> _CommandLine:
        self.sink.start()
        assert self.sink.wait_connected(10)
        self.pub.start()
        assert self.pub.wait_connected(10)
        self.wait_subscribed()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pub.close(2)
        self.sink.close(2)

    def send(self, payload: bytes) -> None:
        self.pub.submit(Message("edge/dev1/cmd", payload, qos=1))

    def wait_subscribed(self) -> None:
        """Until a message of its own comes through: the sink's subscription stands."""
        import queue as queue_mod

        def through() -> bool:
            self.send(b"probe")
            try:
                return self.inbox.get(timeout=0.5).payload == b"probe"
            except queue_mod.Empty:
                return False

        wait_until(through, 10, what="the agent's subscription")

    def next_taken(self) -> bytes:
        """The next message taken in that is not a probe (one sent twice while the first was on its way)."""
        got = self.inbox.get(timeout=10)
        while got.payload == b"probe":
            got = self.inbox.get(timeout=10)
        return got.payload


def test_under_mqtt_5_the_broker_keeps_what_is_too_large_for_the_agent(broker: Broker) -> None:
    """Anyone allowed to publish on a topic the agent subscribes to could send it a message of up to
    256 MB (mosquitto's default), which paho reads whole into memory before the agent can refuse it.
    Under MQTT 5 the agent says in its CONNECT the largest packet it takes (MAX_INBOUND_BYTES: a model
    chunk is at most 1 MiB), and the broker drops a larger one instead of sending it."""
    from edge_agent.sinks.mqtt import MAX_INBOUND_BYTES

    with _CommandLine(broker, protocol="5") as line:
        line.send(b"x" * (MAX_INBOUND_BYTES + 1))
        line.send(b'{"id": "1", "command": "ping"}')
        got = line.next_taken()
        assert got.startswith(b'{"id": "1"'), len(got)  # the large one never came


def test_under_mqtt_3_1_1_a_message_too_large_for_the_agent_is_dropped_unread(broker: Broker) -> None:
    """MQTT 3.1.1 cannot tell the broker the largest packet the agent takes, and paho read whatever came,
    whole, into memory (on a board of 1 GB, a message of up to 256 MB from anyone allowed to publish on a
    topic it subscribes to). A message whose header declares more than MAX_INBOUND_BYTES is read past
    as it comes, none of it kept, and acknowledged; the connection stays up and the next message is
    taken. The drop is counted and said in health, with the topic. Ending the connection on it instead
    made such a message kept retained end every connection, at every subscribe: the agent never stayed
    connected (two agents in a row here, the second subscribing to the message kept)."""
    from edge_agent.sinks.mqtt import MAX_INBOUND_BYTES

    with _CommandLine(broker, reconnect_min_s=0.2, reconnect_max_s=1) as line:
        s = line.sink
        line.send(b"x" * MAX_INBOUND_BYTES)
        wait_until(lambda: s.drops["inbound_too_large"] == 1, 20, what="the large message dropped")
        line.send(b'{"id": "1", "command": "ping"}')
        got = line.next_taken()
        assert got.startswith(b'{"id": "1"'), len(got)  # the large one never came
        assert s.connects == 1 and s.is_connected()
        assert s.refused_inbound is not None and s.refused_inbound > MAX_INBOUND_BYTES
        assert any("larger than the agent takes" in p and "on edge/dev1/cmd" in p for p in s.problems()), s.problems()
        assert s.taken_over is None
        line.pub.submit(Message("edge/dev1/cmd", b"y" * MAX_INBOUND_BYTES, qos=1, retain=True))
        wait_until(lambda: s.drops["inbound_too_large"] == 2, 20, what="the large message kept, dropped")
    try:
        with _CommandLine(broker, reconnect_min_s=0.2, reconnect_max_s=1) as again:  # subscribes to it, kept
            wait_until(lambda: again.sink.drops["inbound_too_large"] == 1, 20, what="the kept message dropped")
            again.send(b'{"id": "2", "command": "ping"}')
            assert again.next_taken().startswith(b'{"id": "2"')
            assert again.sink.connects == 1 and again.sink.is_connected()
    finally:
        with _CommandLine(broker) as clear:  # the retained message goes, for whatever runs on this broker next
            clear.pub.submit(Message("edge/dev1/cmd", b"", qos=1, retain=True))
            clear.wait_subscribed()


def test_why_a_broker_cannot_be_reached_is_said_in_check_and_the_log(tmp_path: Path) -> None:
    """A broker whose certificate has expired, a CA file for another broker, a device clock not set yet,
    a host name DNS does not know: each used to read "connection refused or host unreachable" in
    `check`, in the log and in health, the one thing none of them is. Each now says what it is."""
    from edge_agent.sinks.mqtt import probe_broker

    ca, cert, key, other_ca = _make_pki(tmp_path)
    (tmp_path / "old").mkdir()
    (tmp_path / "later").mkdir()
    old_ca, old_cert, old_key, _ = _make_pki(tmp_path / "old", valid="expired")
    later_ca, later_cert, later_key, _ = _make_pki(tmp_path / "later", valid="later")
    brokers = []
    for c, k in ((cert, key), (old_cert, old_key), (later_cert, later_key)):
        port = free_port()
        conf = f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {c}\nkeyfile {k}\n"
        brokers.append(Broker(tmp_path, conf, port).start())
    good, old, later = brokers
    try:
        base = ["check", "--source", "synthetic", "--model", str(SHORT), "--accelerator", "cpu"]
        other = run_cli(*base, env={**good.env(), "EDGE_AGENT_MQTT__TLS__CA_FILE": str(other_ca)})
        assert other.returncode == 1
        (problem,) = json.loads(other.stdout)["problems"]
        said = f"broker 127.0.0.1:{good.port}: TLS: the broker's certificate is not trusted ("
        assert problem.startswith(said), problem
        assert "certificate has expired" in str(probe_broker(old.mqtt(tls=TLSConfig(ca_file=old_ca))))
        # a board without a real-time clock, before NTP has set it: every certificate is from its future
        early = str(probe_broker(later.mqtt(tls=TLSConfig(ca_file=later_ca))))
        assert "certificate is not yet valid) by this device's clock" in early, early
        assert probe_broker(good.mqtt(tls=TLSConfig(ca_file=ca))) is None
        unknown = probe_broker(MQTTConfig(host="no-such-host.invalid"))
        assert str(unknown).startswith("cannot resolve the host name"), unknown
        # the running agent's sink: in its state, and so in the log and health
        s = sink_for(old.mqtt(tls=TLSConfig(ca_file=old_ca), reconnect_max_s=1))
        try:
            wait_until(lambda: "certificate has expired" in str(s.last_error), 10, what="the sink to say why")
            assert not s.is_connected()
        finally:
            s.close(1)
    finally:
        for b in brokers:
            b.stop()


def test_a_tls_port_and_a_plain_one_mixed_up_are_said_either_way(tmp_path: Path, broker: Broker) -> None:
    """A broker's TLS port reached without TLS closes the connection unanswered: `check` waited out its 5 s
    and said "no answer", and the log named a will or retained messages, never TLS. A TLS client at a plain
    port read "Connection reset by peer". Both now say the likely cause, and `check` says it at once."""
    from edge_agent.sinks.mqtt import probe_broker

    ca, cert, key, _ = _make_pki(tmp_path)
    port = free_port()
    conf = f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    tls = Broker(tmp_path, conf, port).start()
    try:
        plain_at_tls = str(probe_broker(MQTTConfig(host="127.0.0.1", port=port)))
        assert "closed the connection before accepting it" in plain_at_tls, plain_at_tls
        assert "a port that speaks only TLS does so too (then set mqtt.tls.enabled = true)" in plain_at_tls
        tls_at_plain = str(probe_broker(broker.mqtt(tls=TLSConfig(enabled=True, ca_file=ca))))
        assert "(a TLS client at a port that does not speak TLS?)" in tls_at_plain, tls_at_plain
        # the right way round: no hint, and connected
        assert probe_broker(MQTTConfig(host="127.0.0.1", port=port, tls=TLSConfig(ca_file=ca))) is None
        for cfg, said in ((MQTTConfig(host="127.0.0.1", port=port, reconnect_max_s=1), "mqtt.tls.enabled = true"),
                          (broker.mqtt(tls=TLSConfig(enabled=True, ca_file=ca), reconnect_max_s=1),
                           "a TLS client at a port that does not speak TLS")):
            s = sink_for(cfg)
            try:
                wait_until(lambda s=s, said=said: said in str(s.last_error), 10, what=said)
                assert not s.is_connected()
            finally:
                s.close(1)
    finally:
        tls.stop()


def test_results_lost_lately_are_said_in_health(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drops that lose a result (the queue full, no broker and no outbox) were counted since start in
    health's broker section, while its status said "ok" and its problems nothing: predictions stopped
    for a minute read as a healthy device. Losses now make a problem while they are recent."""
    import edge_agent.sinks.mqtt as mqtt_sink

    monkeypatch.setattr(mqtt_sink, "_LOSS_WINDOW_S", 0.2)
    s = MqttSink(MQTTConfig(queue_size=5), "dev1")  # never started: nothing takes from its queue
    assert s.problems() == []
    for i in range(12):
        s.submit(Message("edge/dev1/predictions", str(i).encode(), qos=1))
    s.submit_latest(Message("edge/dev1/health", b"{}", qos=0))
    s.submit_latest(Message("edge/dev1/health", b"{}", qos=0))  # one superseded: no loss
    assert s.problems() == ["results lost in the last minute or two: 7 (broker_down 7)"]
    wait_until(lambda: s.problems() == [], 5, what="the losses to age out")


def test_mqtt5_and_paused_broker_never_block_submit(broker: Broker) -> None:
    s = sink_for(broker.mqtt(protocol="5", keepalive_s=5, queue_size=100))
    try:
        assert s.wait_connected(10)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)  # TCP stays up, nothing answers
        t0 = time.monotonic()
        for i in range(500):
            s.submit(Message("edge/dev1/predictions", str(i).encode(), qos=1))
        assert time.monotonic() - t0 < 0.5
        assert s.queue_depth() <= 100 + 64
    finally:
        if broker.proc is not None:
            broker.proc.send_signal(signal.SIGCONT)
        s.close(2)


def test_stale_will_after_a_fast_restart_is_undone(broker: Broker, subscriber_factory) -> None:  # type: ignore[no-untyped-def]
    s = sink_for(broker.mqtt())
    try:
        assert s.wait_connected(10)
        sub = subscriber_factory(["edge/dev1/availability"])
        collect(sub, lambda t, p, r: p == "online", 5)
        # the Will of the previous, killed session lands after this session's birth
        sub.publish("edge/dev1/availability", b"offline", qos=1, retain=True)
        collect(sub, lambda t, p, r: p == "offline", 5)
        collect(sub, lambda t, p, r: p == "online", 5)
        assert s.availability_restored == 1
        late = subscriber_factory(["edge/dev1/availability"])
        assert collect(late, lambda t, p, r: True, 5)[1:] == ("online", True)
    finally:
        s.close(2)


def test_the_documented_acl_confines_devices_to_their_own_topics(tmp_path: Path) -> None:
    from edge_agent.sinks.mqtt import Subscriber

    from .conftest import ROOT

    readme = (ROOT / "docs" / "systemd-and-security.md").read_text()
    acl_text = readme.split("# /etc/mosquitto/acl", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    acl = tmp_path / "acl"
    acl.write_text(acl_text)
    pw = tmp_path / "passwd"
    for i, user in enumerate(("dev1", "dev2", "fleet")):
        subprocess.run(["mosquitto_passwd", "-b", *([] if i else ["-c"]), str(pw), user, f"{user}-pw"], check=True)
    port = free_port()
    b = Broker(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\nacl_file {acl}\n",
               port).start()

    def client(user: str, topics: list[str]) -> Subscriber:
        c = Subscriber(MQTTConfig(host="127.0.0.1", port=port, username=user, password=f"{user}-pw"), topics,
                       client_id=f"acl-{user}")
        assert c.start(10)
        return c

    try:
        fleet = client("fleet", ["edge/#"])
        dev1 = client("dev1", ["edge/dev1/cmd", "edge/dev2/predictions"])
        dev2 = client("dev2", ["edge/dev2/cmd"])
        dev1.publish("edge/dev2/predictions", b"forged")  # not its prefix: dropped by the broker
        dev1.publish("edge/dev1/predictions", b"mine")
        assert collect(fleet, lambda t, p, r: True, 5)[:2] == ("edge/dev1/predictions", "mine")
        dev2.publish("edge/dev1/cmd", b"not yours")  # a device cannot command another
        fleet.publish("edge/dev1/cmd", b"from fleet")
        assert collect(dev1, lambda t, p, r: True, 5)[:2] == ("edge/dev1/cmd", "from fleet")
        assert dev1.get(0.5) is None
        seen = [fleet.get(0.2) for _ in range(5)]
        assert not any(m and m[1] in (b"forged", b"not yours") for m in seen)
        for c in (fleet, dev1, dev2):
            c.stop()
    finally:
        b.stop()


def test_a_refused_configuration_is_said_on_the_broker_until_a_start_takes_one(broker: Broker,
                                                                                tmp_path: Path) -> None:
    """`run` exits 2 on a configuration it refuses, and systemd does not start it again: a device in the
    field would go quiet with its reason in a journal nobody reads. Its broker is told: `availability`
    offline, and the retained `info` carries `config_error`, the text `run` printed. A start that takes
    its configuration republishes `info` without it."""
    from edge_agent.sinks.mqtt import Subscriber

    def retained() -> dict[str, bytes]:
        sub = Subscriber(broker.mqtt(), ["edge/told/#"])
        assert sub.start(10)
        got: dict[str, bytes] = {}
        try:
            while len(got) < 2 and (m := sub.get(5.0)) is not None:  # both are retained: they come at once
                got[m[0]] = m[1]
        finally:
            sub.stop()
        return got

    cfg = tmp_path / "agent.toml"
    cfg.write_text('device_id = "told"\n[source]\nuri = "0"\nrealtime = false\n')  # a camera, paced as a file
    r = run_cli("run", "--config", str(cfg), env=broker.env())
    assert r.returncode == 2 and "was not told" not in r.stderr, r.stderr
    got = retained()
    assert got["edge/told/availability"] == b"offline"
    info = json.loads(got["edge/told/info"])
    assert info["config_error"] == r.stderr.split("invalid configuration:\n", 1)[1].strip()
    assert info["config_error"].startswith("source.realtime: source '0' is of the camera kind, which never reads it")
    assert info["device_id"] == "told" and info["agent_version"] and info["model"] is None
    fleet = run_cli("fleet", "status", "--wait", "1.5", env=broker.env())
    row = next(ln for ln in fleet.stdout.splitlines() if ln.startswith("told "))
    assert row.split()[1] == "offline" and row.split()[-1] == "refused", fleet.stdout
    assert "  configuration refused: source.realtime: source '0' is of the camera kind" in fleet.stdout
    # refused once the model is loaded (a label the model never produces): said the same way
    cfg.write_text(f'device_id = "told"\n[source]\nuri = "synthetic"\n[model]\npath = "{SHORT}"\n'
                   '[scene]\nenabled = true\nlabels = ["car"]\n')
    r = run_cli("run", "--config", str(cfg), env=broker.env())
    assert r.returncode == 2 and "'car'" in r.stderr, r.stderr
    assert "'car'" in json.loads(retained()["edge/told/info"])["config_error"]
    # a configuration it takes: info again as a running agent publishes it
    cfg.write_text(f'device_id = "told"\n[source]\nuri = "synthetic"\nfps = 5\n[model]\npath = "{SHORT}"\n')
    r = run_cli("run", "--config", str(cfg), "--seconds", "2", env=broker.env())
    assert r.returncode == 0, r.stderr
    info = json.loads(retained()["edge/told/info"])
    assert "config_error" not in info and info["model"]["name"] == "face_detection_short_range"


def test_any_label_makes_a_topic_the_broker_takes(broker: Broker) -> None:
    """A label becomes a topic level (`snapshot/{label}`, `zones/{zone}/{label}`), and a label is any text
    a labels file or a model's metadata holds. Whatever it is, the topic is one the broker takes: a
    character no topic may hold made mosquitto close the connection at each publish, and a label past
    65,535 bytes made paho raise at each one. Hypothesis draws the labels, with the hard ones named;
    each topic is published to a real mosquitto and must come back unchanged on one connection."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    from edge_agent.sinks.mqtt import Subscriber
    from edge_agent.topics import LEVEL_CHARS, Topics, level

    sub = Subscriber(broker.mqtt(), ["edge/lab/snapshot/#"], client_id="label-topics")
    assert sub.start(10)
    sink = sink_for(broker.mqtt(), "lab")
    assert sink.wait_connected(10)
    topics = Topics("edge", "lab")
    try:
        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.text(min_size=0, max_size=300))
        @example("fa\x01ce")
        @example("nul\x00here")
        @example("c1\x85 del\x7f")
        @example("non\ufffe\U0010ffffchar\ufdd0")
        @example("cat/dog+#")
        @example("\U0001f431 猫")
        @example("f" * 70_000)
        @example("")
        def one(label: str) -> None:
            topic = topics.snapshot(None, label)
            assert len(level(label)) <= LEVEL_CHARS and len(topic.encode()) < 65_536
            sink.submit_latest(Message(topic, b"x", qos=1))
            got = None
            deadline = time.monotonic() + 10
            while got is None and time.monotonic() < deadline:
                m = sub.get(0.1)
                if m is not None and m[0] == topic:
                    got = m
            assert got is not None, (label, topic)

        one()
        assert sink.connects == 1, sink.stats()
    finally:
        sink.close(2)
        sub.stop()
