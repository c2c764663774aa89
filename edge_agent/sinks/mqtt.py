"""MQTT: the only module that imports paho-mqtt.

Publishing never blocks the pipeline: `submit()` puts on a bounded queue and says whether it
fit; a publisher thread owns every call into paho. Paho's callbacks only enqueue events.
On each (re)connect, after a CONNACK that accepted us, the birth message and retained state
are published again, because a broker restart or a persistent-session loss erases them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent import outbox as outbox_store  # a module: importable from either end of the cycle
from edge_agent.config import MQTTConfig
from edge_agent.sinks.base import Inbound, Message, Sink, SinkContext
from edge_agent.topics import Topics, device_base
from edge_agent.untrusted import log_now, plain

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
#: Availability is always QoS 1: a lost 'online' would leave the device shown as dead.
AVAILABILITY_QOS = 1
#: Publishes handed to paho per wake-up, so a backlog cannot starve health and events.
_BATCH = 64
#: In-flight QoS>0 messages paho may hold; mosquitto's default receive maximum is 20..65535.
_MAX_INFLIGHT = 100
#: Messages paho may hold beyond in-flight ones; past that, publish() refuses and we spill to the
#: outbox instead of letting paho's own queue grow without bound on a hung connection.
_MAX_QUEUED = 1000
_IDLE_WAIT_S = 0.5
#: A connection the broker closes sooner than this after accepting it, for a reason other than a
#: missed keepalive, counts towards "taken over"; one that lasts longer clears the count.
_SHORT_LIVED_S = 10.0
#: Short-lived connections in a row that mean another client holds this client id.
_TAKEN_OVER_AFTER = 3
#: Loop period while a backlog is being replayed (the rate limit is applied per tick).
_REPLAY_TICK_S = 0.02
#: Topics of QoS > 0 messages sent, by message id, kept for the acknowledgements that come back.
_MIDS_KEPT = 4096
#: A topic the broker refused a publish on (MQTT 5) is a problem in health this long after the last refusal.
_REFUSED_FOR_S = 600.0
#: Under MQTT 3.1.1, a connection whose own retained `online` has not come back on the agent's
#: subscription to it this long after the birth: the broker drops what this client publishes.
_ECHO_S = 10.0
#: The most topics whose refusals are kept (and logged): past them, refusals are only counted.
_REFUSED_TOPICS = 16
#: Drops that lose a result for good (not a health document superseded by a newer one), and how long
#: ago one may have been for health to say so.
_LOSSES = ("queue_full", "broker_down", "error", "shutdown")
#: Why a connection the broker closed before answering CONNECT was refused, where MQTT 3.1.1 gives it no
#: way to say (mosquitto with `retain_available false` does so to a client with a retained will: the
#: agent's), rather than "Unspecified error" forever.
_UNACCEPTED = (
    "the broker closed the connection before accepting it ({}): under MQTT 3.1.1 a broker refuses so "
    "without a reason (a client id, a will or retained messages it does not allow); "
    'with mqtt.protocol = "5" it says why'
)
#: ... added where the agent does not speak TLS: a port that speaks only TLS closes a plain CONNECT unanswered.
_PLAIN_AT_TLS = "; a port that speaks only TLS does so too (then set mqtt.tls.enabled = true)"
#: Said of a TLS handshake the other end cut: a port that does not speak TLS (a broker's plain port reads
#: the handshake as a malformed CONNECT and closes the connection).
_TLS_AT_PLAIN = " (a TLS client at a port that does not speak TLS?)"
_LOSS_WINDOW_S = 60.0
#: Connections closed unanswered in a row, with a retained Will, after which one without is tried (MQTT
#: 3.1.1, where a broker that keeps no retained messages cannot say so): and as many more, after which
#: the retained Will is back, and not tried without again.
_UNANSWERED_TRY = 2
#: The smallest packet size a broker's limit is ever learnt from (MQTT 3.1.1, where it cannot say it): the
#: agent's own documents (info, predictions, events) stay under it, so a broker that restarts again and again
#: while one of them is being resent is never taken for one that refuses it.
_LEARN_FLOOR = 16 * 1024
#: The largest packet the agent takes from the broker, said in an MQTT 5 CONNECT: a model chunk is at
#: most 1 MiB, a command 64 KiB, anything else a few KiB. Anyone allowed to publish on a topic the
#: agent subscribes to could send it up to 256 MB (mosquitto's default), read whole into memory.
MAX_INBOUND_BYTES = 4 << 20


def packet_size(topic: str, payload_len: int, qos: int, v5: bool) -> int:
    """Bytes of the PUBLISH packet that carries a message, as a broker's maximum packet size counts
    them: the fixed header (its remaining length a 1-4 byte varint), the topic with its length, the
    packet id (QoS > 0), the properties' length (MQTT 5, none set) and the payload."""
    rest = 2 + len(topic.encode("utf-8")) + (2 if qos else 0) + (1 if v5 else 0) + payload_len
    varint = 1 if rest < 128 else 2 if rest < 16_384 else 3 if rest < 2_097_152 else 4
    return 1 + varint + rest


def _no_delay(client: paho.Client) -> None:
    """Small messages go out at once: Nagle's algorithm can hold one back ~40 ms for an ACK."""
    setsockopt = getattr(client.socket(), "setsockopt", None)
    if setsockopt is not None:
        try:
            setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _forget_unsent(client: paho.Client) -> None:
    """Drop the QoS > 0 messages paho holds unacknowledged, which it would send again, as they are,
    as soon as it reconnects. The outbox holds its own copies and sends them through `_fits`: a
    packet the broker closed the connection on would otherwise be resent by paho at every reconnect,
    past any check. Paho has no public call for this; its attributes are looked up, so a paho that
    renames them leaves its resending as it was (consumers drop duplicates by boot_id + seq)."""
    lock, held = getattr(client, "_out_message_mutex", None), getattr(client, "_out_messages", None)
    if lock is None or held is None or not hasattr(held, "clear"):
        return
    with lock:
        held.clear()
        client._inflight_messages = 0


def topic_base(cfg: MQTTConfig, device_id: str) -> str:
    return device_base(cfg.topic_prefix, device_id)


#: Said where no connection attempt has told why it failed.
_UNREACHABLE = "connection refused or host unreachable"


