"""The command table: each remote command and the handler that answers it.

With several model slots, `deploy`, `rollback` and `list-models` name what they act on: a shared
model (`"model": NAME`) or pipelines (`"pipelines": [...]`); with one slot they need neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge_agent.commands import ACCEPTED, Command, Rejected, no_args
from edge_agent.ota.manifest import ManifestError, parse_manifest
from edge_agent.reload import apply_reload

if TYPE_CHECKING:
    from edge_agent.agent import Agent
    from edge_agent.slots import ModelSlot

Handler = Callable[[Command], dict[str, Any]]
_TARGET_KEYS = {"model", "pipelines"}


def register_commands(agent: Agent) -> None:
    table: dict[str, Handler] = {
        "ping": lambda cmd: ping(agent, cmd),
        "status": lambda cmd: status(agent, cmd),
        "reload": lambda cmd: reload(agent, cmd),
    }
    if any(s.updater is not None for s in agent.slots.values()):
        # each under the reload lock: a reload (SIGHUP, on the main loop) removing or rebuilding the slot a
        # deploy names, while the command is taken, would leave it queued on an updater that has ended
        table |= {
            "deploy": lambda cmd: _serialised(agent, deploy, cmd),
            "rollback": lambda cmd: _serialised(agent, rollback, cmd),
            "list-models": lambda cmd: _serialised(agent, list_models, cmd),
        }
    elif any(s.read_only for s in agent.slots.values()):  # updates are known, and cannot be done here
        why = next(s.read_only for s in agent.slots.values() if s.read_only)
        table |= {
            "deploy": lambda cmd: _refuse(why),
            "rollback": lambda cmd: _refuse(why),
            "list-models": lambda cmd: list_models(agent, cmd),
        }
    for name, handler in table.items():
        agent.commands.register(name, handler)


def _serialised(agent: Agent, handler: Callable[[Agent, Command], dict[str, Any]], cmd: Command) -> dict[str, Any]:
    with agent.reload_lock:
        return handler(agent, cmd)


def _refuse(why: str | None) -> dict[str, Any]:
    raise Rejected(str(why))


def ping(agent: Agent, cmd: Command) -> dict[str, Any]:
    no_args(cmd)
    return {"pong": round(time.time(), 3), "boot_id": agent.boot_id}


def status(agent: Agent, cmd: Command) -> dict[str, Any]:
    no_args(cmd)
    h = agent.health.document()
    keys = ("status", "problems", "uptime_s", "fps", "accelerator", "model") + (("pipelines",) if agent.multi else ())
    return {k: h[k] for k in keys}


def reload(agent: Agent, cmd: Command) -> dict[str, Any]:
    no_args(cmd)
    if agent.reloader is None:
        raise Rejected("this agent was started without a configuration file to reload")
    applied = apply_reload(agent)
    out: dict[str, Any] = {"applied": applied, "restart_needed": agent.restart_needed}
    if agent.refused_pipelines:
        out["refused_pipelines"] = agent.refused_pipelines
    return out


def target_slots(agent: Agent, args: dict[str, Any]) -> list[ModelSlot]:
    """The slots a command names; with one slot, that one (a read-only store counts: it can be listed)."""
    slots = [s for s in agent.slots.values() if s.updater is not None or s.read_only]
    if "model" in args:
        name = args["model"]
        found = [s for s in slots if s.ref == name or s.name == name]
        if not found:
            raise Rejected(f"no model '{name}' here (models: {', '.join(sorted({s.ref for s in slots}))})")
        return found
    if "pipelines" in args:
        names = args["pipelines"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise Rejected("'pipelines' must be a non-empty list of pipeline names")
        unknown = [n for n in names if agent.slot_of(n) is None]
        if unknown:
            raise Rejected(f"unknown pipeline(s): {', '.join(unknown)}")
        found = []
        for n in names:
            slot = agent.slot_of(n)
            assert slot is not None
            others = [p for p in slot.pipelines if p not in names]
            if others:
                raise Rejected(
                    f"pipeline {n} shares model '{slot.ref}' with {', '.join(others)}: "
                    f"name the model, or all of its pipelines"
                )
            if slot not in found:
                found.append(slot)
        return found
    if len(slots) == 1:
        return slots
    raise Rejected(
        "this device runs several models: name the one to act on ('model': "
        f"{', '.join(sorted({s.ref for s in slots}))}) or the pipelines ('pipelines': [...])"
    )


def deploy(agent: Agent, cmd: Command) -> dict[str, Any]:
    if "manifest" not in cmd.args or set(cmd.args) - {"manifest"} - _TARGET_KEYS:
        raise Rejected('\'deploy\' takes args {"manifest": {...}} and optionally "model" or "pipelines"')
    slots = target_slots(agent, cmd.args)
    try:
        m = parse_manifest(cmd.args["manifest"])
        for slot in slots:  # all or none: check every slot before queueing on any
            assert slot.updater is not None
            slot.updater.check(m)
        for slot in slots:
            assert slot.updater is not None
            slot.updater.submit(m)
    except ManifestError as err:
        raise Rejected(str(err)) from None
    out: dict[str, Any] = {ACCEPTED: "accepted", "name": m.name, "version": m.version}
    if agent.multi:
        out["models"] = [s.name for s in slots]
    return out


def rollback(agent: Agent, cmd: Command) -> dict[str, Any]:
    """Undo the latest update; with `"version"`, only that release, and only where it is still on its
    way, on probation or serving (a fleet's rollout names it: what a device's own probation undid as
    the command arrived is not undone twice). Each slot decides under its update lock; the answer says
    what serves now where something was undone."""
    if set(cmd.args) - _TARGET_KEYS - {"version"}:
        raise Rejected("'rollback' takes no args, or \"version\" (the release to undo), \"model\" or \"pipelines\"")
    version = cmd.args.get("version")
    if version is not None and (type(version) is not int or version < 1):
        raise Rejected("'version' must be a positive whole number")
    slots = target_slots(agent, cmd.args)
    if version is None:
        for slot in slots:  # all or none
            assert slot.updater is not None and slot.store is not None
            if not slot.store.state.get("current") and not slot.updater.pending:  # an update on its way is cancelled
                raise Rejected(f"no installed update to roll back from{f' ({slot.name})' if agent.multi else ''}")
    now = {}
    for slot in slots:
        assert slot.updater is not None and slot.store is not None
        if slot.updater.rollback("manual rollback", version=version):
            now[slot.name] = slot.store.state.get("current")
    if not now:
        raise Rejected(
            "no installed update to roll back from" if version is None else
            f"version {version} is not on its way, on probation or serving here: nothing to undo"
        )
    return {"now": next(iter(now.values()))} if not agent.multi else {"now": now}


def list_models(agent: Agent, cmd: Command) -> dict[str, Any]:
    if set(cmd.args) - _TARGET_KEYS:
        raise Rejected("'list-models' takes no args, or \"model\" or \"pipelines\"")
    if not agent.multi or cmd.args:
        slots = target_slots(agent, cmd.args)
    else:
        slots = [s for s in agent.slots.values() if s.store is not None]
    docs = {s.name: _versions(s) for s in slots}
    return docs[slots[0].name] if not agent.multi else {"models": docs}


def _versions(slot: ModelSlot) -> dict[str, Any]:
    assert slot.store is not None
    st = slot.store.state
    return {
        "versions": slot.store.versions(),
        "current": st.get("current"),
        "previous": st.get("previous"),
        "highest_version": st.get("highest_version"),
        "history": st.get("history", [])[-10:],
    }
