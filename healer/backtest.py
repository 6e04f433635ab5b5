"""Backtest: what draft policies would have decided at every recorded decision point.

The log is folded in order. At each event after which Plan is asked for a decision (an
incident diagnosed, a failed verification or step), the draft policies decide from exactly
the snapshot the live planner saw (the fold up to that event) and with the same ``now`` (the
event's batch time); the recorded decision is the next Plan event of that incident. Decisions
are compared by what they would *do* (strategy, actions, how long they wait), not by policy
names, hashes or attempt counters.

What followed a changed decision is not simulated: later decision points are judged on the
recorded history, which already reflects what the live policies did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore
from healer.plan import planner
from healer.plan.planner import plan
from healer.plan.policy import PolicySet

# What Plan records for a decision (the types beyond planned/escalated come with guardrails and
# approvals; compared as strings so this module needs no change when they land).
PLAN_EVENTS = frozenset(
    {"incident.planned", "incident.escalated", "incident.deferred", "approval.requested", "approval.expired"}
)
NOTHING = "no decision (waits)"


def decision_of(etype: str, data: Mapping[str, Any], ts: float) -> dict[str, Any]:
    """What a plan event would do, without names, hashes and times."""
    if etype == T.INCIDENT_ESCALATED:
        return {"decision": "escalate"}
    if etype == "incident.deferred":
        return {"decision": "defer", "strategy": data.get("strategy"), "guardrail": data.get("guardrail")}
    if etype.startswith("approval."):
        return {"decision": etype, "strategy": data.get("strategy"), "outcome": data.get("outcome")}
    actions = [
        {"actuator": a.get("actuator"), "action": a.get("action"), "params": a.get("params") or {}}
        for a in data.get("actions") or []
    ]
    nb = data.get("not_before")
    # What happens, and when: attempt counters and limits are bookkeeping, not the decision.
    return {
        "decision": data.get("strategy"),
        "actions": actions,
        "wait": round(max(0.0, float(nb) - ts), 6) if isinstance(nb, int | float) else None,
    }


def decision_text(etype: str, data: Mapping[str, Any]) -> str:
    if etype == T.INCIDENT_ESCALATED:
        return f"escalate ({data.get('reason')})"
    if etype == "incident.deferred":
        return f"defer {data.get('strategy')} ({data.get('guardrail')}): {data.get('reason')}"
    if etype != T.INCIDENT_PLANNED:
        return f"{etype}: {data.get('reason')}"
    via = ", ".join(f"{a.get('actuator')}.{a.get('action')}" for a in data.get("actions") or [])
    return (
        f"{data.get('strategy')} attempt {data.get('attempt')}/{data.get('max_attempts')} via {via} "
        f"(policy {data.get('policy')} step {data.get('step')}, cooldown {data.get('cooldown')}s)"
    )


@dataclass
class Change:
    incident: int
    component: str | None
    failure_class: str | None
    position: int  # the event that asked for the decision
    trigger: str
    recorded_position: int | None
    old: str
    new: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BacktestReport:
    draft_hash: str
    since: int
    examined: int = 0
    incidents: set[int] = field(default_factory=set)
    changes: list[Change] = field(default_factory=list)

    @property
    def changed_incidents(self) -> list[int]:
        return sorted({c.incident for c in self.changes})

    def as_dict(self) -> dict[str, Any]:
        return {
            "draft_policies_hash": self.draft_hash,
            "since_position": self.since,
            "decisions_examined": self.examined,
            "incidents_examined": len(self.incidents),
            "decisions_changed": len(self.changes),
            "incidents_changed": self.changed_incidents,
            "changes": [c.as_dict() for c in self.changes],
        }


async def backtest(
    store: SQLiteEventStore,
    draft: PolicySet,
    labels: Mapping[str, Mapping[str, str]],
    since: int = 0,
) -> BacktestReport:
    report = BacktestReport(draft.hash, since)
    state = FleetState()
    # incident -> the event that asked Plan for a decision, and the draft's answer to it
    pending: dict[int, tuple[RecordedEvent, list[Event]]] = {}
    revisit = getattr(planner, "revisit", None)  # decisions made on a tick, once Plan has them
    async for ev in store.iterate():
        iid = ev.incident
        if ev.type in PLAN_EVENTS and iid is not None:
            tick: list[Event] | None = None
            if iid not in pending and revisit is not None and ev.position > since:
                # No event asked for this one: a tick did (deferral over, approval timed out).
                tick = revisit(state, iid, draft, ev.ts, labels)
            state.apply(ev)
            if iid in pending:
                trigger, new = pending.pop(iid)
                _compare(report, state, trigger, new, ev)
            elif tick is not None:
                _compare(report, state, ev, tick, ev, trigger_type="tick")
            continue
        state.apply(ev)
        if iid is None or ev.position <= since or ev.type not in planner.TRIGGERS:
            continue
        inc = state.incidents.get(iid)
        if inc is None or not inc.is_open:
            continue
        if iid in pending:  # the previous request got no recorded decision
            trigger, new = pending.pop(iid)
            _compare(report, state, trigger, new, None)
        # ``now`` is the trigger's batch time: the loop stamps it on every event of the batch.
        pending[iid] = (ev, plan(state, ev, draft, ev.ts, labels))
    for trigger, new in pending.values():
        _compare(report, state, trigger, new, None)
    return report


def _compare(
    report: BacktestReport,
    state: FleetState,
    trigger: RecordedEvent,
    new: list[Event],
    old: RecordedEvent | None,
    trigger_type: str | None = None,
) -> None:
    assert trigger.incident is not None
    if old is None and not new:
        return  # neither decided anything here
    report.examined += 1
    report.incidents.add(trigger.incident)
    first = new[0] if new else None
    was = decision_of(old.type, old.data, old.ts) if old is not None else None
    now = decision_of(first.type, first.data, first.ts) if first is not None else None
    if was == now:
        return
    inc = state.incidents.get(trigger.incident)
    report.changes.append(
        Change(
            incident=trigger.incident,
            component=trigger.component,
            failure_class=inc.failure_class if inc else None,
            position=trigger.position,
            trigger=trigger_type or trigger.type,
            recorded_position=old.position if old is not None else None,
            old=decision_text(old.type, old.data) if old is not None else NOTHING,
            new=decision_text(first.type, first.data) if first is not None else NOTHING,
        )
    )