def _loopback(host: str) -> bool:
    """Whether `host` is this machine: a password sent there in clear text crosses no network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def why_unreachable(err: OSError, tls: bool = False) -> str:
    """What a failed connection attempt's error means, in the words a user acts on: a broker whose TLS
    certificate has expired or names another host, a CA file for another broker, a host name DNS does
    not know, nothing listening on the port, a TLS client at a plain port (`tls`: the attempt spoke TLS;
    a handshake cut by the other end, mostly that)."""
    if tls and isinstance(err, (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return f"{err.strerror or err}{_TLS_AT_PLAIN}"
    if isinstance(err, ssl.SSLCertVerificationError):
        said = str(err.verify_message)
        # a board without a real-time clock starts with the time it last saved, or 1970, until NTP sets it
        clock = " by this device's clock, which may not be set yet" if "not yet valid" in said else ""
        return f"TLS: the broker's certificate is not trusted ({said}){clock}"
    if isinstance(err, ssl.SSLError):
        hint = _TLS_AT_PLAIN if err.reason == "WRONG_VERSION_NUMBER" else ""
        return f"TLS: {err.reason or err}{hint}"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the host name ({err.strerror})"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(err, TimeoutError):
        return "no answer (timed out)"
    return err.strerror or str(err) or type(err).__name__


class _ReadPast(Exception):
    """A message from the broker larger than the client takes: its body is read past, not kept."""


@dataclass
class _Skip:
    """A message from the broker being read past: its fixed header's first byte (type and QoS), the bytes
    of it still to come, its size, and its first bytes (topic and packet id, for the acknowledgement)."""

    command: int
    left: int
    size: int
    head: bytearray


#: The first bytes of a message read past that are kept: the topic (at most 65,535 bytes) and packet id.
_HEAD_KEPT = 2 + 65_535 + 2
#: Reads of a message read past before paho's loop gets its turn (as paho's own read of a packet does).
_SKIP_READS = 100


class _Client(paho.Client):
    """Paho's client, keeping why its latest connection attempt failed (its `on_connect_fail` is told
    only that one did, so a broker whose certificate expired read "connection refused or host
    unreachable" in the log and in `check`), and reading past a message larger than `inbound_limit`."""

    last_connect_error: str | None = None
    #: the largest packet taken from the broker (0: any), and the size of the last one refused, until read
    inbound_limit = 0
    refused_inbound: int | None = None
    #: told (on paho's thread, so it only enqueues) the size and topic of each message read past and dropped
    on_read_past: Callable[[int, str], None] | None = None
    _skip: _Skip | None = None
    #: the TLS files read into the context paho connects with (`_TlsFiles`), read again where they changed
    tls_files: _TlsFiles | None = None

    def reconnect(self) -> MQTTErrorCode:
        if self.tls_files is not None:
            self.tls_files.refresh()
        self._skip = None  # a message being read past when the last connection ended is no part of this one
        try:
            rc = super().reconnect()
        except OSError as err:
            self.last_connect_error = why_unreachable(err, self.tls_files is not None)
            raise
        self.last_connect_error = None
        return rc

    def _sock_recv(self, bufsize: int) -> bytes:
        """Paho reads each packet whole into memory. Under MQTT 5 the agent tells the broker the largest it
        takes; MQTT 3.1.1 has no way to, and anyone allowed to publish on a topic the agent subscribes to
        could send it 256 MB (mosquitto's default) on a board of 1 GB. A message whose header declares more
        than `inbound_limit` is read past before a byte of its body is kept (`_packet_read`). Any other
        packet that large (none is, from a broker) ends the connection."""
        packet: Any = getattr(self, "_in_packet", None)  # paho's own: a release that renames it loses the check,
        # which `test_under_mqtt_3_1_1_a_message_too_large_for_the_agent_is_dropped_unread` shows
        if self.inbound_limit and self._skip is None and isinstance(packet, dict) and packet.get("have_remaining"):
            size = 1 + len(packet.get("remaining_count", ())) + int(packet.get("remaining_length", 0))
            if size > self.inbound_limit:
                self.refused_inbound = size
                if int(packet.get("command", 0)) & 0xF0 == paho.PUBLISH and not packet.get("packet"):
                    raise _ReadPast()
                raise ConnectionAbortedError(f"the broker sent a packet of {size} bytes, more than the "
                                             f"{self.inbound_limit} this client takes")
        return super()._sock_recv(bufsize)

    def _packet_read(self) -> MQTTErrorCode:
        """Paho's read of the next packet, where a message too large to take is read past: its bytes are
        counted off the socket as they come and dropped, it is acknowledged as delivered at QoS 1 or 2 (the
        broker would otherwise send it again), and the connection stays up. Ending the connection on it
        instead made a message kept retained on a topic the agent subscribes to end every connection, at
        every subscribe, for as long as the broker kept it: the agent never stayed connected."""
        if self._skip is None:
            try:
                return super()._packet_read()
            except _ReadPast:
                packet: Any = self._in_packet
                size = int(self.refused_inbound or 0)
                self._skip = _Skip(int(packet["command"]), int(packet["to_process"]), size, bytearray())
        skip = self._skip
        for _ in range(_SKIP_READS):
            if skip.left <= 0:
                break
            try:
                data = super()._sock_recv(min(skip.left, 1 << 16))
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if not data:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            skip.left -= len(data)
            if len(skip.head) < _HEAD_KEPT:
                skip.head += data[: _HEAD_KEPT - len(skip.head)]
            with self._msgtime_mutex:  # bytes are coming: no keepalive runs out while they do
                self._last_bytes_received = paho.time_func()
        if skip.left > 0:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        self._skip, self.refused_inbound = None, None
        self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                           "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
        head = skip.head
        topic_len = int.from_bytes(head[:2], "big")
        topic = bytes(head[2 : 2 + topic_len]).decode("utf-8", "backslashreplace")
        qos = (skip.command >> 1) & 3
        if self.on_read_past is not None:
            self.on_read_past(skip.size, topic)
        if qos and len(head) >= 4 + topic_len:
            mid = int.from_bytes(head[2 + topic_len : 4 + topic_len], "big")
            return self._send_puback(mid) if qos == 1 else self._send_pubrec(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def shown_topic(msg: Any) -> str:
    """A received message's topic for the log, whatever bytes the broker sent (paho's `topic` raises on
    what is not UTF-8)."""
    return bytes(getattr(msg, "_topic", b"")).decode("utf-8", "backslashreplace")


class _TlsFiles:
    """The CA bundle, client certificate and key, read into one SSL context, and read into it again before a
    connection where a file changed on disk since. A client certificate of a day or a week (step-ca's,
    Vault's, cert-manager's), renewed on disk by another program, and a rotated CA were never read again:
    the first connection after the old certificate expired, or after the broker moved to the new CA, was
    refused, and so was every one after it, until the agent was restarted. A pair caught half written (the
    new certificate beside the old key) is not taken: the old pair serves, and the next connection tries
    again."""

    def __init__(self, context: ssl.SSLContext, ca: str | None, cert: str | None, key: str | None):
        self.context, self.ca, self.cert, self.key = context, ca, cert, key
        self.reloads = 0
        self._seen = self._stamp()

    def _stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        out = []
        for path in (self.ca, self.cert, self.key):
            try:
                st = os.stat(path) if path else None
            except OSError:  # being replaced: the next look sees the new one
                st = None
            out.append((st.st_ino, st.st_size, st.st_mtime_ns) if st else None)
        return tuple(out)

    def load(self) -> None:
        """Into the context: the CA bundle (added to what it trusts: a connection made meanwhile to a broker
        still on the old CA goes on) and the certificate with its key. ssl.SSLError or OSError where not."""
        if self.ca:
            self.context.load_verify_locations(self.ca)
        else:
            self.context.load_default_certs()
        if self.cert:
            self.context.load_cert_chain(self.cert, self.key)

    def refresh(self) -> None:
        stamp = self._stamp()
        if stamp == self._seen:
            return
        try:
            self.load()
        except (ssl.SSLError, OSError, ValueError) as err:
            log.warning("mqtt: the TLS files changed on disk but cannot be read (%s): the ones read before "
                        "serve, and they are read again before the next connection", err)
            return
        self._seen = stamp
        self.reloads += 1
        log.info("mqtt: the TLS files changed on disk: this connection uses them")


def _make_client(cfg: MQTTConfig, client_id: str, persistent: bool = False) -> _Client:
    proto = paho.MQTTv5 if cfg.protocol == "5" else paho.MQTTv311
    if proto == paho.MQTTv311:  # MQTT 5 has no clean_session; its session expiry defaults to 0
        client = _Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, clean_session=not persistent
        )
    else:
        client = _Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
    if cfg.tls.on(cfg.port):
        # what paho's tls_set makes (TLS 1.2 and up, the certificate and host name checked), in a context of
        # the agent's own, so that files renewed on disk can be read into it again (`_TlsFiles`)
        files = _TlsFiles(  # no CA file: the system's trusted CAs
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
            str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
            str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
            str(cfg.tls.key_file) if cfg.tls.key_file else None,
        )
        files.load()
        client.tls_set_context(files.context)
        client.tls_insecure_set(cfg.tls.insecure)
        client.tls_files = files
    client.reconnect_delay_set(min_delay=max(1, int(cfg.reconnect_min_s)), max_delay=max(1, int(cfg.reconnect_max_s)))
    return client


