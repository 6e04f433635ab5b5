"""Plan: a pure function choosing the next remediation step for an incident.

Inputs are the knowledge snapshot, the event that asks for a decision, the policy set and
the time; the output is events (planned or escalated). Every guardrail reads its counters
from the snapshot, which is folded from the log, so limits survive daemon restarts and
policy reloads.
"""

from __future__ import annotations

from collections.abc import Mapping

from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState, IncidentView
from healer.plan.policy import STRATEGIES, PolicySet

# Events after which an open incident needs a (next) step.
TRIGGERS = frozenset({T.INCIDENT_DIAGNOSED, T.VERIFICATION_FAILED, T.STEP_FAILED, T.STEP_INTERRUPTED})


def plan(
    state: FleetState,
    ev: RecordedEvent,
    policies: PolicySet,
    now: float,
    labels: Mapping[str, Mapping[str, str]],
) -> list[Event]:
    if ev.type not in TRIGGERS or ev.incident is None:
        return []
    inc = state.incidents.get(ev.incident)
    if inc is None or not inc.is_open:
        return []
    return next_step(state, inc, policies, now, labels.get(inc.component, {}))


def next_step(
    state: FleetState, inc: IncidentView, policies: PolicySet, now: float, labels: Mapping[str, str]
) -> list[Event]:
    failure = inc.failure_class or "unclassified"
    policy, rejected = policies.select(inc.component, labels, failure)
    if policy is None:
        return [_escalate(inc, now, f"no policy handles {failure!r} on {inc.component!r}", rejected=rejected)]
    steps = policy.model.steps
    # A plan already made keeps its policy's step position; a new policy starts at step 0.
    idx = inc.step_index if inc.policy == policy.name else 0
    while idx < len(steps):
        step = steps[idx]
        if step.strategy == "escalate":
            return [
                _escalate(
                    inc, now, _exhausted_reason(inc, policy.model.steps, idx), policy=policy.name, step=idx
                )
            ]
        if inc.attempts.get(idx, 0) < step.max_attempts:
            break
        idx += 1
    else:
        return [
            _escalate(
                inc, now, _exhausted_reason(inc, steps, len(steps)) + "; chain ended", policy=policy.name
            )
        ]
    step = steps[idx]
    used = inc.attempts.get(idx, 0)
    attempt = used + 1
    actuator, action = STRATEGIES[step.strategy]
    comp = state.component(inc.component)
    delay = (
        min(step.cooldown * step.backoff ** max(used - 1, 0), step.max_cooldown) if used else step.cooldown
    )
    not_before = now
    if comp.last_action_at is not None:
        not_before = max(now, comp.last_action_at + delay)
    return [
        Event(
            T.INCIDENT_PLANNED,
            now,
            inc.component,
            inc.id,
            {
                "policy": policy.name,
                "policy_file": policy.file,
                "policy_hash": policy.file_hash,
                "policies_hash": policies.hash,
                "step": idx,
                "strategy": step.strategy,
                # The saga Execute runs for this step, in order. A strategy may expand to several
                # actions (rollback: halt, restore, compensate, restart); restart is one.
                "actions": [{"actuator": actuator, "action": action, "params": {}, "timeout": step.timeout}],
                "attempt": attempt,
                "max_attempts": step.max_attempts,
                "not_before": not_before,
                "cooldown": delay,
                "timeout": step.timeout,
                "verify_timeout": step.verify_timeout,
                "idempotency_key": f"incident-{inc.id}/step-{idx}/attempt-{attempt}",
                "rejected": rejected,
                "reason": f"{inc.failure_class} on {inc.component}: {step.strategy} "
                f"(attempt {attempt}/{step.max_attempts}, policy {policy.name})",
            },
        )
    ]


def _exhausted_reason(inc: IncidentView, steps: object, idx: int) -> str:
    used = ", ".join(f"step {i}: {n} attempt(s)" for i, n in sorted(inc.attempts.items()))
    return f"remediation attempts exhausted ({used or 'none'})"


def _escalate(
    inc: IncidentView,
    now: float,
    reason: str,
    *,
    policy: str | None = None,
    step: int | None = None,
    rejected: list[dict[str, str]] | None = None,
) -> Event:
    data: dict[str, object] = {"reason": reason, "policy": policy, "step": step}
    if rejected:
        data["rejected"] = rejected
    return Event(T.INCIDENT_ESCALATED, now, inc.component, inc.id, data)
