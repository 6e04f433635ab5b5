"""Analyze: a pure function of (knowledge snapshot, new event, clock reading).

It opens incidents for new failures, folds repeated observations into the open incident,
and judges verification (did the component come back after the action?). No I/O and no
clock of its own: the same inputs always give the same decisions, which is what replay
relies on.
"""

from __future__ import annotations

from typing import Any

from healer.analyze.taxonomy import Taxonomy
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState, IncidentView


def analyze(
    state: FleetState, ev: RecordedEvent, now: float, taxonomy: Taxonomy, supervised: frozenset[str]
) -> list[Event]:
    """Decisions caused by ``ev``; ``state`` already includes ``ev``."""
    if ev.component is None:
        return []
    if ev.type == T.PROCESS_EXITED:
        if ev.data.get("expected"):
            return []
        facts: dict[str, Any] = {"observation": ev.type, "supervised": True, "process_alive": False}
        facts.update({k: ev.data[k] for k in ("exit_code", "signal", "pid") if k in ev.data})
        return _on_failure(state, ev, now, taxonomy, facts, "process exited")
    if ev.type == T.COMPONENT_FAILED:
        comp = state.component(ev.component)
        is_supervised = ev.component in supervised
        facts = {
            "observation": ev.type,
            "supervised": is_supervised,
            "process_alive": comp.process_running if is_supervised else None,
            "health": "failing",
            "failing_probes": list(ev.data.get("failing", [])),
            "probes": ev.data.get("probes", {}),
        }
        return _on_failure(state, ev, now, taxonomy, facts, "health checks failing")
    if ev.type == T.COMPONENT_RECOVERED:
        return _on_recovery(state, ev, now)
    return []


def _on_failure(
    state: FleetState, ev: RecordedEvent, now: float, taxonomy: Taxonomy, facts: dict[str, Any], why: str
) -> list[Event]:
    comp = ev.component
    assert comp is not None
    inc = state.active_for(comp)
    if inc is not None:
        # A process dying under verification fails the attempt; any other repeat observation
        # belongs to the incident already open (deduplication: no second incident).
        if inc.phase == "verifying" and ev.type == T.PROCESS_EXITED:
            return [
                Event(
                    T.VERIFICATION_FAILED,
                    now,
                    comp,
                    inc.id,
                    {
                        "reason": f"process exited during verification ({_exit_text(ev.data)})",
                        "cause": ev.position,
                    },
                )
            ]
        if inc.phase == "verifying" and ev.type == T.COMPONENT_FAILED and _stable_for(inc) > 0:
            # The step's verification asks for a stretch of health: failing again breaks it.
            return [
                Event(
                    T.VERIFICATION_FAILED,
                    now,
                    comp,
                    inc.id,
                    {
                        "reason": f"failed again before staying healthy for {_stable_for(inc):g}s",
                        "cause": ev.position,
                    },
                )
            ]
        return []
    cls = taxonomy.classify(facts)
    failure_class = cls.name if cls is not None else "unclassified"
    iid = state.next_incident
    evidence = {k: v for k, v in facts.items() if v is not None}
    return [
        Event(
            T.INCIDENT_DETECTED,
            now,
            comp,
            iid,
            {"cause": ev.position, "observation": ev.type, "evidence": evidence},
        ),
        Event(
            T.INCIDENT_DIAGNOSED,
            now,
            comp,
            iid,
            {
                "failure_class": failure_class,
                "description": cls.description if cls is not None else "no taxonomy class matched",
                "root_cause": comp,
                "symptoms": [],
                "evidence": evidence,
                "summary": f"{comp}: {failure_class} ({why})",
            },
        ),
    ]


def _on_recovery(state: FleetState, ev: RecordedEvent, now: float) -> list[Event]:
    comp = ev.component
    assert comp is not None
    inc = state.active_for(comp)
    if inc is None:
        return []
    if inc.phase == "verifying" and _stable_for(inc) > 0:
        return []  # verified by analyze_deadlines once it has stayed healthy long enough
    if inc.phase == "verifying":
        step = inc.actions[-1] if inc.actions else None
        took = now - step.finished_at if step is not None and step.finished_at is not None else None
        return [
            Event(T.INCIDENT_VERIFIED, now, comp, inc.id, {"cause": ev.position, "verified_after": took}),
            _resolved(inc, now, "remediated", ev.position),
        ]
    if inc.phase == "acting":
        return []  # the action in flight decides; its own verification follows
    resolution = "recovered after escalation" if inc.status == "escalated" else "recovered without action"
    return [_resolved(inc, now, resolution, ev.position)]


def _resolved(inc: IncidentView, now: float, resolution: str, cause: int) -> Event:
    return Event(
        T.INCIDENT_RESOLVED,
        now,
        inc.component,
        inc.id,
        {"resolution": resolution, "cause": cause, "rto_achieved": round(now - inc.opened_at, 6)},
    )


def analyze_deadlines(state: FleetState, now: float) -> list[Event]:
    """Verification deadlines that passed without the component coming back."""
    out = []
    for comp, iid in sorted(state.active_incident.items()):
        inc = state.incidents[iid]
        stable = _stable_for(inc)
        if inc.phase == "verifying" and stable > 0:
            view = state.component(comp)
            last = inc.actions[-1] if inc.actions else None
            finished = inc.opened_at
            if last is not None and last.finished_at is not None:
                finished = last.finished_at
            if view.health == "healthy" and view.health_since is not None:
                since = max(view.health_since, finished)
                if now >= since + stable:
                    out.append(
                        Event(
                            T.INCIDENT_VERIFIED,
                            now,
                            comp,
                            iid,
                            {"verified_after": round(since - finished, 6), "stable_for": stable},
                        )
                    )
                    out.append(_resolved(inc, now, "remediated", state.position))
                continue  # healthy and proving it: the deadline was for becoming healthy
        if inc.phase == "verifying" and inc.verify_deadline is not None and now >= inc.verify_deadline:
            timeout = (inc.plan or {}).get("verify_timeout")
            out.append(
                Event(
                    T.VERIFICATION_FAILED,
                    now,
                    comp,
                    iid,
                    {"reason": f"not healthy within the verification timeout ({timeout}s)"},
                )
            )
    return out


def _stable_for(inc: IncidentView) -> float:
    """How long the component must stay healthy after the step (the policy's verify.stable_for)."""
    return float((inc.plan or {}).get("verify_stable_for") or 0)


def _exit_text(data: Any) -> str:
    if "signal" in data:
        return f"killed by {data['signal']}"
    if "exit_code" in data:
        return f"exit status {data['exit_code']}"
    return "exited"