@dataclass
class _Event:
    kind: str  # connected | refused | disconnected | unreachable | availability | suback | puback | read_past
    detail: str = ""
    mid: int = 0
    refused: tuple[bool, ...] = ()  # suback: per topic asked for, whether the broker refused it
    max_packet: int | None = None  # connected: the Maximum Packet Size an MQTT 5 broker's CONNACK names
    max_qos: int | None = None  # connected: the Maximum QoS an MQTT 5 broker's CONNACK names (absent: 2)
    receive_max: int | None = None  # connected: its Receive Maximum (QoS > 0 messages in flight it takes)
    retain: bool = True  # connected: whether it keeps retained messages (MQTT 5's Retain Available)
    refused_inbound: int | None = None  # disconnected, read_past: the size of the broker's packet too large to take


class MqttSink(Sink):
    name = "mqtt"

    @classmethod
    def create(cls, ctx: SinkContext) -> Sink:
        s, ob = ctx.settings, ctx.settings.outbox
        outbox = (
            outbox_store.Outbox(
                s.state_dir / "outbox.sqlite", ob.max_messages, ob.policy, ob.flush_interval_s, ob.retry_s
            )
            if ob.enabled
            else None
        )
        return cls(s.mqtt, s.device_id, ctx.retained, outbox, ob.replay_rate, ctx.subscriptions, ctx.inbox)

    def __init__(
        self,
        cfg: MQTTConfig,
        device_id: str,
        retained_state: Callable[[], list[Message]] | None = None,
        outbox: outbox_store.Outbox | None = None,
        replay_rate: float = 200.0,
        subscriptions: list[str] | None = None,
        inbox: queue.Queue[Inbound] | None = None,
    ):
        self.cfg = cfg
        self.base = topic_base(cfg, device_id)
        self.availability_topic = Topics(cfg.topic_prefix, device_id).device("availability")
        self.client_id = cfg.client_id or f"edge-agent-{device_id}"
        self.retained_state = retained_state or (lambda: [])
        self._q: queue.Queue[Message] = queue.Queue(maxsize=cfg.queue_size)
        self._latest: dict[str, Message] = {}
        self._latest_lock = threading.Lock()
        self.outbox = outbox
        self.replay_rate = replay_rate
        self.subscriptions = subscriptions or []
        self.inbox = inbox
        self._replay_budget = 0.0
        self._replay_clock = time.monotonic()
        self._replay_after = 0  # outbox id cursor: rows above it are not yet sent this connection
        #: outbox.stored when a replay last found nothing to send: no query per message while it stays so
        self._replay_idle_at: int | None = None
        self._replay_inflight: deque[tuple[int, Any]] = deque()
        self.replayed = 0
        self.availability_restored = 0
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._inflight: deque[tuple[Any, Message]] = deque()
        self.state = "disconnected"
        self.drops: Counter[str] = Counter()
        self.sent = 0
        #: the publisher's rounds that took queued messages (`mqtt.linger_ms` gathers several into one)
        self.rounds = 0
        self.connects = 0
        self.last_error: str | None = None
        self.local_address: str | None = None  # this end of the last connection made
        self.heartbeat = time.monotonic()
        self._thread: threading.Thread | None = None
        self._client = _make_client(cfg, self.client_id)
        self._client.inbound_limit = MAX_INBOUND_BYTES
        self._client.on_read_past = self._on_read_past
        if cfg.password is not None and not cfg.tls.on(cfg.port) and not _loopback(cfg.host):
            log.warning("mqtt: the password goes to %s:%d in clear text: TLS is off (mqtt.tls.ca_file, a broker at "
                        "port 8883, or mqtt.tls.enabled)", cfg.host, cfg.port)
        self._will_qos = AVAILABILITY_QOS
        #: whether the broker keeps retained messages (an MQTT 5 broker says so; mosquitto's
        #: `retain_available false` does not): where it does not, everything goes unretained
        self.retain_ok = True
        self._will_retain = True
        #: connections closed unanswered in a row (MQTT 3.1.1), and whether a Will unretained was tried for it
        self._unanswered = 0
        self._retain_guess: bool | None = None  # None: not tried; True: trying / taken; False: given up
        self._client.will_set(self.availability_topic, OFFLINE, qos=self._will_qos, retain=True)
        self._client.max_inflight_messages_set(_MAX_INFLIGHT)
        self._client.max_queued_messages_set(_MAX_QUEUED)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        #: this connection's SUBSCRIBEs not yet acknowledged: message id -> topics, to read each SUBACK by
        self._subscribing: dict[int, list[str]] = {}
        #: topics the broker refused us (its ACL): commands and model chunks on them never arrive
        self.refused_subscriptions: list[str] = []
        #: when the current connection was accepted, and how many in a row the broker closed soon after
        self._connected_at: float | None = None
        #: the last connection was closed by the broker before it accepted it (see _UNACCEPTED)
        self._unaccepted = False
        self._short_lived = 0
        #: why we think another client holds our client id (None while nothing says so)
        self.taken_over: str | None = None
        #: since when the broker has been away (None while connected, or before the first attempt ended)
        self._down_since: float | None = None
        #: a broker never reached since start has been away since start (not since the attempt gave up)
        self._created = time.monotonic()
        self._down_logged = float("-inf")
        self._v5 = cfg.protocol == "5"
        #: the broker's largest packet: as configured, as its CONNACK says (MQTT 5), as learnt (3.1.1)
        self._max_packet: int | None = cfg.max_packet_bytes or None
        self._connack_max: int | None = None
        #: the highest QoS the broker takes (an MQTT 5 CONNACK's Maximum QoS; 2 where it names none)
        self.max_qos = 2
        self._learnt_max: int | None = None
        #: the largest packet sent lately that is larger than any the broker has been seen to take
        #: (size, topic, when), and that largest taken: what a connection closed at once is suspected of
        self._largest_sent: tuple[int, str, float] | None = None
        self._largest_taken = 0
        #: (size, topic) of the packet the last connection was closed on, suspected of being too large
        self._suspect: tuple[int, str] | None = None
        #: the latest message dropped as larger than the broker takes (topic, bytes), for health
        self.too_large: tuple[str, int] | None = None
        #: the size of the latest message from the broker larger than the agent takes, for health
        self.refused_inbound: int | None = None
        self.refused_inbound_topic: str | None = None
        self._too_large_topics: set[str] = set()
        #: the topic of each QoS > 0 message lately sent, by message id; topics the broker refused a
        #: publish on (MQTT 5 says so in the acknowledgement: its ACL) -> (reason, when last)
        self._topic_by_mid: OrderedDict[int, str] = OrderedDict()
        self.refused_publishes: dict[str, tuple[str, float]] = {}
        #: when this connection's birth went out, and whether its `online` came back (`_ECHO_S`)
        self._birth_at: float | None = None
        self._echoed = False
        self._echo_said = False  # logged, this connection
        #: the loss counts at the start of this window and of the one before (for "lost lately")
        self._loss_marks = [(time.monotonic(), Counter[str]())] * 2
        if self._v5:
            # only MQTT 5 can refuse a publish; under 3.1.1 paho would build a reason code and a properties
            # object for every QoS 0 message it writes, on its own thread, to say nothing
            self._client.on_publish = self._on_publish

    # --- paho callbacks: enqueue only ---------------------------------------------------------
    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            topic = str(msg.topic)  # paho decodes it here: a broker's topic that is not UTF-8 raises
            if topic == self.availability_topic:
                self._events.put(_Event("availability", bytes(msg.payload).decode("utf-8", "replace")))
                self._wake.set()
                return
            if self.inbox is None:
                return
            self.inbox.put_nowait(Inbound(topic, bytes(msg.payload), bool(msg.retain)))
        except queue.Full:
            self.drops["inbox_full"] += 1
        except Exception:  # paho's boundary: raised here, it would end the client's network thread for good
            self.drops["inbound_error"] += 1
            n = self.drops["inbound_error"]
            if log_now(n):  # whoever may publish here decides how often
                log.exception("mqtt: a message on %s could not be taken in (%d so far)", shown_topic(msg), n)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._events.put(_Event("refused", str(reason_code)))
        else:
            limit = getattr(properties, "MaximumPacketSize", None)  # MQTT 5 only, where the broker sets it
            qos = getattr(properties, "MaximumQoS", None)  # likewise: AWS IoT Core's is 1
            most = getattr(properties, "ReceiveMaximum", None)
            self._events.put(_Event("connected", max_packet=int(limit) if limit else None,
                                    max_qos=int(qos) if qos is not None else None,
                                    receive_max=int(most) if most else None,
                                    retain=getattr(properties, "RetainAvailable", 1) != 0))
        self._wake.set()

    def _on_read_past(self, size: int, topic: str) -> None:
        self._events.put(_Event("read_past", topic, refused_inbound=size))
        self._wake.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        size, client.refused_inbound = client.refused_inbound, None
        self._events.put(_Event("disconnected", str(reason_code), refused_inbound=size))
        self._wake.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reason_codes: Any, properties: Any) -> None:
        self._events.put(_Event("suback", mid=int(mid), refused=tuple(bool(rc.is_failure) for rc in reason_codes)))
        self._wake.set()

    def _on_publish(self, client: Any, userdata: Any, mid: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):  # MQTT 5 only: 3.1.1 has no way to refuse a publish
            self._events.put(_Event("puback", str(reason_code), mid=int(mid)))
            self._wake.set()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._events.put(_Event("unreachable", getattr(client, "last_connect_error", None) or _UNREACHABLE))
        self._wake.set()

    # --- public API ----------------------------------------------------------------------------
    def start(self) -> None:
        self.state = "connecting"
        props = None
        if self.cfg.protocol == "5":  # the broker drops what is larger for us, rather than send it
            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = MAX_INBOUND_BYTES
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, properties=props)
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
        return self._q.qsize()

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
            backlog = self.outbox.depth() if self.outbox is not None else 0
            if self.queue_depth() == 0 and not self._latest and not self._inflight and backlog == 0:
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
            info = self._client.publish(self.availability_topic, OFFLINE, qos=self._qos(AVAILABILITY_QOS),
                                        retain=self.retain_ok)
            try:
                info.wait_for_publish(timeout / 4)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self.state = "closed"
        if self.outbox is not None:  # whatever did not reach the broker waits on disk for the next start
            self._spill([m for info, m in self._inflight if not info.is_published()])
            self._spill(self._drain_queue())
            self.outbox.close()
        elif not flushed and self.queue_depth():
            self.drops["shutdown"] += self.queue_depth()

    def _note_local_address(self) -> None:
        """This end's address of the connection just made: health finds the link that carries it from it."""
        self.local_address = local_address(self._client) or self.local_address

    def stats(self) -> dict[str, object]:
        return {
            "state": self.state,
            "host": self.cfg.host,
            "port": self.cfg.port,
            "connects": self.connects,
            "queue_depth": self.queue_depth(),
            "queue_size": self.cfg.queue_size,
            "sent": self.sent,
            "replayed": self.replayed,
            "availability_restored": self.availability_restored,
            "refused_subscriptions": list(self.refused_subscriptions),
            "taken_over": self.taken_over,
            "max_packet_bytes": self._packet_limit(),
            "max_qos": self.max_qos,
            "refused_publishes": sorted(self.refused_publishes),
            "drops": dict(self.drops),
            "last_error": self.last_error,
            "outbox": self.outbox.stats() if self.outbox is not None else None,
        }

    # --- publisher thread ----------------------------------------------------------------------
    def _run(self) -> None:
        """The publisher's loop. While messages keep coming (the last round sent some), it gathers them for
        `mqtt.linger_ms` and sends what came together, rather than wake at each submit: at hundreds of
        messages a second each wake-up, and the interpreter lock it takes from the pipelines' threads, cost
        more than the message (`edge-agent bench --linger 4`, docs/benchmarks.md). Idle, the first
        message wakes it at once."""
        replaying, busy = False, False
        linger = self.cfg.linger_ms / 1e3
        while not self._stop.is_set():
            if busy and linger and not replaying:
                self._stop.wait(linger)
            else:
                self._wake.wait(_REPLAY_TICK_S if replaying else _IDLE_WAIT_S)
            self._wake.clear()
            self.heartbeat = time.monotonic()
            replaying = False
            try:
                self._handle_events()
                self._say_if_down()
                self._still_connected()
                busy = False
                if self._connected.is_set():
                    # a full batch leaves more waiting (a backlog): the next round comes at once
                    busy = 0 < self._publish_some() < _BATCH
                    replaying = self._replay_some()
                elif self.outbox is not None:  # without one, the bounded queue holds what it can
                    self._spill(self._drain_queue())
                if self.outbox is not None:
                    self.outbox.maybe_commit()
                    # out of memory mode once the disk takes writes again, while no stored message is
                    # in flight (their ids change)
                    if not self._replay_inflight and self.outbox.try_disk():
                        self._replay_after, self._replay_idle_at = 0, None
            except Exception as err:  # loop boundary: log, count, keep publishing
                self.last_error = f"{type(err).__name__}: {err}"
                self.drops["error"] += 1
                log.exception("mqtt publisher error")

    def _drain_queue(self) -> list[Message]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out

    def _spill(self, msgs: list[Message]) -> None:
        """Messages that cannot go out now: to the outbox, or counted as lost without one."""
        if not msgs:
            return
        if self.outbox is None:
            self.drops["broker_down"] += len(msgs)
            return
        self.outbox.put_many(msgs)

    def _handle_events(self) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            if ev.kind == "connected":
                self.connects += 1
                self.state = "connected"
                if self._down_since is not None:
                    log.info("mqtt connected to %s:%s after %.0f s away", self.cfg.host, self.cfg.port,
                             time.monotonic() - self._down_since)
                else:
                    log.info("mqtt connected to %s:%s", self.cfg.host, self.cfg.port)
                self._down_since, self._down_logged = None, float("-inf")
                self._connected_at = time.monotonic()
                self._unaccepted = False
                self._connack_max = ev.max_packet
                self._take_max_qos(ev.max_qos)
                # a retained 'online' beside an unretained Will would say online for good after a crash: what
                # is retained follows the Will of this connection, and the next one's is retained again
                # where the broker keeps retained messages once more
                self.retain_ok = ev.retain and self._will_retain
                self._unanswered = 0
                if ev.retain and not self._will_retain and self._v5:  # 3.1.1's CONNACK says nothing of it
                    self._will_retain = True
                    self._client.will_set(self.availability_topic, OFFLINE, qos=self._will_qos, retain=True)
                # no more QoS > 0 messages in flight than the broker takes (MQTT 5's Receive Maximum; a
                # broker that holds to it ends the connection past it). Paho's setter refuses an open
                # connection, for a change to or from 0 (no limit); this is one between two limits
                self._client._max_inflight_messages = min(_MAX_INFLIGHT, ev.receive_max or _MAX_INFLIGHT)
                self._largest_sent = None
                _no_delay(self._client)
                self._note_local_address()
                # a clean session forgets subscriptions: ask again on every connect, before the birth. The
                # broker handles one connection's packets in order, so whatever answers our `online` or
                # discovery at once (a command, a button pressed) finds the subscription there; after it,
                # such a message could be routed before the subscription was made, and lost
                self._subscribing = {}
                self._subscribe(self.subscriptions)
                self._publish_birth()
                # our own availability after the birth: its retained `online` comes back on it (`_unechoed`),
                # and an old session's Will arriving after this birth is undone
                self._subscribe([self.availability_topic])
                self._replay_after = 0
                self._replay_idle_at = None
                self._replay_inflight.clear()
                self._connected.set()
            elif ev.kind == "suback":
                self._read_suback(ev)
            elif ev.kind == "read_past":
                self._refused_inbound(ev.refused_inbound or 0, ev.detail)
            elif ev.kind == "puback":
                self._refused_publish(ev)
            elif ev.kind == "availability":
                if ev.detail == ONLINE.decode() and not self._echoed:
                    self._echoed = True
                    if self._birth_at is not None and time.monotonic() - self._birth_at > _ECHO_S:
                        log.info("mqtt: the broker passes on what this client publishes again")
                if ev.detail == OFFLINE.decode() and self._connected.is_set() and not self._stop.is_set():
                    log.warning("a stale 'offline' (an earlier session's Will) replaced our birth; restoring")
                    self.availability_restored += 1
                    self._client.publish(self.availability_topic, ONLINE, qos=self._qos(AVAILABILITY_QOS),
                                         retain=self.retain_ok)
            elif ev.kind == "unreachable":
                self.state = "disconnected"
                self.last_error = ev.detail
                self._unaccepted = False
                self._connected.clear()
                self._down_since = self._down_since or self._away_from()
            elif ev.kind == "refused":
                if "qos not supported" in ev.detail.lower() and self._will_qos > 0:
                    # the Will's QoS (1) is past what the broker takes (mosquitto's `max_qos 0`): the next
                    # CONNECT asks for it at 0, and its messages go at 0 once the CONNACK says so
                    self._will_qos = 0
                    self._client.will_set(self.availability_topic, OFFLINE, qos=0, retain=self._will_retain)
                    log.warning("mqtt: the broker takes no QoS 1; the Will goes at QoS 0")
                elif "retain not supported" in ev.detail.lower() and self._will_retain:
                    # a broker that keeps no retained messages refuses a retained Will: the next CONNECT
                    # asks for it unretained, and everything else goes so too
                    self.retain_ok = self._will_retain = False
                    self._client.will_set(self.availability_topic, OFFLINE, qos=self._will_qos, retain=False)
                    log.warning("mqtt: the broker keeps no retained messages; the Will, availability, info and "
                                "state go unretained")
                elif self.state != "refused":  # paho retries with backoff; say it once
                    log.error("mqtt: broker refused connection: %s", ev.detail)
                self._down_since = self._down_since or self._away_from()
                self._down_logged = time.monotonic()
                self.state = "refused"
                self.last_error = f"broker refused connection: {ev.detail}"
                self._connected.clear()
            else:
                # closed by the broker before its CONNACK (not a silence that ran out the keepalive)
                unaccepted = self._connected_at is None and "keep alive" not in ev.detail.lower()
                ended = self._connected_at is not None  # a connection the broker had accepted
                if ev.refused_inbound is not None:
                    self._refused_inbound(ev.refused_inbound)
                elif self._connected_at is not None:  # the end of a connection the broker accepted (a send
                    # that found it gone may have cleared _connected already)
                    log.warning("mqtt disconnected: %s", ev.detail)
                    self._down_logged = time.monotonic()
                    self._suspect_size(ev.detail)
                    self._note_short_lived(ev.detail)
                self._down_since = self._down_since or self._away_from()
                if self.state != "refused":  # the drop after a refusal is not news
                    self.state = "disconnected"
                    self.last_error = (
                        _UNACCEPTED.format(ev.detail) + ("" if self.cfg.tls.on(self.cfg.port) else _PLAIN_AT_TLS)
                        if unaccepted else f"disconnected: {ev.detail}"
                    )
                    self._unaccepted = unaccepted
                self._guess_retain(unaccepted, ended)
                self._connected.clear()
                # unacknowledged QoS>0 messages may be lost with the connection: the outbox keeps
                # them, and sends them again through the checks of every send (paho would resend
                # its own copies at the reconnect, the packet a broker closed the connection on
                # among them)
                _forget_unsent(self._client)
                self._spill([m for info, m in self._inflight if not info.is_published()])
                self._inflight.clear()
                self._replay_inflight.clear()

    def _guess_retain(self, unaccepted: bool, ended: bool) -> None:
        """MQTT 3.1.1 gives a broker no way to say why it closes a connection before answering it. One that
        keeps no retained messages (mosquitto's `retain_available false`) does so to a client whose Will
        is retained, as the agent's is, and was never served. After _UNANSWERED_TRY such closes in a row,
        the next connection asks for its Will unretained; taken, everything goes unretained (health says
        so); refused as often again, the retained Will is back for good. The guess holds for one
        connection: a broker that closed connections for another reason (its `max_connections` reached)
        would otherwise lose the agent's retained state for good; the next outage starts from a retained
        Will again. MQTT 5 needs no guess: the broker names the reason, and the refusal is acted on."""
        if self._v5:
            return
        if ended and self._retain_guess:
            self._retain_guess, self._will_retain, self.retain_ok = None, True, True
            self._client.will_set(self.availability_topic, OFFLINE, qos=self._will_qos, retain=True)
        if not unaccepted:
            self._unanswered = 0
            return
        self._unanswered += 1
        if self._retain_guess is None and self._unanswered >= _UNANSWERED_TRY:
            self._retain_guess, self._will_retain, self.retain_ok = True, False, False
            self._client.will_set(self.availability_topic, OFFLINE, qos=self._will_qos, retain=False)
            log.warning("mqtt: the broker closed %d connections in a row unanswered; trying a Will unretained "
                        "(a broker that keeps no retained messages closes a client with a retained one so)",
                        self._unanswered)
        elif self._retain_guess and self._unanswered >= 2 * _UNANSWERED_TRY:
            self._retain_guess, self._will_retain, self.retain_ok = False, True, True
            self._client.will_set(self.availability_topic, OFFLINE, qos=self._will_qos, retain=True)
            log.warning("mqtt: the broker closes connections unanswered with a Will unretained too: the Will is "
                        "retained again")

    def _refused_inbound(self, size: int, topic: str | None = None) -> None:
        """A message from the broker larger than the agent takes, read past unkept (`_Client._packet_read`;
        `topic` is where it came), or a packet that large that ended the connection (none of a broker's
        others is): counted, logged the first time and then at 10, 100, 1000..., and said in health. Not a
        connection the broker closed: neither a packet of ours too large for it nor a client id in use
        elsewhere."""
        self.drops["inbound_too_large"] += 1
        self.refused_inbound = size
        self.refused_inbound_topic = None if topic is None else plain(topic)  # anyone's: no escapes in log or health
        n = self.drops["inbound_too_large"]
        if log_now(n):
            where = self.refused_inbound_topic
            what = f"on {where}, and was dropped unread" if where is not None else "and the connection was closed on it"
            log.error("mqtt: the broker sent a message of %d bytes, more than the %d this agent takes, %s "
                      "(%d so far). Whoever may publish on a topic the agent subscribes to sent it; MQTT 5 "
                      "(mqtt.protocol = \"5\") has the broker drop such messages instead", size, MAX_INBOUND_BYTES,
                      what, n)

    def _note_short_lived(self, reason: str) -> None:
        """Two devices given one device_id (a cloned SD card) connect with one client id, and the broker
        closes each one's connection when the other's arrives: both reconnect every second, forever,
        each connected half the time, and the log says only "disconnected". MQTT 5 names it ("Session
        taken over"); with 3.1.1 it shows as connections closed right after they were accepted, again
        and again, with no keepalive missed."""
        lived = time.monotonic() - (self._connected_at or 0.0)
        self._connected_at = None
        if "taken over" in reason.lower():
            self._short_lived = _TAKEN_OVER_AFTER
        elif lived < _SHORT_LIVED_S and "keep alive" not in reason.lower():
            self._short_lived += 1
        else:
            self._short_lived = 0
        if self._short_lived >= _TAKEN_OVER_AFTER and self.taken_over is None:
            self.taken_over = (
                f"the broker closes this connection right after accepting it, again and again ({reason}): "
                f"another client uses client id '{self.client_id}' (two devices with one device_id, a cloned "
                "SD card?), or the broker refuses what this agent publishes"
                + (" (with mqtt.qos = 2: a broker that takes QoS up to 1, as AWS IoT Core does, closes the "
                   "connection on each QoS 2 message; MQTT 3.1.1 cannot say so: set mqtt.qos = 1, or "
                   "mqtt.protocol = \"5\", where the broker says it and the agent keeps within it)"
                   if self.cfg.qos == 2 and not self._v5 else "")
            )
            log.error("mqtt: %s", self.taken_over)

    def _take_max_qos(self, named: int | None) -> None:
        """The broker's Maximum QoS (MQTT 5: AWS IoT Core takes QoS 0 and 1, mosquitto's `max_qos`), which
        every message is sent within: a PUBLISH above it ends the connection ("QoS not supported"), so
        with `mqtt.qos = 2` every prediction cut the connection, was lost, and health blamed a client id
        in use elsewhere. Said in the log once per change; health shows it (`broker.max_qos`)."""
        qos = 2 if named is None else max(0, min(2, named))
        if qos != self.max_qos and qos < max(self.cfg.qos, AVAILABILITY_QOS):
            log.warning("mqtt: the broker takes QoS up to %d: messages asked at a higher one (mqtt.qos = %d, "
                        "availability and retained state at %d) go at %d", qos, self.cfg.qos, AVAILABILITY_QOS,
                        qos)
        self.max_qos = qos

    def _qos(self, asked: int) -> int:
        return asked if asked <= self.max_qos else self.max_qos

    def _packet_limit(self) -> int | None:
        limits = [n for n in (self._max_packet, self._connack_max, self._learnt_max) if n is not None]
        return min(limits) if limits else None

    def _fits(self, topic: str, payload: bytes, qos: int) -> bool:
        """Whether the broker takes this message's packet. One larger than it takes is dropped, counted,
        logged (once per topic) and said in health: sent, the broker would close the connection on it
        (MQTT 3.1.1 gives it no other way to refuse), and from the outbox it would be sent again at
        every reconnect, ahead of everything after it: one snapshot would cut the device off for good."""
        size = packet_size(topic, len(payload), qos, self._v5)
        limit = self._packet_limit()
        if limit is None or size <= limit:
            largest = self._largest_sent
            if size > self._largest_taken and (largest is None or size >= largest[0]):
                self._largest_sent = (size, topic, time.monotonic())
            return True
        self.drops["too_large"] += 1
        self.too_large = (topic, size)
        if topic not in self._too_large_topics:
            self._too_large_topics.add(topic)
            log.error(
                "mqtt: a message of %d bytes on %s is larger than the broker takes (%d bytes); dropped, as are "
                "all such (lower snapshots.max_bytes, or raise the broker's limit)", size, topic, limit,
            )
        return False

    def _suspect_size(self, reason: str) -> None:
        """A broker that takes packets up to a size closes the connection on a larger one. MQTT 5 says
        so (its CONNACK names the size, its DISCONNECT "Packet too large"); MQTT 3.1.1 cannot, and the
        connection just closes. Closed twice within _SHORT_LIVED_S of sending the same packet, larger
        than any the broker has taken, is taken to say it: packets of that size on are not sent again.
        Any other close clears the suspicion."""
        sent, self._largest_sent = self._largest_sent, None
        recent = sent is not None and time.monotonic() - sent[2] < _SHORT_LIVED_S
        said = "too large" in reason.lower()
        if (sent is None or not recent or sent[0] <= _LEARN_FLOOR or self._max_packet is not None
                or self._connack_max is not None or ("keep alive" in reason.lower() and not said)):
            self._suspect = None
            return
        seen = (sent[0], sent[1])
        if not said and self._suspect != seen:
            self._suspect = seen
            return
        self._suspect = None
        self._learnt_max = min(sent[0] - 1, self._learnt_max or sent[0])
        log.error(
            "mqtt: the broker closed the connection right after a packet of %d bytes on %s%s: it takes "
            "smaller ones only; messages of %d bytes or more are dropped from now on (set mqtt.max_packet_bytes "
            "to the broker's limit)", sent[0], sent[1], f" ({reason})" if said else ", twice", sent[0],
        )

    def _still_connected(self) -> None:
        """A connection that has lasted clears the suspicion; a packet it has lasted long after was taken."""
        sent = self._largest_sent
        if sent is not None and time.monotonic() - sent[2] >= _SHORT_LIVED_S:
            self._largest_taken, self._largest_sent = max(self._largest_taken, sent[0]), None
        at = self._connected_at
        if at is not None and self._short_lived and time.monotonic() - at >= _SHORT_LIVED_S:
            self._short_lived = 0
            if self.taken_over is not None:
                log.info("mqtt: the connection has held for %.0f s; no other client is taking it", _SHORT_LIVED_S)
                self.taken_over = None

    def _subscribe(self, topics: list[str]) -> None:
        if not topics:
            return
        _, mid = self._client.subscribe([(t, 1) for t in topics])
        if mid is not None:
            self._subscribing[mid] = topics

    def _read_suback(self, ev: _Event) -> None:
        """A broker whose ACL refuses a subscription still accepts the connection and our publishes: say
        which topics it refused, or commands and model updates silently never arrive. Each SUBACK answers
        for its own topics; the others keep what theirs said."""
        topics = self._subscribing.pop(ev.mid, None)
        if topics is None:
            return
        now = [t for t, no in zip(topics, ev.refused, strict=False) if no]  # a short SUBACK: what it names
        refused = [t for t in self.refused_subscriptions if t not in topics] + now
        if refused and refused != self.refused_subscriptions:
            log.error(
                "mqtt: the broker refused the subscription to %s (its ACL?): nothing sent there reaches this "
                "agent (commands, model updates)", ", ".join(refused),
            )
        elif not refused and self.refused_subscriptions:
            log.info("mqtt: the broker now accepts every subscription")
        self.refused_subscriptions = refused

    def _unechoed(self, now: float) -> bool:
        """Under MQTT 3.1.1, whose broker acknowledges a message its ACL drops as one it took: the agent is
        subscribed to its own availability, and the retained `online` of its birth comes back on it, unless
        the broker dropped it. Not judged where the broker keeps no retained messages (the birth goes out
        before the subscription, so nothing would come back), nor where it refused that subscription, nor
        under MQTT 5, whose acknowledgements name each refused topic."""
        at = self._birth_at
        return (not self._v5 and at is not None and not self._echoed and now - at > _ECHO_S and self.retain_ok
                and self._connected.is_set() and self.availability_topic not in self.refused_subscriptions)

    def _refused_publish(self, ev: _Event) -> None:
        """A broker whose ACL does not let this client publish on a topic still accepts the connection;
        with MQTT 3.1.1 it drops those messages silently. MQTT 5 says so in the acknowledgement: say
        which topics, once each in the log, and in health while refusals keep coming."""
        topic = self._topic_by_mid.pop(ev.mid, "(unknown topic)")
        self.drops["refused"] += 1
        if topic not in self.refused_publishes:
            if len(self.refused_publishes) >= _REFUSED_TOPICS:  # counted; neither kept nor logged again
                return
            log.error("mqtt: the broker refused a message on %s (%s): its ACL does not let this client publish "
                      "there, and it drops what is sent there", topic, ev.detail)
        self.refused_publishes[topic] = (ev.detail, time.monotonic())

    def problems(self) -> list[str]:
        refused = self.refused_subscriptions
        out = [f"broker refused subscriptions: {', '.join(refused)}"] if refused else []
        if not self.retain_ok:
            guessed = (" (under MQTT 3.1.1 a guess: it closed connections with a retained Will unanswered, and "
                       "took one without)" if self._retain_guess else "")
            out.append("the broker keeps no retained messages: availability, info, zone counts, snapshots and "
                       f"model state reach only who is subscribed when they are sent{guessed}")
        if self.taken_over is not None:
            qos2 = " or QoS 2 not taken (set mqtt.qos = 1)" if self.cfg.qos == 2 and not self._v5 else ""
            out.append(f"broker closes each connection right after accepting it (client id '{self.client_id}' "
                       f"in use elsewhere?{qos2})")
        if self.too_large is not None:
            out.append(f"messages larger than the broker takes ({self._packet_limit()} bytes) dropped: "
                       f"{self.drops['too_large']}, the latest {self.too_large[1]} bytes on {self.too_large[0]}")
        if self.refused_inbound is not None:
            where = f" on {self.refused_inbound_topic}" if self.refused_inbound_topic is not None else ""
            out.append(f"messages from the broker larger than the agent takes ({MAX_INBOUND_BYTES} bytes), dropped "
                       f"unread: {self.drops['inbound_too_large']}, the latest {self.refused_inbound} bytes{where}")
        now = time.monotonic()
        if self._unechoed(now):
            if not self._echo_said:
                self._echo_said = True
                log.error("mqtt: the broker drops what this client publishes: its own 'online' on %s never came "
                          "back (its ACL?)", self.availability_topic)
            out.append(f"the broker drops what this device publishes: its own 'online' on {self.availability_topic} "
                       f"has not come back in {now - (self._birth_at or now):.0f} s (its ACL does not let this client "
                       "publish? MQTT 5, mqtt.protocol = \"5\", would name each topic)")
        lately = sorted((t, why) for t, (why, at) in self.refused_publishes.items() if now - at < _REFUSED_FOR_S)
        if lately:
            out.append("broker refused publishes on " + ", ".join(f"{t} ({why})" for t, why in lately))
        lost = self._lost_lately(now)
        if lost:
            out.append(f"results lost in the last minute or two: {sum(lost.values())} "
                       f"({', '.join(f'{k} {n}' for k, n in sorted(lost.items()))})")
        return out

    def _lost_lately(self, now: float) -> dict[str, int]:
        """Results lost for good since the start of the window before this one: a queue that stayed full
        (a slow or hung broker), no broker and no outbox. Counted in `drops` since start; this says
        whether it is happening now, which a total since start does not."""
        total = Counter({k: self.drops[k] for k in _LOSSES})
        if now - self._loss_marks[1][0] >= _LOSS_WINDOW_S:
            self._loss_marks = [self._loss_marks[1], (now, total)]
        base = self._loss_marks[0][1]
        return {k: total[k] - base[k] for k in _LOSSES if total[k] > base[k]}

    def _away_from(self) -> float:
        """When the broker went away: now, or the start for one never reached (a server on the port that
        never answers CONNACK is only given up on after the keepalive)."""
        return time.monotonic() if self.connects else self._created

    def _say_if_down(self) -> None:
        """A broker that cannot be reached is logged at once, then every mqtt.down_log_s while it stays away."""
        if self._down_since is None or self._connected.is_set():
            return
        now = time.monotonic()
        if now - self._down_logged < self.cfg.down_log_s:
            return
        away = now - self._down_since
        depth = self.outbox.depth() if self.outbox is not None else self.queue_depth()
        log.warning(
            "mqtt: %s %s:%s for %.0f s (%s); %d messages waiting%s; retrying",
            "not accepted by the broker at" if self._unaccepted else "no broker at",
            self.cfg.host, self.cfg.port, away, self.last_error or "no answer", depth,
            " in the outbox" if self.outbox is not None else "",
        )
        self._down_logged = now

    def _publish(self, m: Message) -> Any:
        """Hand one message to paho, keeping its topic by message id for the acknowledgement (MQTT 5 only:
        a 3.1.1 acknowledgement never refuses, and the map would be kept for nothing on every send)."""
        qos = self._qos(m.qos)
        info = self._client.publish(m.topic, m.payload, qos=qos, retain=m.retain and self.retain_ok)
        if self._v5 and qos and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._topic_by_mid[info.mid] = m.topic
            if len(self._topic_by_mid) > _MIDS_KEPT:
                self._topic_by_mid.popitem(last=False)
        return info

    def _publish_birth(self) -> None:
        self._birth_at, self._echoed, self._echo_said = time.monotonic(), False, False
        self._client.publish(self.availability_topic, ONLINE, qos=self._qos(AVAILABILITY_QOS), retain=self.retain_ok)
        for m in self.retained_state():
            if self._fits(m.topic, m.payload, m.qos):
                self._publish(m)

    def _prune_inflight(self) -> None:
        while self._inflight and self._inflight[0][0].is_published():
            self._inflight.popleft()
        done = []
        while self._replay_inflight and self._replay_inflight[0][1].is_published():
            done.append(self._replay_inflight.popleft()[0])
        if done and self.outbox is not None:
            self.outbox.ack(done)

    def _send(self, m: Message) -> bool:
        """False where the message could not be handed to paho (keep it); one too large is dropped."""
        if not self._fits(m.topic, m.payload, m.qos):
            return True
        info = self._publish(m)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                self._connected.clear()
            return False
        self.sent += 1
        if m.qos:
            self._inflight.append((info, m))
        return True

    def _publish_some(self) -> int:
        """Send what is waiting (health, then up to `_BATCH` queued messages); how many were taken from the
        queue."""
        with self._latest_lock:
            latest, self._latest = self._latest, {}
        for m in latest.values():  # health: best effort, never stored
            if not self._send(m):
                self.drops["health_unsent"] += 1
        pending = []
        for _ in range(_BATCH):
            try:
                pending.append(self._q.get_nowait())
            except queue.Empty:
                break
        if pending:
            self.rounds += 1
        for i, m in enumerate(pending):
            if not self._send(m):
                # not connected any more, or paho's queue is full (a hung link): keep them on disk
                self._spill(pending[i:])
                break
        self._prune_inflight()
        if self._q.qsize():
            self._wake.set()
        return len(pending)

    def _replay_some(self) -> bool:
        """The backlog, oldest first, at `replay_rate` messages/s beside the live traffic.

        True while there may be more to send (the loop then comes round sooner)."""
        if self.outbox is None:
            return False
        if not self._replay_inflight and self._replay_idle_at == self.outbox.stored:
            return False  # nothing was stored since the backlog ran dry
        now = time.monotonic()
        self._replay_budget = min(self.replay_rate, self._replay_budget + (now - self._replay_clock) * self.replay_rate)
        self._replay_clock = now
        n = int(self._replay_budget)
        if n < 1 or len(self._replay_inflight) >= _MAX_INFLIGHT:
            return bool(self._replay_inflight) or self._replay_after > 0 or n < 1
        rows = self.outbox.peek(min(n, _BATCH), self._replay_after)
        done = []
        for row_id, m in rows:
            if not self._fits(m.topic, m.payload, m.qos):  # stored before the broker's limit was known
                self._replay_after = row_id
                done.append(row_id)
                continue
            info = self._publish(m)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            self._replay_after = row_id
            self._replay_budget -= 1
            self.replayed += 1
            if m.qos:
                self._replay_inflight.append((row_id, info))
            else:
                done.append(row_id)
        self.outbox.ack(done)
        if not rows and not self._replay_inflight:
            self._replay_idle_at = self.outbox.stored
        return bool(rows) or bool(self._replay_inflight)


