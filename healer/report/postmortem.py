"""The postmortem of one incident, written from the log: a plain JSON-able document.

:func:`build` is pure (events in, document out); :func:`load` reads what it needs with indexed
reads. The Markdown and HTML renderings (:mod:`healer.report.formats`) are views of this
document, so the three formats always agree.

Events of kinds healer does not render specifically yet (approvals, compensations, guardrail
blocks, breakers, restored checkpoints) are recognised by their type family and shown
generically: their time, type and data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from healer.errors import HealerError
from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import FleetState, IncidentView
from healer.knowledge.store import SQLiteEventStore
from healer.render import describe, iso, level_of

SCHEMA = "healer.postmortem/1"

# The phase a component is in after each kind of event (its health row in the timeline chart).
_HEALTH_AFTER: dict[str, str] = {
    T.PROCESS_EXITED: "down",
    T.PROCESS_STARTED: "starting",
    T.PROCESS_ADOPTED: "starting",
    T.COMPONENT_FAILED: "failing",
    T.COMPONENT_RECOVERED: "healthy",
}


@dataclass(frozen=True)
class Targets:
    rto: float | None = None
    rpo: float | None = None


@dataclass(frozen=True)
class IncidentRecord:
    incident: int
    events: list[RecordedEvent]  # the incident's own events
    window: list[RecordedEvent]  # every event from its cause to its close (all components)


async def load(store: SQLiteEventStore, incident: int) -> IncidentRecord:
    own = await store.read_where(0, incident=incident)
    if not own or own[0].type != T.INCIDENT_DETECTED:
        raise HealerError(f"no incident {incident} in this event log")
    cause = own[0].data.get("cause")
    start = int(cause) if isinstance(cause, int) else own[0].position
    window = await store.read_where(start - 1, until=own[-1].position)
    return IncidentRecord(incident, own, window)


def build(rec: IncidentRecord, targets: Mapping[str, Targets] | None = None) -> dict[str, Any]:
    """The postmortem document (see ``docs`` of each key in the Markdown rendering)."""
    targets = targets or {}
    state = FleetState()
    phases: list[dict[str, Any]] = []
    for ev in rec.events:
        before = state.incidents.get(rec.incident)
        old_phase = before.phase if before is not None else None
        state.apply(ev)
        inc = state.incidents[rec.incident]
        if inc.phase != old_phase:
            phases.append({"phase": inc.phase, "at": ev.ts})
    inc = state.incidents[rec.incident]
    t0 = inc.opened_at
    involved = [inc.component, *[s for s in inc.symptoms if s != inc.component]]
    timeline_events = [ev for ev in rec.window if _belongs(ev, rec.incident, involved)]
    closed = _closing(rec.events)

    def rel(ts: float | None) -> float | None:
        return None if ts is None else round(ts - t0, 3)

    timeline = [
        {
            "position": ev.position,
            "t": rel(ev.ts),
            "at": iso(ev.ts),
            "type": ev.type,
            "component": ev.component,
            "level": level_of(ev),
            "text": describe(ev),
        }
        for ev in timeline_events
    ]
    diagnosed = _first(rec.events, T.INCIDENT_DIAGNOSED)
    target = targets.get(inc.component, Targets())
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "incident": inc.id,
        "component": inc.component,
        "status": inc.status,
        "resolution": inc.resolution,
        "failure_class": inc.failure_class,
        "description": diagnosed.data.get("description") if diagnosed else None,
        "root_cause": inc.root_cause,
        "symptoms": list(inc.symptoms),
        "detected_at": iso(t0),
        "closed_at": iso(closed.ts) if closed else None,
        "duration_s": rel(closed.ts) if closed else None,
        "evidence": dict(inc.evidence),
        "timeline": timeline,
        "phases": _phase_rows(inc, phases, timeline_events, involved, closed, t0),
        "actions": [_action(a, t0) for a in inc.actions],
        "decisions": _decisions(rec.events, t0),
        "compensations": _generic(rec.events, ("compensat",), t0),
        "approvals": _approvals(rec.events, t0),
        "guardrails": _guardrails(rec.events, inc, t0),
        "objectives": _objectives(inc, rec.events, target),
    }
    # Disaster recovery, only when there was any (older documents keep their shape).
    recovery = _generic(rec.events, _DR_FAMILIES, t0)
    if recovery:
        doc["recovery"] = recovery
        doc["effects_undone"] = list(inc.effects_undone)
        lineage = [
            {k: e["data"].get(k) for k in ("link", "from", "to", "why")} | {"position": e["position"]}
            for e in recovery
            if e["type"] == T.MODEL_SWAPPED
        ]
        if lineage:
            doc["model_lineage"] = lineage
    doc["summary"] = _summary(doc)
    return doc


_DR_FAMILIES = (
    "checkpoint.",
    "effect.compensated",
    "failover.",
    "flags.restored",
    "model.swapped",
    "agent.paused",
)


# -- pieces --------------------------------------------------------------------------------------
def _belongs(ev: RecordedEvent, incident: int, involved: Sequence[str]) -> bool:
    if ev.incident is not None:
        return ev.incident == incident
    if ev.component is not None:
        return ev.component in involved
    return ev.type.startswith(("daemon.", "policies."))  # a restart or reload mid-incident matters


def _first(events: Sequence[RecordedEvent], etype: str) -> RecordedEvent | None:
    return next((e for e in events if e.type == etype), None)


def _closing(events: Sequence[RecordedEvent]) -> RecordedEvent | None:
    for ev in events[::-1]:
        if ev.type in (T.INCIDENT_RESOLVED, T.INCIDENT_ESCALATED):
            return ev
    return None


def _phase_rows(
    inc: IncidentView,
    phases: list[dict[str, Any]],
    window: Sequence[RecordedEvent],
    involved: Sequence[str],
    closed: RecordedEvent | None,
    t0: float,
) -> list[dict[str, Any]]:
    """Rows of (component, label, segments): the incident's phases, then each component's health."""
    end = max([e.ts for e in window] + [closed.ts if closed else t0])
    rows = [
        {
            "row": f"incident {inc.id}",
            "component": inc.component,
            "segments": _segments([(p["at"], p["phase"]) for p in phases], end, t0),
        }
    ]
    for comp in involved:
        changes = [(t0, "failing")]
        for ev in window:
            if ev.component == comp and ev.type in _HEALTH_AFTER and ev.ts >= t0:
                changes.append((ev.ts, _HEALTH_AFTER[ev.type]))
        rows.append({"row": comp, "component": comp, "segments": _segments(changes, end, t0)})
    return rows


def _segments(changes: list[tuple[float, str]], end: float, t0: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, (at, phase) in enumerate(changes):
        last = i + 1 == len(changes)
        until = end if last else changes[i + 1][0]
        if until <= at and not last:
            continue  # superseded at the same instant (a crash is failing and down at once)
        if out and out[-1]["phase"] == phase:
            out[-1]["end"] = round(until - t0, 3)
            continue
        out.append({"phase": phase, "start": round(at - t0, 3), "end": round(until - t0, 3)})
    return out


def _action(a: Any, t0: float) -> dict[str, Any]:
    return {
        "step": a.step,
        "attempt": a.attempt,
        "actuator": a.actuator,
        "action": a.action,
        "idempotency_key": a.key,
        "started": round(a.started_at - t0, 3),
        "finished": round(a.finished_at - t0, 3) if a.finished_at is not None else None,
        "duration_s": a.detail.get("duration_s"),
        "outcome": a.outcome or "in flight",
        "error": a.detail.get("error"),
    }


def _decisions(events: Sequence[RecordedEvent], t0: float) -> list[dict[str, Any]]:
    out = []
    for ev in events:
        if ev.type not in (T.INCIDENT_PLANNED, T.INCIDENT_ESCALATED):
            continue
        d = ev.data
        out.append(
            {
                "position": ev.position,
                "t": round(ev.ts - t0, 3),
                "decision": "escalate" if ev.type == T.INCIDENT_ESCALATED else d.get("strategy"),
                "policy": d.get("policy"),
                "policy_file": d.get("policy_file"),
                "policy_hash": d.get("policy_hash"),
                "step": d.get("step"),
                "attempt": d.get("attempt"),
                "max_attempts": d.get("max_attempts"),
                "reason": d.get("reason"),
                "rejected": list(d.get("rejected") or []),
            }
        )
    return out


def _generic(events: Sequence[RecordedEvent], families: Sequence[str], t0: float) -> list[dict[str, Any]]:
    return [
        {
            "position": e.position,
            "t": round(e.ts - t0, 3),
            "type": e.type,
            "text": describe(e),
            "data": dict(e.data),
        }
        for e in events
        if any(f in e.type for f in families)
    ]


def _approvals(events: Sequence[RecordedEvent], t0: float) -> list[dict[str, Any]]:
    out = []
    for e in _generic(events, ("approv",), t0):
        d = e["data"]
        who = next((d[k] for k in ("by", "approver", "who", "user", "decided_by") if d.get(k)), None)
        e["who"] = who
        e["when"] = iso(t0 + e["t"])
        out.append(e)
    return out


def _guardrails(events: Sequence[RecordedEvent], inc: IncidentView, t0: float) -> dict[str, Any]:
    waits = []
    for i, ev in enumerate(events):
        nb = ev.data.get("not_before")
        if ev.type == T.INCIDENT_DEFERRED and ev.data.get("guardrail") == "cooldown":
            # Plan held the attempt back; the tick after ``next_allowed_at`` planned it.
            st = ev.data.get("state") or {}
            at = ev.data.get("next_allowed_at")
            used = st.get("attempts_used")
            planned = next((e for e in events[i + 1 :] if e.type == T.INCIDENT_PLANNED), None)
            same_step = planned is not None and planned.data.get("step") == ev.data.get("step")
            waits.append(
                {
                    "position": ev.position,
                    "attempt": used + 1 if isinstance(used, int) else None,
                    "max_attempts": planned.data.get("max_attempts") if same_step and planned else None,
                    "cooldown_s": st.get("delay"),
                    "waited_s": round(max(0.0, float(at) - ev.ts), 3)
                    if isinstance(at, int | float)
                    else None,
                }
            )
        elif ev.type == T.INCIDENT_PLANNED and isinstance(nb, int | float):
            waits.append(
                {
                    "position": ev.position,
                    "attempt": ev.data.get("attempt"),
                    "max_attempts": ev.data.get("max_attempts"),
                    "cooldown_s": ev.data.get("cooldown"),
                    "waited_s": round(max(0.0, float(nb) - ev.ts), 3),
                }
            )
    escalated = _first(events, T.INCIDENT_ESCALATED)
    return {
        "attempts_by_step": {str(k): v for k, v in sorted(inc.attempts.items())},
        "cooldowns": waits,
        "escalation": escalated.data.get("reason") if escalated else None,
        "blocks": _generic(
            events, ("defer", "guardrail", "blocked", "suppress", "silenc", "budget", "breaker"), t0
        ),
    }


def _objectives(inc: IncidentView, events: Sequence[RecordedEvent], target: Targets) -> dict[str, Any]:
    rto = inc.rto_achieved if inc.status == "resolved" else None
    rpo = None
    for ev in events:
        for key in ("rpo_achieved", "rpo_achieved_s"):
            if isinstance(ev.data.get(key), int | float):
                rpo = float(ev.data[key])
    return {
        "rto": _objective(rto, target.rto, "not recovered" if inc.status != "resolved" else None),
        "rpo": _objective(rpo, target.rpo, "no state was restored in this incident" if rpo is None else None),
    }


def _objective(achieved: float | None, target: float | None, why_none: str | None) -> dict[str, Any]:
    met = None if achieved is None or target is None else achieved <= target
    out: dict[str, Any] = {
        "achieved_s": round(achieved, 3) if achieved is not None else None,
        "target_s": target,
        "met": met,
    }
    if achieved is None and why_none:
        out["note"] = why_none
    return out


def _summary(doc: Mapping[str, Any]) -> str:
    acts = doc["actions"]
    verbs = ", ".join(f"{a['action']} ({a['outcome']})" for a in acts) or "no action"
    rto = doc["objectives"]["rto"]
    if doc["status"] == "resolved":
        end = f"resolved ({doc['resolution']}) {rto['achieved_s']:.2f} s after detection"
        if rto["target_s"] is not None:
            end += f", RTO target {rto['target_s']:g} s {'met' if rto['met'] else 'MISSED'}"
    elif doc["status"] == "escalated":
        end = f"escalated to a human: {doc['guardrails']['escalation']}"
    else:
        end = "still open"
    symptoms = f"; symptoms: {', '.join(doc['symptoms'])}" if doc["symptoms"] else ""
    return (
        f"{doc['component']} failed ({doc['failure_class']}); root cause {doc['root_cause']}{symptoms}. "
        f"healer took {len(acts)} action(s): {verbs}; {end}."
    )
