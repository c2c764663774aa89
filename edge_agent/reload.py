"""SIGHUP and the `reload` command: the configuration read again, what changes live applied, and each
pipeline added, removed or restarted alone while the others run on.

A running pipeline is never stopped for settings that cannot start. One that no longer validates is
refused while the file is read (`config.load_settings_keeping` gives the reasons). One whose model
misfits its source, needs a missing delegate, or names a label the kept model never produces is refused
here (`_refused_restart`). Settings that need the process restarted (the broker, the runtime) are named,
not applied.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edge_agent.config import ConfigError, PipelineView, Settings, pipeline_views
from edge_agent.model import NOT_FRAMES, misfit
from edge_agent.modelfile import ModelError, read_model_file
from edge_agent.runtime.delegate import find_library
from edge_agent.scene import labels_problem
from edge_agent.signals import signal_kind
from edge_agent.sinks import Message

if TYPE_CHECKING:
    from edge_agent.agent import Agent

__all__ = ["add_pipeline", "apply_reload", "changed_keys", "check_models", "remove_pipeline"]

log = logging.getLogger(__name__)

#: Settings a running agent takes on SIGHUP without touching its broker connection or models.
_LIVE_SECTIONS = ("health", "source", "pipelines")
_LIVE_KEYS = (
    "log_level", "model.score_threshold", "model.iou_threshold", "model.top_k", "model.max_detections",
    "homeassistant.labels", "homeassistant.off_delay_s", "homeassistant.state_interval_s",
)
#: How long a reload waits for a removed model's update thread to end (an update under way gives way
#: at its next check, within a second unless a download's read is stalled).
_UPDATER_WAIT_S = 5.0


def changed_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two dumps of the settings."""
    out = []
    for k in a.keys() | b.keys():
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(changed_keys(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def apply_reload(agent: Agent) -> list[str]:
    """Re-read the configuration; apply what can change live (pipelines included: added, removed or
    changed ones restart alone), report what needs a restart. One at a time: SIGHUP is taken on the
    main loop, the command on the command processor's thread."""
    with agent.reload_lock:
        return _reload(agent)


def _reload(agent: Agent) -> list[str]:
    if agent.reloader is None:
        return []
    try:
        new, refused = agent.reloader(agent.settings)
    except ConfigError as err:
        log.error("reload rejected, keeping the running configuration: %s", err)
        agent.note_error(f"reload rejected: {err}")
        return []
    agent.refused_pipelines = refused
    for name, why in refused.items():
        log.error("pipeline %s refused, keeping the running one: %s", name, why)
    old = agent.settings
    changed = sorted(changed_keys(old.model_dump(), new.model_dump()))
    if agent.multi and new.pipelines:
        live = [k for k in changed if k.split(".")[0] in _LIVE_SECTIONS or k in _LIVE_KEYS]
    else:
        live = [k for k in changed if k.split(".")[0] in ("health", "source", "scene") or k in _LIVE_KEYS]
    agent.restart_needed = [k for k in changed if k not in live]
    agent.settings = new
    if agent.multi and new.pipelines:
        kept = _reload_pipelines(agent, old, new)
        for name, why in kept.items():
            log.error("pipeline %s refused, keeping the running one: %s", name, why)
        if kept:  # the settings say what runs, as for pipelines refused while the file was read
            agent.refused_pipelines = {**refused, **kept}
            running = {p.name: p for p in old.pipelines}
            agent.settings = new.model_copy(
                update={"pipelines": [running[p.name] if p.name in kept else p for p in new.pipelines]}
            )
    else:
        only = next(iter(agent.pipelines.values()), None)
        if only is not None:
            only.apply(pipeline_views(new)[0], live)
    logging.getLogger("edge_agent").setLevel(new.log_level)
    agent.discovery.refresh()  # labels, and pipelines that came or went
    agent.clear_stale_retained()  # zones that went
    agent.reloads += 1
    log.info("configuration reloaded; applied %s", ", ".join(live) or "nothing")
    if agent.restart_needed:
        log.warning("changed settings that need a restart: %s", ", ".join(agent.restart_needed))
    return live


def _reload_pipelines(agent: Agent, old: Settings, new: Settings) -> dict[str, str]:
    """Pipelines added, removed, restarted or changed live. Returns those whose new settings were refused
    before the running pipeline was stopped (a model that cannot run on its source or needs a missing
    delegate, a label its model never produces), with why: they run on as they were."""
    refused: dict[str, str] = {}
    before = {v.name: v for v in pipeline_views(old)}
    after = {v.name: v for v in pipeline_views(new)}
    for name in before.keys() - after.keys():
        remove_pipeline(agent, name, forget=True)
        log.info("pipeline %s removed", name)
    for name, view in after.items():
        prev = before.get(name)
        if prev is None or name in agent.failed_pipelines:
            add_pipeline(agent, view)
            continue
        diff = changed_keys(prev.settings.model_dump(), view.settings.model_dump())
        heavy = [k for k in diff if k.startswith(("model.", "signal.")) and k not in _LIVE_KEYS]
        if prev.slot != view.slot or heavy or (diff and agent.pipelines[name].kind == "signal"):
            why = _refused_restart(agent, prev, view)
            if why is not None:  # the running pipeline stays, as for settings that do not validate
                refused[name] = why
                continue
            remove_pipeline(agent, name)
            add_pipeline(agent, view, checked=True)
            log.info("pipeline %s restarted (%s)", name, ", ".join(diff))
        elif diff:
            agent.pipelines[name].apply(view, diff)
            log.info("pipeline %s: applied %s", name, ", ".join(diff))
    agent.publish_retained()
    return refused


def _refused_restart(agent: Agent, prev: PipelineView, view: PipelineView) -> str | None:
    """Why a running pipeline's new settings cannot start, where that is known before it is stopped: its
    model misfits the source or needs a delegate the board lacks (`check_models`), or, where the model
    stays, they name a label it never produces."""
    try:
        check_models([view])
    except ConfigError as err:
        return str(err)
    pm, vm = prev.settings.model, view.settings.model
    model = agent.model_of(view.name)
    if model is None or prev.slot != view.slot or (pm.path, pm.labels, pm.task) != (vm.path, vm.labels, vm.task):
        return None  # another model: its labels are known once it loads
    return labels_problem(view.settings, model.produced_labels, None if view.legacy else view.name)


def add_pipeline(agent: Agent, view: PipelineView, checked: bool = False) -> None:
    """checked: `check_models` has passed it already."""
    try:
        if not checked:
            check_models([view])
        pipe = agent.build_pipeline(view)
    except (ModelError, ConfigError) as err:
        log.error("pipeline %s not started: %s", view.name, err)
        agent.failed_pipelines[view.name] = str(err)
        return
    agent.failed_pipelines.pop(view.name, None)
    agent.pipelines[view.name] = pipe
    slot = agent.slot_of(view.name)
    if slot is not None and slot.updater is None:
        agent.start_slot_updates(slot)
    pipe.start()
    log.info("pipeline %s started", view.name)


def remove_pipeline(agent: Agent, name: str, forget: bool = False) -> None:
    """Stop a pipeline and let go of its model. forget: it is gone from the configuration, so the
    broker forgets its retained state too (zone counts, snapshots, and its model's update state
    when no other pipeline shares the model), as Home Assistant forgets its entities; a pipeline
    restarted with a changed configuration publishes its own."""
    agent.failed_pipelines.pop(name, None)
    pipe = agent.pipelines.pop(name, None)
    if pipe is not None:
        pipe.stop_and_join(2.0)
        if forget:
            for topic in list(pipe.retained):
                agent.fanout.state(Message(topic, b"", qos=1, retain=True))
    agent.fanout.routes.pop(name, None)
    agent.fanout.live.pop(name, None)
    slot = agent.slot_of(name)
    if slot is not None:
        slot.pipelines.remove(name)
        if not slot.pipelines:  # the last pipeline of a slot: its model goes too
            if slot.updater in agent.fanout.probation:
                agent.fanout.probation.remove(slot.updater)
            slot.close(_UPDATER_WAIT_S, f"pipeline {name} was {'removed' if forget else 'restarted'} during "
                       "probation (not counted as a crash of the model)", say=not forget)
            del agent.slots[slot.name]
            if forget:
                agent.fanout.clear_in_order(slot.state_topic)


def check_models(views: list[PipelineView]) -> None:
    """A pipeline whose model needs a delegate library this board lacks, or cannot run on its source (an
    audio model on a camera, a detector on a microphone), is a configuration error (exit 2)."""
    for v in views:
        path = v.settings.model.path
        if path is None:
            continue
        try:
            needs = read_model_file(path).required_delegates()
        except ModelError:
            continue  # unreadable models are the loader's to explain
        for need in needs:
            lib = need.split()[0]
            if find_library(lib) is None:
                raise ConfigError(
                    f"pipelines[{v.name}].model.path: {path} is compiled for {need}, but {lib} is not installed"
                )
        signal = signal_kind(v.settings.source.uri) is not None
        why = misfit(path, signal, v.settings.model.task)
        if why is not None:
            raise ConfigError(f"pipelines[{v.name}].model.path: {path} {why}" + ("" if signal else f": {NOT_FRAMES}"))