def local_address(client: paho.Client) -> str | None:
    """This end's address of a client's connection (a socket, or an SSL socket over one); None where it has
    none (closed meanwhile)."""
    sock: Any = client.socket()
    try:
        return str(sock.getsockname()[0]) if sock is not None else None
    except (OSError, AttributeError, IndexError, TypeError):
        return None


def probe_broker(cfg: MQTTConfig, timeout_s: float = 5.0, topics: list[str] | None = None,
                 local: list[str] | None = None) -> str | None:
    """Connect once (TLS and credentials as configured), subscribe to `topics` as the agent would, and
    disconnect: None when the broker accepted all of it, else why not (unreachable, refused with its
    reason code, TLS, no answer in time, or the subscriptions its ACL refused: the agent would run,
    publish, and never hear a command or a model update). `local` gets this end's address of the
    connection, where one was made (the link that carries it)."""
    done = threading.Event()
    outcome: list[str | None] = []
    answered = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        answered.set()
        if local is not None and (mine := local_address(client)) is not None:
            local.append(mine)
        if reason_code.is_failure or not topics:
            outcome.append(f"refused: {reason_code}" if reason_code.is_failure else None)
            done.set()
        else:
            client.subscribe([(t, 1) for t in topics])

    def on_subscribe(client: Any, userdata: Any, mid: Any, reason_codes: Any, properties: Any) -> None:
        refused = [t for t, rc in zip(topics or [], reason_codes, strict=False) if rc.is_failure]
        outcome.append(f"connected, but the broker refused the subscription to {', '.join(refused)} (its ACL?): "
                       "commands and model updates sent there would never arrive" if refused else None)
        done.set()

    def on_connect_fail(client: Any, userdata: Any) -> None:
        outcome.append(getattr(client, "last_connect_error", None) or _UNREACHABLE)
        done.set()

    def on_disconnect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not answered.is_set():  # closed before its CONNACK: said now, not as no answer at the timeout
            outcome.append(_UNACCEPTED.format(reason_code) + ("" if cfg.tls.on(cfg.port) else _PLAIN_AT_TLS))
            done.set()

    client = _make_client(cfg, f"edge-agent-check-{time.monotonic_ns()}")
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_connect_fail = on_connect_fail
    client.on_disconnect = on_disconnect
    return _once(client, cfg, done, outcome, timeout_s)


