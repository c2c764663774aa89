"""Home Assistant MQTT discovery against a real broker: every config checked against the documented
discovery schema, every template rendered (Jinja2, as Home Assistant does) against the payloads the
agent really publishes, republished on Home Assistant's birth message, and the rollback button."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jinja2 import Environment, StrictUndefined

from edge_agent.sinks.mqtt import Subscriber

from .conftest import SHORT, Broker, TopicRecorder, run_cli, scaled, wait_until

AVAILABILITY = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["topic"],
        "properties": {
            "topic": {"type": "string", "minLength": 1},
            "payload_available": {"type": "string"},
            "payload_not_available": {"type": "string"},
            "value_template": {"type": "string"},
        },
        "additionalProperties": False,
    },
}
DEVICE = {
    "type": "object",
    "required": ["identifiers", "name"],
    "properties": {
        "identifiers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "name": {"type": "string"},
        "manufacturer": {"type": "string"},
        "model": {"type": "string"},
        "sw_version": {"type": "string"},
        "hw_version": {"type": "string"},
        "configuration_url": {"type": "string"},
        "suggested_area": {"type": "string"},
    },
    "additionalProperties": False,
}
ORIGIN = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "sw_version": {"type": "string"}},
    "additionalProperties": False,
}
COMMON = {
    "name": {"type": ["string", "null"]},
    "unique_id": {"type": "string", "pattern": "^[a-z0-9_]+$"},
    "availability": AVAILABILITY,
    "device": DEVICE,
    "origin": ORIGIN,
    "icon": {"type": "string", "pattern": "^mdi:[a-z0-9-]+$"},
    "entity_category": {"enum": ["config", "diagnostic"]},
}
#: Device classes and state classes from Home Assistant's sensor and binary_sensor docs (the ones in use here
#: and their neighbours; anything else would be a mistake here).
SENSOR_DEVICE_CLASSES = ["timestamp", "duration", "temperature", "data_size", "frequency", "power", "voltage",
                         "signal_strength", "enum"]
SCHEMAS: dict[str, dict[str, Any]] = {
    "sensor": {
        "type": "object",
        "required": ["unique_id", "state_topic", "device", "availability", "origin"],
        "properties": {
            **COMMON,
            "entity_category": {"enum": ["diagnostic"]},  # a sensor cannot be a config entity
            "state_topic": {"type": "string"},
            "value_template": {"type": "string"},
            "device_class": {"enum": SENSOR_DEVICE_CLASSES},
            "state_class": {"enum": ["measurement", "total", "total_increasing"]},
            "unit_of_measurement": {"type": "string"},
            "suggested_display_precision": {"type": "integer", "minimum": 0},
            "options": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
        "additionalProperties": False,
        "allOf": [
            {  # an enum sensor lists its states, and has neither a unit nor a state class
                "if": {"properties": {"device_class": {"const": "enum"}}, "required": ["device_class"]},
                "then": {
                    "required": ["options"],
                    "not": {"anyOf": [{"required": ["unit_of_measurement"]}, {"required": ["state_class"]}]},
                },
                "else": {"not": {"required": ["options"]}},
            },
            {
                "if": {"properties": {"device_class": {"const": "signal_strength"}}, "required": ["device_class"]},
                "then": {
                    "properties": {"unit_of_measurement": {"enum": ["dB", "dBm"]}},
                    "required": ["unit_of_measurement"],
                },
            },
            {
                "if": {"properties": {"device_class": {"const": "timestamp"}}, "required": ["device_class"]},
                "then": {"not": {"anyOf": [{"required": ["unit_of_measurement"]}, {"required": ["state_class"]}]}},
            },
            {
                "if": {"properties": {"device_class": {"const": "duration"}}, "required": ["device_class"]},
                "then": {
                    "properties": {"unit_of_measurement": {"enum": ["d", "h", "min", "s", "ms"]}},
                    "required": ["unit_of_measurement"],
                },
            },
            {
                "if": {"properties": {"device_class": {"const": "temperature"}}, "required": ["device_class"]},
                "then": {
                    "properties": {"unit_of_measurement": {"enum": ["°C", "°F", "K"]}},
                    "required": ["unit_of_measurement"],
                },
            },
        ],
    },
    "binary_sensor": {
        "type": "object",
        "required": ["unique_id", "state_topic", "device", "availability", "origin"],
        "properties": {
            **COMMON,
            "entity_category": {"enum": ["diagnostic"]},
            "state_topic": {"type": "string"},
            "value_template": {"type": "string"},
            "payload_on": {"type": "string"},
            "payload_off": {"type": "string"},
            "off_delay": {"type": "integer", "minimum": 0},
            "json_attributes_topic": {"type": "string"},
            "json_attributes_template": {"type": "string"},
            "device_class": {"enum": ["occupancy", "motion", "presence", "problem", "connectivity", "sound"]},
        },
        "additionalProperties": False,
    },
    "update": {
        "type": "object",
        "required": ["unique_id", "state_topic", "device", "availability", "origin"],
        "properties": {
            **COMMON,
            "state_topic": {"type": "string"},
            "value_template": {"type": "string"},
            "latest_version_topic": {"type": "string"},
            "command_topic": {"type": "string"},
            "payload_install": {"type": "string"},
            "title": {"type": "string"},
            "device_class": {"enum": ["firmware", None]},
        },
        "additionalProperties": False,
    },
    # MQTT camera: the image is the payload of `topic` (raw bytes unless image_encoding is b64)
    "camera": {
        "type": "object",
        "required": ["unique_id", "topic", "device", "availability", "origin"],
        "properties": {
            **COMMON,
            "topic": {"type": "string"},
            "image_encoding": {"enum": ["b64"]},
        },
        "additionalProperties": False,
    },
    "button": {
        "type": "object",
        "required": ["unique_id", "command_topic", "device", "availability", "origin"],
        "properties": {
            **COMMON,
            "command_topic": {"type": "string"},
            "payload_press": {"type": "string"},
            "device_class": {"enum": ["identify", "restart", "update"]},
        },
        "additionalProperties": False,
    },
}


class Recorder(TopicRecorder):
    def __init__(self, broker: Broker, topics: list[str]):
        self.configs: dict[str, dict[str, Any]] = {}
        self.config_arrivals: list[str] = []
        self.last: dict[str, Any] = {}
        self.results: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__(Subscriber(broker.mqtt(), topics))

    def on_message(self, topic: str, doc: Any, arrived: float) -> None:
        with self.lock:
            if not isinstance(doc, dict):
                return
            if topic.endswith("/config"):
                self.configs[topic] = doc
                self.config_arrivals.append(topic)
            elif topic.endswith("/cmd/result"):
                self.results.append(doc)
            else:
                self.last[topic] = doc


#: sensors of what a board may lack (this VM has no CPU thermal zone, no Wi-Fi, no eMMC): they render None there
BOARD_READINGS = {"CPU temperature", "Wi-Fi signal", "Storage life used", "Last run ended", "Board power"}


def _render(template: str, payload: Any) -> str:
    env = Environment(undefined=StrictUndefined)
    return env.from_string(template).render(value_json=payload).strip()


@pytest.fixture
def ha(broker: Broker, agent_factory) -> Any:  # type: ignore[no-untyped-def]
    rec = Recorder(broker, ["homeassistant/#", "edge/hadev/#"])
    agent_factory(
        [
            "run",
            "--device-id",
            "hadev",
            "--source",
            "demo",
            "--fps",
            "15",
            "--model",
            str(SHORT),
            "--set",
            "homeassistant.enabled=true",
            "--set",
            'homeassistant.labels=["face"]',
        ],
        env={**broker.env(), "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5"},
    )
    wait_until(lambda: len(rec.configs) >= 12 and "edge/hadev/health" in rec.last, scaled(30), what="discovery configs")
    yield rec
    rec.close()


def test_every_config_follows_home_assistants_discovery_schema(ha: Recorder) -> None:
    components = {}
    ids = set()
    for topic, cfg in ha.configs.items():
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, node, last) == ("homeassistant", "hadev", "config")
        jsonschema.validate(cfg, SCHEMAS[component])
        assert object_id == cfg["unique_id"]
        assert cfg["availability"][0]["topic"] == "edge/hadev/availability"
        assert cfg["device"]["identifiers"] == ["edge-agent-hadev"]
        ids.add(cfg["unique_id"])
        components.setdefault(component, []).append(cfg["name"])
    assert len(ids) == len(ha.configs)  # unique ids are unique
    assert sorted(components["binary_sensor"]) == ["Health", "Throttled", "face detected"]
    assert {
        "face count",
        "face last seen",
        "Inference rate",
        "Inference time",
        "CPU temperature",
        "Outbox depth",
        "Accelerator",
        "Wi-Fi signal",
        "Storage life used",
        "Last run ended",
        "Board power",
    } <= set(components["sensor"])
    assert components["update"] == ["Model"] and components["button"] == ["Roll back model"]


def test_every_template_renders_against_what_the_agent_publishes(ha: Recorder) -> None:
    wait_until(
        lambda: (ha.last.get("edge/hadev/ha/state") or {}).get("labels", {}).get("face", {}).get("detected") == "ON",
        scaled(20),
        what="a face seen",
    )
    for cfg in ha.configs.values():
        if "value_template" not in cfg:
            continue
        payload = ha.last[cfg["state_topic"]]
        out = _render(cfg["value_template"], payload)
        if cfg.get("payload_on"):
            assert out in (cfg["payload_on"], cfg["payload_off"]), (cfg["name"], out)
        elif cfg.get("device_class") == "timestamp":
            from datetime import datetime

            assert datetime.fromisoformat(out).tzinfo is not None
        elif cfg.get("device_class") == "enum":
            assert out in [*cfg["options"], "None"], (cfg["name"], out)  # None: Home Assistant's unknown
        elif cfg.get("state_class") == "measurement" and cfg["name"] not in BOARD_READINGS:
            float(out)  # numeric
        elif cfg["name"] in BOARD_READINGS:  # a number, or None where this machine has no such thing
            assert out == "None" or float(out) == float(out), (cfg["name"], out)
    # a health report with no inference in its window yet and no outbox (a first report, a slow board)
    cold = {**ha.last["edge/hadev/health"], "latency_ms": {}}
    cold["broker"] = {k: v for k, v in cold["broker"].items() if k != "outbox"}
    for cfg in ha.configs.values():
        if cfg.get("state_topic") == "edge/hadev/health" and cfg.get("state_class") == "measurement" \
                and cfg["name"] not in BOARD_READINGS:
            float(_render(cfg["value_template"], cold))
    # the board's readings, where a board has them: a Pi on Wi-Fi with a worn eMMC, after a crash
    health = ha.last["edge/hadev/health"]
    board = {**health, "system": {**health["system"],
                                  "network": {**(health["system"]["network"] or {}), "signal_dbm": -67.0},
                                  "storage": {**(health["system"]["storage"] or {}), "life_used_pct": 30},
                                  "power": {"VDD_IN": {"watts": 6.13}, "VDD_SOC": {"watts": 1.2}}},
             "process": {**health["process"], "last_run": "crashed"}}
    said = {c["name"]: _render(c["value_template"], board) for c in ha.configs.values() if c["name"] in BOARD_READINGS}
    assert said == {"Wi-Fi signal": "-67.0", "Storage life used": "30", "Last run ended": "crashed",
                    "CPU temperature": str(health["system"]["cpu_temp_c"]), "Board power": "6.13"}
    bare = {**health, "system": {**health["system"], "network": None, "storage": None, "power": None},
            "process": {k: v for k, v in health["process"].items() if k != "last_run"}}  # no state directory
    assert {c["name"]: _render(c["value_template"], bare) for c in ha.configs.values()
            if c["name"] in BOARD_READINGS and c["name"] != "CPU temperature"} == dict.fromkeys(
        ("Wi-Fi signal", "Storage life used", "Last run ended", "Board power"), "None")
    # the device's health: OFF while ok, ON with the problems as its attribute while degraded
    well = next(c for c in ha.configs.values() if c["name"] == "Health")
    h = ha.last["edge/hadev/health"]
    assert h["status"] == "ok" and _render(well["value_template"], h) == "OFF"
    assert json.loads(_render(well["json_attributes_template"], h)) == {"problems": []}
    sick = {**h, "status": "degraded", "problems": ["broker disconnected", "memory low: 40 MB available of 926"]}
    assert _render(well["value_template"], sick) == "ON"
    assert json.loads(_render(well["json_attributes_template"], sick)) == {"problems": sick["problems"]}
    face = ha.last["edge/hadev/ha/state"]["labels"]["face"]
    assert face["count"] >= 1
    upd = ha.last["edge/hadev/ha/update"]
    assert upd["installed_version"] == upd["latest_version"] and upd["title"] == "face_detection_short_range"
    assert (
        _render(
            next(c for c in ha.configs.values() if c["name"] == "Accelerator")["value_template"],
            ha.last["edge/hadev/health"],
        )
        == "cpu"
    )


def test_configs_are_retained_and_republished_on_home_assistants_birth(ha: Recorder, broker: Broker) -> None:
    late = Recorder(broker, ["homeassistant/#"])  # a Home Assistant that starts later sees them (retained)
    try:
        wait_until(lambda: len(late.configs) == len(ha.configs), 10, what="retained configs")
    finally:
        late.close()
    before = len(ha.config_arrivals)
    pub = Subscriber(broker.mqtt(), [], client_id="home-assistant")
    pub.start(10)
    try:
        pub.publish("homeassistant/status", b"offline")
        pub.publish("homeassistant/status", b"online")
        wait_until(lambda: len(ha.config_arrivals) >= before + len(ha.configs), 10, what="configs again")
        # a flood of births (anything allowed on the topic can send them): answered each, they filled the
        # publish queue with configs and no prediction got through. Now: one more round at most, and the
        # predictions go on
        wait_until(lambda: "edge/hadev/predictions" in ha.last, 10, what="a prediction")
        after, seq = len(ha.config_arrivals), ha.last["edge/hadev/predictions"]["seq"]
        for _ in range(300):
            pub.publish("homeassistant/status", b"online", qos=0)
        wait_until(lambda: ha.last["edge/hadev/predictions"]["seq"] > seq + 15, 10, what="predictions after the flood")
        assert len(ha.config_arrivals) <= after + len(ha.configs)
        wait_until(lambda: ha.last["edge/hadev/health"]["ts"] > time.time() - 1, 10, what="a fresh health document")
        assert "queue_full" not in ha.last["edge/hadev/health"]["broker"]["drops"]
    finally:
        pub.stop()


def test_rollback_button_sends_a_fresh_rollback_command_each_press(ha: Recorder, broker: Broker) -> None:
    pub = Subscriber(broker.mqtt(), [], client_id="home-assistant-button")
    pub.start(10)
    try:
        button = next(c for c in ha.configs.values() if c["name"] == "Roll back model")
        for _ in range(2):
            pub.publish(button["command_topic"], button["payload_press"].encode())
        wait_until(lambda: len(ha.results) >= 2, scaled(10), what="two answers")
    finally:
        pub.stop()
    ids = [r["id"] for r in ha.results]
    assert len(set(ids)) == 2 and all(i.startswith("ha-rollback-") for i in ids)
    # nothing installed over the air yet: refused with the reason, not ignored
    assert all(r["status"] == "rejected" and "no installed update" in r["reason"] for r in ha.results)


def test_scene_entities_follow_the_schemas() -> None:
    """A count sensor per zone and label, a camera per watched label on its snapshot topic."""
    from edge_agent.config import load_settings
    from edge_agent.homeassistant import HomeAssistant
    from edge_agent.topics import Topics

    square = [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]]
    s = load_settings(None, {"device_id": "box", "homeassistant": {"enabled": True}})
    scene = load_settings(
        None, {"scene": {"zones": [{"name": "path", "points": square}, {"name": "door", "points": square,
                                                                          "labels": ["cat"]}]}}
    ).scene
    ha = HomeAssistant(s, Topics("edge", "box"), ["person", "cat"], "porch", False, scene)
    configs = ha.configs("ssd")
    for component, cfg in configs:
        jsonschema.validate(cfg, SCHEMAS[component])
    sensors = {c["name"]: c["state_topic"] for k, c in configs if k == "sensor" and "zones/" in c["state_topic"]}
    assert sensors == {
        "porch path person count": "edge/box/porch/zones/path/person",
        "porch path cat count": "edge/box/porch/zones/path/cat",
        "porch door cat count": "edge/box/porch/zones/door/cat",
    }
    cams = {c["name"]: c["topic"] for k, c in configs if k == "camera"}
    assert cams == {"porch person snapshot": "edge/box/porch/snapshot/person",
                    "porch cat snapshot": "edge/box/porch/snapshot/cat"}
    assert len({c["unique_id"] for _, c in configs}) == len(configs)


def _retained(broker: Broker, pattern: str, settle: float = 1.0) -> dict[str, bytes]:
    """What a client that subscribes now is given: the broker's retained messages under `pattern`."""
    sub = Subscriber(broker.mqtt(), [pattern])
    assert sub.start(10)
    out: dict[str, bytes] = {}
    try:  # the broker sends the retained ones first, on subscribing; a live message means they are all in
        while (m := sub.get(settle)) is not None and m[2]:
            out[m[0]] = m[1]
    finally:
        sub.stop()
    return out


