"""How the DR events read to a person: checkpoints, compensations, failover, flags, models."""

from __future__ import annotations

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.render import lines


def _checkpoint(rec: RecordedEvent) -> str:
    d = rec.data
    return f"{d.get('agent')}#{d.get('seq')}" + (f" ({d['label']})" if d.get("label") else "")


@lines(T.CHECKPOINT_REMOVED)
def _removed(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{who}: checkpoint {_checkpoint(rec)} removed by retention: {rec.data.get('reason')}"


@lines(T.CHECKPOINT_CORRUPTED)
def _corrupted(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: checkpoint {_checkpoint(rec)} CORRUPT: {rec.data.get('reason')}"


@lines(T.CHECKPOINT_RESTORED)
def _restored(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: checkpoint {_checkpoint(rec)} restored"


@lines(T.EFFECT_COMPENSATED)
def _compensated(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    return f"{inc}{who}: undid {d.get('effect')} ({d.get('what')}), key {d.get('idempotency_key')}"


@lines(T.FAILOVER_FENCED)
def _fenced(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    return f"{inc}{who}: role {d.get('role')} fenced: token {d.get('token')} -> {d.get('holder')}"


@lines(T.FLAGS_RESTORED)
def _flags(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: flags restored at {rec.data.get('where')}: {rec.data.get('restored')}"


@lines(T.MODEL_SWAPPED)
def _model(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    why = d.get("why") or {}
    return (
        f"{inc}{who}: model {d.get('link')} {d.get('from')} -> {d.get('to')} "
        f"(because {why.get('failure_class')} on {why.get('component')})"
    )


@lines(T.AGENT_PAUSED)
def _paused(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    return f"{inc}{who}: agent {d.get('agent')} paused (acknowledged in {d.get('waited_s', 0):.2f}s)"


def _objectives_level(rec: RecordedEvent) -> str:
    return "warning" if rec.data.get("rto_missed") or rec.data.get("rpo_missed") else "info"


@lines(T.OBJECTIVES_MEASURED, level=_objectives_level)
def _objectives(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    parts = []
    for name in ("rto", "rpo"):
        achieved, target = d.get(f"{name}_achieved"), d.get(f"{name}_target")
        if not isinstance(achieved, int | float):
            continue
        verdict = "" if target is None else (" MISSED" if d.get(f"{name}_missed") else " met")
        goal = "" if target is None else f" (target {target:g}s)"
        parts.append(f"{name.upper()} {achieved:.2f}s{goal}{verdict}")
    return f"{inc}{who}: objectives: {', '.join(parts) or 'nothing measured'}"