def _once(client: _Client, cfg: MQTTConfig, done: threading.Event, outcome: list[str | None], timeout_s: float
          ) -> str | None:
    """Connect `client` (its callbacks set), wait until they say `done`, disconnect: their outcome, or why
    the connection failed or nothing came in time."""
    # between two tries paho's thread sleeps the reconnect delay (a second at least), and stopping it waits
    # for that: a refused connection cost every refused `run` a second
    client.reconnect_delay_set(min_delay=0.05, max_delay=0.05)  # type: ignore[arg-type]  # (a float sleeps as one)
    try:
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        client.loop_start()
        if not done.wait(timeout_s):
            return f"no answer within {timeout_s:.0f} s"
        return outcome[0]
    except (OSError, ValueError, ssl.SSLError) as err:
        return f"{type(err).__name__}: {err}"
    finally:
        client.disconnect()
        client.loop_stop()


def publish_retained(cfg: MQTTConfig, client_id: str, messages: list[tuple[str, bytes]], timeout_s: float = 5.0
                     ) -> str | None:
    """Connect once, publish `messages` retained at QoS 1, wait for the broker to take each, disconnect:
    None when it took them all, else why not. For a process that runs no sink (a refused configuration
    said where the fleet looks), so it never waits longer than `timeout_s` for a broker that is away."""
    done = threading.Event()
    outcome: list[str | None] = []
    pending: set[int] = set()
    lock = threading.RLock()  # (publish may answer at once, on this thread)

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            outcome.append(f"refused: {reason_code}")
            done.set()
            return
        with lock:
            for topic, payload in messages:
                pending.add(client.publish(topic, payload, qos=1, retain=True).mid)

    def on_publish(client: Any, userdata: Any, mid: Any, reason_code: Any, properties: Any) -> None:
        with lock:
            pending.discard(mid)
            if not pending:
                outcome.append(None)
                done.set()

    def on_connect_fail(client: Any, userdata: Any) -> None:
        outcome.append(getattr(client, "last_connect_error", None) or _UNREACHABLE)
        done.set()

    client = _make_client(cfg, client_id)
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_connect_fail = on_connect_fail
    return _once(client, cfg, done, outcome, timeout_s)