def test_default_label_is_one_the_model_produces_and_an_impossible_one_is_refused(
    broker: Broker, agent_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    rec = Recorder(broker, ["homeassistant/#"])
    try:
        agent_factory(["run", "--device-id", "dflt", "--source", "demo", "--fps", "15", "--model", str(SHORT),
                       "--set", "homeassistant.enabled=true"], env=broker.env())
        wait_until(lambda: any(c["name"] == "face detected" for c in list(rec.configs.values())), scaled(30),
                   what="the BlazeFace decoder's own label ('face') as the default")
        assert not any("face_detection" in c["name"] for c in list(rec.configs.values()))
    finally:
        rec.close()
    r = run_cli("run", "--device-id", "nocar", "--source", "demo", "--model", str(SHORT), "--seconds", "5",
                "--state-dir", str(tmp_path / "st"), "--set", "homeassistant.enabled=true",
                "--set", 'homeassistant.labels=["face","car"]', env=broker.env())
    assert r.returncode == 2, r.stdout + r.stderr
    assert "homeassistant.labels: 'car' is not a label the model produces (its labels: face)" in r.stderr, r.stderr
    # and `check` names it among its problems, as it names every other label no model produces
    r = run_cli("check", "--offline", "--source", "demo", "--model", str(SHORT), "--set", "homeassistant.enabled=true",
                "--set", 'homeassistant.labels=["face","car"]', "--json")
    assert r.returncode == 1 and "homeassistant.labels: 'car' is not a label" in r.stdout, r.stdout + r.stderr


def test_configs_of_entities_that_went_are_cleared_on_start_and_on_reload(
    broker: Broker, agent_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    pub = Subscriber(broker.mqtt(), [], client_id="leftovers")
    assert pub.start(10)
    stale = "homeassistant/binary_sensor/hacl/edge_agent_hacl_cat_detected/config"  # an earlier run watched cats
    other = "homeassistant/binary_sensor/another/edge_agent_another_cat_detected/config"  # another device's
    for t in (stale, other):
        pub.publish(t, json.dumps({"name": "cat detected", "unique_id": t.split("/")[3]}).encode(), retain=True)
    pub.stop()
    cfg = tmp_path / "ha.toml"
    pipe = '[[pipelines]]\nname = "{n}"\nsource = {{ uri = "synthetic", fps = 10 }}\nmodel.path = "{m}"\n'
    head = (f'device_id = "hacl"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
            '[homeassistant]\nenabled = true\n')
    cfg.write_text(head + pipe.format(n="front", m=SHORT) + pipe.format(n="back", m=SHORT))
    agent = agent_factory(["run", "--config", str(cfg)])
    gone = "homeassistant/binary_sensor/hacl/edge_agent_hacl_back_face_detected/config"
    wait_until(lambda: gone in (r := _retained(broker, "homeassistant/#")) and stale not in r, scaled(30),
               what="the configs of this run, and the stale one cleared")
    kept = _retained(broker, "homeassistant/#")
    assert other in kept  # another device's configs are not ours to clear
    assert "homeassistant/binary_sensor/hacl/edge_agent_hacl_front_face_detected/config" in kept
    # a reload that removes the pipeline `back` removes its entities from Home Assistant
    cfg.write_text(head + pipe.format(n="front", m=SHORT))
    agent.signal(signal.SIGHUP)
    wait_until(lambda: gone not in _retained(broker, "homeassistant/#"), scaled(30), what="back's configs cleared")
    left = [t for t in _retained(broker, "homeassistant/#") if "/hacl/" in t and "_back_" in t]
    assert not left, left
    assert "homeassistant/binary_sensor/hacl/edge_agent_hacl_front_face_detected/config" in _retained(
        broker, "homeassistant/#")


def test_label_state_is_rate_limited_and_not_retained(ha: Recorder, broker: Broker) -> None:
    states: list[tuple[float, dict[str, Any]]] = []
    sub = Subscriber(broker.mqtt(), ["edge/hadev/ha/state"])
    assert sub.start(10)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 8:
            m = sub.get(0.2)
            if m is not None:
                assert not m[2], "ha/state must not be retained"
                states.append((time.monotonic(), json.loads(m[1])))
    finally:
        sub.stop()
    assert states, "the demo's faces change the state"
    # at most one per second, except a label turning on, which goes out at once
    ons = sum(1 for (_, a), (_, b) in itertools.pairwise(states)
              if a["labels"]["face"]["detected"] == "OFF" and b["labels"]["face"]["detected"] == "ON")
    assert len(states) <= 8 / 1.0 + ons + 1, [s for _, s in states]
    assert "edge/hadev/ha/state" not in _retained(broker, "edge/hadev/#")


def test_a_label_clears_after_its_off_delay_though_the_wall_clock_is_set_back() -> None:
    """The off delay runs on the monotonic clock: a wall clock set back an hour (a board without a
    real-time clock reaching a time server) held the label `detected` for the hour."""
    from edge_agent.config import load_settings
    from edge_agent.homeassistant import HomeAssistant
    from edge_agent.results import Detection, Result
    from edge_agent.topics import Topics

    ha_cfg = {"enabled": True, "off_delay_s": 0, "state_interval_s": 0}
    s = load_settings(None, {"device_id": "box", "homeassistant": ha_cfg})
    ha = HomeAssistant(s, Topics("edge", "box"), ["person"])
    person = Detection("person", 0, 0.9, (10.0, 10.0, 50.0, 90.0), (0.1, 0.1, 0.3, 0.5))
    on = ha.observe(Result(task="detection", detections=(person,)), 1_800_000_000.0)
    assert on is not None and json.loads(on.payload)["labels"]["person"]["detected"] == "ON"
    off = ha.observe(Result(task="detection"), 1_800_000_000.0 - 3600.0)
    assert off is not None and json.loads(off.payload)["labels"]["person"]["detected"] == "OFF"
    assert json.loads(off.payload)["labels"]["person"]["last_seen"].startswith("2027-01-15")  # as it was seen


def test_a_label_of_any_length_gets_its_entities_and_the_birth_goes_out_whole(
    broker: Broker, agent_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """A label is part of its entities' ids, which are levels of their config topics. A labels file whose
    line is one long run of text (70,000 characters) made a config topic past MQTT's 65,535 bytes: paho
    raised at each birth, and what came after it in the birth was never sent. The id keeps at most 200
    characters of the label; the entity's name keeps the label whole."""
    labels = tmp_path / "labels.txt"
    long = "f" * 70_000
    labels.write_text(long + "\n")
    agent = agent_factory(["run", "--device-id", "longl", "--source", "synthetic", "--fps", "5", "--model",
                           str(SHORT), "--labels", str(labels), "--set", "homeassistant.enabled=true",
                           "--set", "homeassistant.labels=" + json.dumps([long])], env=broker.env())
    configs = wait_until(lambda: {t: v for t, v in _retained(broker, "homeassistant/#").items() if "/longl/" in t}
                         or None, scaled(30), what="the configs")
    detected = [json.loads(v) for t, v in configs.items() if t.startswith("homeassistant/binary_sensor/longl/")
                and json.loads(v)["name"].endswith(" detected")]
    assert detected and detected[0]["name"] == f"{long} detected", [d["name"][:40] for d in detected]
    assert all(len(t.encode()) < 1000 for t in configs), [len(t) for t in configs]
    assert _retained(broker, "edge/longl/availability") == {"edge/longl/availability": b"online"}
    assert "Traceback" not in agent.log() and "publisher error" not in agent.log()
