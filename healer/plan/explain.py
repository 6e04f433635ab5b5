"""``healer policy explain``: the planner's decision for a failure that has not happened yet.

Pure, like the planner it runs: it copies the snapshot, records the incident the failure
would open (the same ``incident.detected`` / ``incident.diagnosed`` events Analyze emits) in
the copy, and asks :func:`healer.plan.planner.decide` — the very function the daemon calls —
what comes next.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import FleetState
from healer.plan.planner import Decision, Labels, decide
from healer.plan.policy import PolicySet


@dataclass
class Explanation:
    component: str
    failure: str
    evidence: dict[str, Any]
    now: float
    policies_hash: str
    decision: Decision | None
    note: str | None = None
    incident: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = self.decision
        out: dict[str, Any] = {
            "component": self.component,
            "failure": self.failure,
            "evidence": self.evidence,
            "now": self.now,
            "policies_hash": self.policies_hash,
            "note": self.note,
            "incident": self.incident,
            "decision": d.outcome if d is not None else "none",
        }
        if d is None:
            return out
        out.update(
            {
                "policy": d.policy.name if d.policy else None,
                "policy_file": d.policy.file if d.policy else None,
                "step": d.step,
                "rejected": d.rejected,
                "skipped": d.skipped,
                "guardrails": [c.as_dict() for c in d.checks],
                "blocked_by": d.blocked_by.as_dict() if d.blocked_by else None,
                "events": [
                    {"type": e.type, "component": e.component, "data": dict(e.data)} for e in d.events
                ],
            }
        )
        return out


def explain(
    state: FleetState,
    component: str,
    failure: str,
    evidence: Mapping[str, Any],
    policies: PolicySet,
    now: float,
    labels: Labels,
) -> Explanation:
    sim = copy.deepcopy(state)
    out = Explanation(component, failure, dict(evidence), now, policies.hash, None)
    active = sim.active_for(component)
    if active is not None and not active.is_open:
        out.incident = active.id
        out.note = (
            f"{component} already has incident {active.id}, escalated: a new failure is folded into it "
            "and healer takes no action until the component recovers or a human acts"
        )
        return out
    if active is not None:
        out.incident = active.id
        out.note = (
            f"{component} already has open incident {active.id} ({active.phase}): a new failure is folded "
            "into it; shown: its next decision if the current attempt failed now"
        )
        if active.phase not in ("detected", "diagnosed"):
            _apply(
                sim, T.VERIFICATION_FAILED, now, component, active.id, {"reason": "explain: assumed failed"}
            )
        out.decision = decide(sim, active, policies, now, labels)
        return out
    iid = sim.next_incident
    out.incident = iid
    facts = dict(evidence)
    _apply(sim, T.INCIDENT_DETECTED, now, component, iid, {"observation": "explain", "evidence": facts})
    _apply(
        sim,
        T.INCIDENT_DIAGNOSED,
        now,
        component,
        iid,
        {"failure_class": failure, "root_cause": component, "symptoms": [], "evidence": facts},
    )
    out.decision = decide(sim, sim.incidents[iid], policies, now, labels)
    return out


def _apply(
    state: FleetState, kind: str, now: float, component: str, incident: int, data: dict[str, Any]
) -> None:
    state.apply(RecordedEvent(state.position + 1, kind, now, component, incident, data))