class Subscriber:
    """A plain subscriber for `edge-agent listen`, the cloud worker, readings from other devices and the
    tests: callbacks enqueue, callers read."""

    def __init__(
        self,
        cfg: MQTTConfig,
        topics: list[str],
        client_id: str | None = None,
        persistent: bool = False,
        max_bytes: int | None = None,
    ):
        """persistent: a session the broker keeps (and queues QoS 1 for) while this client is away.
        max_bytes: the most payload bytes held unread; a message that would go past it is dropped and
        counted in `overflow`. Whoever can publish on the topics decides how fast messages come: a
        device that sends batches faster than they are read grew an unbounded queue until the kernel
        killed the process."""
        self.cfg = cfg
        self.topics = topics
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.max_bytes = max_bytes
        #: payload bytes in `messages`, and messages dropped because they would not fit (max_bytes)
        self.held_bytes = 0
        self.overflow = 0
        self.malformed = 0  # messages dropped on a topic that is not UTF-8
        self._held_lock = threading.Lock()
        self.subscribed = threading.Event()
        #: the first connection attempt failed (refused, unreachable, or the broker refused us)
        self.failed = threading.Event()
        #: the broker's refusal of the connection, where it refused it
        self.refused: str | None = None
        self._client = _make_client(cfg, client_id or f"edge-agent-listen-{time.monotonic_ns()}", persistent)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_connect_fail = lambda client, userdata: self.failed.set()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.refused = f"refused: {reason_code}"
            self.failed.set()
        else:
            _no_delay(client)
            if self.topics:
                client.subscribe([(t, 1) for t in self.topics])
            else:  # a publish-only client: connected is all it waits for
                self.subscribed.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reason_codes: Any, properties: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            topic = str(msg.topic)
        except UnicodeDecodeError:  # from a broker that forwards what is not MQTT: raised here, it would end
            # the client's network thread for good
            self.malformed += 1
            if log_now(self.malformed):
                log.error("mqtt: a message on a topic that is not UTF-8 (%s) dropped (%d so far)",
                          shown_topic(msg), self.malformed)
            return
        payload = bytes(msg.payload)
        if self.max_bytes is not None:
            with self._held_lock:
                if self.held_bytes + len(payload) > self.max_bytes:
                    self.overflow += 1
                    return
                self.held_bytes += len(payload)
        self.messages.put((topic, payload, bool(msg.retain)))

    def why_not(self) -> str:
        """Why `start` failed, in the words a user acts on: the broker's refusal (a password, an ACL), or
        why there was no broker (nothing listening, TLS, a host name that does not resolve, no answer)."""
        where = f"{self.cfg.host}:{self.cfg.port}"
        if self.refused:
            return f"the broker at {where} {self.refused}"
        return f"no broker at {where} ({self._client.last_connect_error or 'no answer'})"

    def start(self, timeout: float = 10.0) -> bool:
        """True once subscribed; False at once when the first attempt fails, else after `timeout`."""
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        deadline = time.monotonic() + timeout
        while not self.subscribed.wait(0.05):
            if self.failed.is_set() or time.monotonic() > deadline:
                return False
        return True

    def get(self, timeout: float) -> tuple[str, bytes, bool] | None:
        """The oldest message unread, waiting up to `timeout` (0: not at all) for one."""
        try:
            msg = self.messages.get(timeout=timeout) if timeout > 0 else self.messages.get_nowait()
        except queue.Empty:
            return None
        if self.max_bytes is not None:
            with self._held_lock:
                self.held_bytes -= len(msg[1])
        return msg

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
