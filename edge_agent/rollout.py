"""Staged rollouts: a canary first, then waves, each started only once the one before is active and
healthy for a soak time; halted (and optionally rolled back) when a wave fails more than it may.

The shape of Mender's phased deployments and Greengrass's rollout configuration, driven from the
fleet host over the same MQTT contract as `fleet push`. The whole plan and every device's progress
live in a local JSON file, written atomically at every change, so a fleet host that restarts resumes
where it was (`edge-agent fleet rollout --resume FILE`): devices that already have the deploy (their
retained `model/state` names its digest) are followed, never sent it twice.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.config import MQTTConfig, topic_level
from edge_agent.fleet import UNREACHED, _connect, _give_up_on_silent
from edge_agent.ota.manifest import Manifest
from edge_agent.ota.store import atomic_write
from edge_agent.ota.updater import TERMINAL
from edge_agent.sinks.mqtt import Subscriber
from edge_agent.topics import device_pattern
from edge_agent.untrusted import document, plain, real

#: device states that count against a wave
FAILED = ("rejected", "failed", "rolled_back", "superseded", "unhealthy", *UNREACHED)
#: device states in which a halted wave's rollback has nothing to undo: never sent, refused or undone there
_NOTHING_TO_UNDO = ("pending", "rejected", "failed", "rolled_back", "superseded", "rolled_back_by_rollout")
#: the least time a halted wave's devices are given, together, to confirm their rollback
ROLLBACK_WAIT_S = 30.0


def share(spec: str, total: int) -> int:
    """A count ("3") or a share of the fleet ("25%", rounded up, at least one) as a number of devices."""
    spec = spec.strip()
    if spec.endswith("%"):
        pct = float(spec[:-1])
        if not 0 < pct <= 100:
            raise ValueError(f"{spec}: a share is above 0% and at most 100%")
        return min(total, max(1, math.ceil(total * pct / 100)))
    n = int(spec)
    if n < 0:
        raise ValueError(f"{spec}: a count is 0 or more")
    return min(total, n)


def plan_waves(devices: list[str], canary: str, waves: list[str]) -> list[list[str]]:
    """Split devices (in a stable order) into the canary and the waves after it. Each wave's spec is the
    share of the whole fleet reached once it is done (cumulative, like Mender's phases); the last wave
    always takes whatever is left, and empty waves are dropped."""
    order = sorted(set(devices))
    out: list[list[str]] = []
    done = share(canary, len(order)) if order else 0
    if done:
        out.append(order[:done])
    for spec in waves:
        upto = max(done, share(spec, len(order)))
        if upto > done:
            out.append(order[done:upto])
            done = upto
    if done < len(order):
        out.append(order[done:])
    return out


class Wave(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    devices: list[str]
    state: str = "pending"  # pending | deploying | soaking | passed | halted
    started: float | None = None
    #: when every device of the wave was active: the soak runs from here
    active_at: float | None = None


class DeviceProgress(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wave: int
    state: str = "pending"  # pending | sent | accepted | an OTA state | unhealthy | rolled back by the rollout
    reason: str | None = None
    #: the device's last health status seen during its wave's soak
    health: str | None = None
    ts: float | None = None


class Rollout(BaseModel):
    """The whole rollout, as written to its state file."""

    model_config = ConfigDict(extra="forbid")
    id: str
    created: float
    manifest: dict[str, Any]
    target: dict[str, Any] | None = None
    soak_s: float = Field(ge=0)
    max_failures: str = Field(description="Failures a wave may have: a count or a share of the wave.")
    rollback: bool = Field(description="On a halt, roll the halted wave's updated devices back.")
    answer_s: float = 10.0
    wave_timeout_s: float = 1800.0
    waves: list[Wave]
    devices: dict[str, DeviceProgress]
    status: str = "running"  # running | halted | completed
    reason: str | None = None
    #: where the model is served from (`--serve`): a resumed rollout serves it again at the same address
    serve: dict[str, Any] | None = None

    def save(self, path: Path) -> None:
        atomic_write(path, self.model_dump_json(indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> Rollout:
        return cls.model_validate_json(path.read_bytes())

    def failures(self, wave: int) -> list[str]:
        return [d for d in self.waves[wave].devices if self.devices[d].state in FAILED]

    def allowed(self, wave: int) -> int:
        spec = self.max_failures
        n = len(self.waves[wave].devices)
        return math.floor(n * float(spec[:-1]) / 100) if spec.endswith("%") else int(spec)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "reason": self.reason,
            "version": self.manifest.get("version"),
            "waves": [
                {"name": w.name, "state": w.state, "devices": {d: self.devices[d].state for d in w.devices}}
                for w in self.waves
            ],
        }


def new_rollout(
    manifest: Manifest,
    devices: list[str],
    canary: str,
    waves: list[str],
    soak_s: float,
    max_failures: str,
    rollback: bool,
    target: dict[str, Any] | None = None,
    answer_s: float = 10.0,
    wave_timeout_s: float = 1800.0,
) -> Rollout:
    share(max_failures if max_failures.strip() else "0", 100)  # the same syntax, checked now
    groups = plan_waves(devices, canary, waves)
    names = ["canary", *[f"wave {i}" for i in range(1, len(groups))]] if share(canary, len(devices)) else [
        f"wave {i}" for i in range(1, len(groups) + 1)
    ]
    return Rollout(
        id=f"rollout-{uuid.uuid4().hex[:10]}",
        created=round(time.time(), 3),
        manifest=manifest.model_dump(mode="json"),
        target=target,
        soak_s=soak_s,
        max_failures=max_failures,
        rollback=rollback,
        answer_s=answer_s,
        wave_timeout_s=wave_timeout_s,
        waves=[Wave(name=n, devices=g) for n, g in zip(names, groups, strict=True)],
        devices={d: DeviceProgress(wave=i) for i, g in enumerate(groups) for d in g},
    )


def group_members(cfg: MQTTConfig, group: str, wait_s: float = 2.0) -> list[str]:
    """Devices whose retained `info` lists the group (every device that has ever connected leaves one)."""
    prefix = cfg.topic_prefix
    sub = Subscriber(cfg, [device_pattern(prefix, None, "info")])
    _connect(sub, cfg)
    found: set[str] = set()
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            m = sub.get(0.1)
            if m is None:
                continue
            doc = document(m[1])
            if doc is None:
                continue
            groups = doc.get("groups")
            # the device whose topic it is, named as devices are (one topic level: what a deploy is sent to
            # and what the rollout prints), not whatever name a document under another device's topic gives
            device = m[0][len(cfg.topic_prefix) + 1 :].split("/", 1)[0]
            # a list, not any container: "kitchen" is not in the group "kitchen-west" (a string would say it is)
            if isinstance(groups, list) and group in groups and doc.get("device_id") == device and _named(device):
                found.add(device)
    finally:
        sub.stop()
    return sorted(found)


def _named(device: str) -> bool:
    try:
        topic_level(device)
    except ValueError:
        return False
    return True


@dataclass
class _Seen:
    availability: dict[str, str]
    #: each device's latest state document for this rollout's model
    states: dict[str, dict[str, Any]]


class Runner:
    """Drives one rollout to completion or a halt; every change is written to the state file first."""

    def __init__(self, cfg: MQTTConfig, plan: Rollout, path: Path, out: Any):
        self.cfg, self.plan, self.path, self.out = cfg, plan, path, out
        self.sha, self.version = str(plan.manifest["sha256"]), plan.manifest["version"]
        self.seen = _Seen({}, {})
        prefix = cfg.topic_prefix
        self.sub = Subscriber(
            cfg,
            [
                device_pattern(prefix, None, "model/state"),
                device_pattern(prefix, None, "models/+/state"),
                device_pattern(prefix, None, "cmd/result"),
                device_pattern(prefix, None, "availability"),
                device_pattern(prefix, None, "health"),
            ],
        )

    def say(self, text: str) -> None:
        print(f"{self.plan.id}: {text}", file=self.out, flush=True)

    def save(self) -> None:
        self.plan.save(self.path)

    def run(self) -> Rollout:
        _connect(self.sub, self.cfg)
        try:
            self._drain(1.0)  # the retained states first: a resumed rollout must not deploy twice
            for i, wave in enumerate(self.plan.waves):
                if self.plan.status != "running":
                    break
                if wave.state == "passed":
                    continue
                self._wave(i)
            if self.plan.status == "running":
                self.plan.status = "completed"
                self.say(f"completed: {len(self.plan.devices)} devices on version {self.plan.manifest['version']}")
            self.save()
        finally:
            self.sub.stop()
        return self.plan

    # --- one wave ------------------------------------------------------------------------------
    def _wave(self, i: int) -> None:
        wave, plan = self.plan.waves[i], self.plan
        cid = f"{plan.id}-w{i}"
        if wave.state == "pending":
            wave.state, wave.started = "deploying", round(time.time(), 3)
            self.save()
            self.say(f"{wave.name}: deploying to {len(wave.devices)} device(s): {', '.join(wave.devices)}")
        if wave.state == "deploying":
            self._deploy(i, cid)
        if plan.status == "running" and wave.state == "soaking":
            self._soak(i)
        if plan.status == "running" and wave.state == "soaking":
            wave.state = "passed"
            self.save()
            self.say(f"{wave.name}: passed ({len(wave.devices)} active and healthy for {plan.soak_s:g} s)")

    def _deploy(self, i: int, cid: str) -> None:
        plan, wave = self.plan, self.plan.waves[i]
        cmd = json.dumps(
            {"id": cid, "command": "deploy", "args": {"manifest": plan.manifest, **(plan.target or {})}}
        ).encode()
        sent_at = time.monotonic()
        for d in wave.devices:
            p = plan.devices[d]
            known = self.seen.states.get(d)
            if known is not None:  # resumed: the device has it already
                p.state, p.reason = known["state"], known.get("reason")
            elif p.state in ("pending", "sent"):
                p.state, p.ts = "sent", round(time.time(), 3)
                self.sub.publish(device_pattern(self.cfg.topic_prefix, d, "cmd"), cmd)
        self.save()
        deadline = time.monotonic() + plan.wave_timeout_s
        while time.monotonic() < deadline:
            status = {d: {"state": plan.devices[d].state} for d in wave.devices}
            before = dict(status)
            _give_up_on_silent(status, self.seen.availability, time.monotonic() - sent_at, plan.answer_s, self.out)
            for d, st in status.items():
                if st is not before[d]:
                    plan.devices[d].state, plan.devices[d].reason = st["state"], st.get("reason")
                    self.save()
            if self._halt_if_failed(i):
                return
            if all(plan.devices[d].state in (*TERMINAL, *FAILED) for d in wave.devices):
                break
            self._step(0.2, cid)
        else:
            for d in wave.devices:
                if plan.devices[d].state not in (*TERMINAL, *FAILED):
                    plan.devices[d].state, plan.devices[d].reason = "failed", "no verdict within the wave's timeout"
        if self._halt_if_failed(i):
            return
        wave.state, wave.active_at = "soaking", round(time.time(), 3)
        for d in wave.devices:
            plan.devices[d].health = None
        self.save()
        self.say(f"{wave.name}: active on {len(wave.devices) - len(plan.failures(i))} device(s); soaking "
                 f"{plan.soak_s:g} s")

    def _soak(self, i: int) -> None:
        """Active and healthy for the soak time: still on the model, online, and health `ok` (at least one
        health report from each device, none other than ok)."""
        plan, wave = self.plan, self.plan.waves[i]
        until = (wave.active_at or time.time()) + plan.soak_s
        while True:
            for d in wave.devices:
                p = plan.devices[d]
                if p.state in FAILED:
                    continue
                if self.seen.availability.get(d, "online") != "online":
                    p.state, p.reason = "unhealthy", f"went {self.seen.availability[d]} during the soak"
                elif p.health not in (None, "ok"):
                    p.state, p.reason = "unhealthy", f"health {p.health} during the soak"
                else:
                    continue
                self.save()
                self.say(f"{d}: {p.state}: {p.reason}")
            if self._halt_if_failed(i):
                return
            if time.time() >= until:
                break
            self._step(min(0.2, max(0.01, until - time.time())), None)
        for d in wave.devices:
            p = plan.devices[d]
            if p.state not in FAILED and p.health is None:
                p.state, p.reason = "unhealthy", "no health report during the soak"
        self.save()
        self._halt_if_failed(i)

    def _halt_if_failed(self, i: int) -> bool:
        plan, wave = self.plan, self.plan.waves[i]
        failed = plan.failures(i)
        if len(failed) <= plan.allowed(i):
            return False
        wave.state, plan.status = "halted", "halted"
        plan.reason = (
            f"{wave.name}: {len(failed)} of {len(wave.devices)} device(s) failed, more than the "
            f"{plan.max_failures} allowed: " + "; ".join(f"{d}: {plan.devices[d].reason or plan.devices[d].state}"
                                                       for d in failed[:5])
        )
        self.save()
        self.say(f"halted: {plan.reason}")
        if plan.rollback:
            self._rollback(i)
        return True

    def _rollback(self, i: int) -> None:
        """The halted wave's devices that may hold the model go back to the one before: every device the
        deploy went to, bar those that refused it or undid it themselves. One that had not answered the
        deploy (or not within the answer time) may still be installing it, so it is asked too; the
        command topic keeps its order, so it hears the deploy first. All are asked at once and their
        answers awaited together: a device busy swapping its model (seconds on a loaded board) delays
        none of the others, and each has the whole wait."""
        plan = self.plan
        asked: dict[str, str] = {}
        for d in plan.waves[i].devices:
            if plan.devices[d].state in _NOTHING_TO_UNDO:
                continue
            cid = f"{plan.id}-rb-{d}"
            # the release is named: where the device's own probation undid it as this was sent, the
            # rollback is refused instead of undoing the release that served before it
            args = {"version": self.version, **(plan.target or {})}
            self.sub.publish(device_pattern(self.cfg.topic_prefix, d, "cmd"),
                             json.dumps({"id": cid, "command": "rollback", "args": args}).encode())
            asked[cid] = d
        wait_s = max(plan.answer_s, ROLLBACK_WAIT_S)
        deadline = time.monotonic() + wait_s
        while asked and time.monotonic() < deadline:
            answer = self._step(0.2, None, want=asked)
            if answer is None:
                continue
            d = asked.pop(str(answer["id"]))
            p = plan.devices[d]
            if answer.get("status") == "done":
                p.state, p.reason = "rolled_back_by_rollout", "rolled back with the halted wave"
            elif p.state in _NOTHING_TO_UNDO:
                # it undid the release itself while the rollback was on its way (its probation ended):
                # its own state and reason stand, and the refusal says only that nothing was left to undo
                self.say(f"{d}: already {p.state}; the rollback found nothing to undo")
                continue
            else:
                p.reason = f"rollback refused: {answer.get('reason') or answer.get('status')}"
            self.save()
            self.say(f"{d}: {p.reason}")
        for d in asked.values():
            plan.devices[d].reason = f"rollback not confirmed within {wait_s:g} s"
            self.save()
            self.say(f"{d}: {plan.devices[d].reason}")

    # --- what the devices say ------------------------------------------------------------------
    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._step(0.1, None)

    def _step(self, timeout: float, cid: str | None, want: Container[str] = ()) -> dict[str, Any] | None:
        m = self.sub.get(timeout)
        if m is None:
            return None
        topic, payload, _ = m
        prefix = self.cfg.topic_prefix
        device = topic[len(prefix) + 1 :].split("/", 1)[0]
        if topic.endswith("/availability"):
            self.seen.availability[device] = payload.decode("utf-8", "replace")
            return None
        doc = document(payload)  # anything may publish under the prefix: only an object is read
        if doc is None:
            return None
        p = self.plan.devices.get(device)
        if topic.endswith("/cmd/result"):
            if isinstance(doc.get("id"), str) and doc["id"] in want:
                return doc
            if p is not None and cid is not None and doc.get("id") == cid and p.state == "sent":
                if doc.get("status") == "rejected":
                    p.state, p.reason = "rejected", doc.get("reason")
                else:
                    p.state = "accepted"
                self.save()
            return None
        if topic.endswith("/health"):
            if p is not None and self.plan.waves[p.wave].state == "soaking" and p.state == "active":
                # only reports from after the wave went active count (a time that is no number: none)
                if (real(doc.get("ts")) or 0.0) >= (self.plan.waves[p.wave].active_at or 0):
                    p.health = plain(doc.get("status"))
            return None
        if doc.get("sha256") != self.sha or doc.get("version") != self.version:  # the same file may go out twice
            return None
        self.seen.states[device] = doc
        if p is not None and p.state not in ("pending", "rolled_back_by_rollout", "unhealthy"):
            if p.state != doc.get("state"):
                reason = doc.get("reason")
                p.state, p.ts = plain(doc.get("state")), real(doc.get("ts"))
                p.reason = plain(reason) if reason else None
                self.save()
                if p.state in (*TERMINAL, *FAILED):
                    why = f" ({p.reason})" if p.reason else ""
                    self.say(f"{device}: {p.state}{why}")
        return None
