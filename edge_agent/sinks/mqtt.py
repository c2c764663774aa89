"""MQTT: the only module that imports paho-mqtt.

Publishing never blocks the pipeline: `submit()` puts on a bounded queue and says whether it
fit; a publisher thread owns every call into paho. Paho's callbacks only enqueue events.
On each (re)connect, after a CONNACK that accepted us, the birth message and retained state
are published again, because a broker restart or a persistent-session loss erases them.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.config import MQTTConfig
from edge_agent.sinks.base import Message, Sink

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
#: Availability is always QoS 1: a lost 'online' would leave the device shown as dead.
AVAILABILITY_QOS = 1
#: Publishes handed to paho per wake-up, so a backlog cannot starve health and events.
_BATCH = 64
#: In-flight QoS>0 messages paho may hold; mosquitto's default receive maximum is 20..65535.
_MAX_INFLIGHT = 100
_IDLE_WAIT_S = 0.5


def topic_base(cfg: MQTTConfig, device_id: str) -> str:
    return f"{cfg.topic_prefix}/{device_id}"


def _make_client(cfg: MQTTConfig, client_id: str) -> paho.Client:
    proto = paho.MQTTv5 if cfg.protocol == "5" else paho.MQTTv311
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
    if cfg.tls.ca_file is not None:
        client.tls_set(
            ca_certs=str(cfg.tls.ca_file),
            certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
            keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(cfg.tls.insecure)
    client.reconnect_delay_set(min_delay=max(1, int(cfg.reconnect_min_s)), max_delay=max(1, int(cfg.reconnect_max_s)))
    return client


@dataclass
class _Event:
    kind: str  # connected | refused | disconnected
    detail: str = ""


class MqttSink(Sink):
    name = "mqtt"

    def __init__(self, cfg: MQTTConfig, device_id: str, retained_state: Callable[[], list[Message]] | None = None):
        self.cfg = cfg
        self.base = topic_base(cfg, device_id)
        self.availability_topic = f"{self.base}/availability"
        self.client_id = cfg.client_id or f"edge-agent-{device_id}"
        self.retained_state = retained_state or (lambda: [])
        self._q: queue.Queue[Message] = queue.Queue(maxsize=cfg.queue_size)
        self._latest: dict[str, Message] = {}
        self._latest_lock = threading.Lock()
        self._retry: deque[Message] = deque()
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._inflight: deque[Any] = deque()
        self.state = "disconnected"
        self.drops: Counter[str] = Counter()
        self.sent = 0
        self.connects = 0
        self.last_error: str | None = None
        self.heartbeat = time.monotonic()
        self._thread: threading.Thread | None = None
        self._client = _make_client(cfg, self.client_id)
        self._client.will_set(self.availability_topic, OFFLINE, qos=AVAILABILITY_QOS, retain=True)
        self._client.max_inflight_messages_set(_MAX_INFLIGHT)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    # --- paho callbacks: enqueue only ---------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._events.put(_Event("refused", str(reason_code)))
        else:
            self._events.put(_Event("connected"))
        self._wake.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._events.put(_Event("disconnected", str(reason_code)))
        self._wake.set()

    # --- public API ----------------------------------------------------------------------------
    def start(self) -> None:
        self.state = "connecting"
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def submit(self, msg: Message) -> bool:
        try:
            self._q.put_nowait(msg)
        except queue.Full:
            self.drops["queue_full" if self._connected.is_set() else "broker_down"] += 1
            return False
        self._wake.set()
        return True

    def submit_latest(self, msg: Message) -> None:
        """Keep only the newest message per topic (health): never queued behind a backlog."""
        with self._latest_lock:
            if msg.topic in self._latest:
                self.drops["superseded"] += 1
            self._latest[msg.topic] = msg
        self._wake.set()

    def queue_depth(self) -> int:
        return self._q.qsize() + len(self._retry)

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def is_healthy(self) -> bool:
        return self._connected.is_set() and self._q.qsize() < self._q.maxsize

    def flush(self, timeout: float) -> bool:
        """Wait until queued messages are handed to the broker (QoS>0: acknowledged)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._prune_inflight()
            if self.queue_depth() == 0 and not self._latest and not self._inflight:
                return True
            if not self._connected.is_set():
                return False
            self._wake.set()
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Publish 'offline' (retained), then disconnect cleanly so the Will is not sent."""
        flushed = self.flush(timeout / 2) if self._connected.is_set() else False
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout / 4)
        if self._connected.is_set():
            info = self._client.publish(self.availability_topic, OFFLINE, qos=AVAILABILITY_QOS, retain=True)
            try:
                info.wait_for_publish(timeout / 4)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self.state = "closed"
        if not flushed and self.queue_depth():
            self.drops["shutdown"] += self.queue_depth()

    def stats(self) -> dict[str, object]:
        return {
            "state": self.state,
            "host": self.cfg.host,
            "port": self.cfg.port,
            "connects": self.connects,
            "queue_depth": self.queue_depth(),
            "queue_size": self.cfg.queue_size,
            "sent": self.sent,
            "drops": dict(self.drops),
            "last_error": self.last_error,
        }

    # --- publisher thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_IDLE_WAIT_S)
            self._wake.clear()
            self.heartbeat = time.monotonic()
            try:
                self._handle_events()
                if self._connected.is_set():
                    self._publish_some()
            except Exception as err:  # loop boundary: log, count, keep publishing
                self.last_error = f"{type(err).__name__}: {err}"
                self.drops["error"] += 1
                log.exception("mqtt publisher error")

    def _handle_events(self) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            if ev.kind == "connected":
                self.connects += 1
                self.state = "connected"
                log.info("mqtt connected to %s:%s", self.cfg.host, self.cfg.port)
                self._publish_birth()
                self._connected.set()
            elif ev.kind == "refused":
                if self.state != "refused":  # paho retries with backoff; say it once
                    log.error("mqtt: broker refused connection: %s", ev.detail)
                self.state = "refused"
                self.last_error = f"broker refused connection: {ev.detail}"
                self._connected.clear()
            else:
                if self._connected.is_set():
                    log.warning("mqtt disconnected: %s", ev.detail)
                if self.state != "refused":  # the drop after a refusal is not news
                    self.state = "disconnected"
                    self.last_error = f"disconnected: {ev.detail}"
                self._connected.clear()

    def _publish_birth(self) -> None:
        self._client.publish(self.availability_topic, ONLINE, qos=AVAILABILITY_QOS, retain=True)
        for m in self.retained_state():
            self._client.publish(m.topic, m.payload, qos=m.qos, retain=True)

    def _prune_inflight(self) -> None:
        while self._inflight and self._inflight[0].is_published():
            self._inflight.popleft()

    def _publish_some(self) -> None:
        with self._latest_lock:
            latest, self._latest = self._latest, {}
        pending = list(latest.values())
        for _ in range(_BATCH):
            if self._retry:
                pending.append(self._retry.popleft())
                continue
            try:
                pending.append(self._q.get_nowait())
            except queue.Empty:
                break
        for i, m in enumerate(pending):
            info = self._client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.sent += 1
                if m.qos:
                    self._inflight.append(info)
                continue
            # not connected any more, or paho's own queue is full: keep order, try after reconnect
            self._retry.extendleft(reversed(pending[i:]))
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                self._connected.clear()
            break
        self._prune_inflight()
        if self._q.qsize() or self._retry:
            self._wake.set()


class Subscriber:
    """A plain subscriber for `edge-agent listen` and the tests: callbacks enqueue, callers read."""

    def __init__(self, cfg: MQTTConfig, topics: list[str], client_id: str | None = None):
        self.cfg = cfg
        self.topics = topics
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.subscribed = threading.Event()
        self._client = _make_client(cfg, client_id or f"edge-agent-listen-{time.monotonic_ns()}")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reason_codes: Any, properties: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.messages.put((msg.topic, msg.payload, bool(msg.retain)))

    def start(self, timeout: float = 10.0) -> bool:
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        return self.subscribed.wait(timeout)

    def get(self, timeout: float) -> tuple[str, bytes, bool] | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
