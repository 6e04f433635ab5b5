"""Plan: a pure function choosing the next remediation step for an incident.

Inputs are the knowledge snapshot, the event that asks for a decision, the policy set, the
time and the components' labels; the output is events: ``incident.planned`` (the saga of
actions Execute runs), ``incident.deferred`` (a guardrail held the action back: which one,
what it saw, when it may allow it), ``approval.requested`` or ``incident.escalated``. No I/O
and no clock: every counter is read from the snapshot, which is folded from the log, so
limits survive daemon restarts and policy reloads, and ``healer policy explain`` runs exactly
this code over a read-only snapshot.

Incidents that wait (deferred, or for an approval with a deadline) are revisited on the
control loop's ticks: :func:`due` names them, :func:`revisit` decides again for one of them
against the state as it is after the previous one's decision, so a freed budget slot goes
to exactly one waiter, first come first served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import ApprovalView, FleetState, IncidentView
from healer.plan import guardrails as g
from healer.plan.policy import Policy, PolicySet, Step, expand_step

Labels = Mapping[str, Mapping[str, str]]

# Events after which an open incident needs a (next) step.
TRIGGERS = frozenset(
    {
        T.INCIDENT_DIAGNOSED,
        T.VERIFICATION_FAILED,
        T.STEP_FAILED,
        T.STEP_INTERRUPTED,
        T.APPROVAL_GRANTED,
        T.APPROVAL_DENIED,
        T.APPROVAL_EXPIRED,
    }
)
# Events that may free what a waiting incident waits for (a budget slot, a healthy group
# member, a lifted silence, new policies): the shell ticks the loop after them.
WAKE_ON = frozenset(
    {
        T.INCIDENT_RESOLVED,
        T.INCIDENT_ESCALATED,
        T.COMPONENT_RECOVERED,
        T.SILENCE_EXPIRED,
        T.POLICIES_LOADED,
    }
)
_READY = frozenset({"detected", "diagnosed"})


@dataclass
class Decision:
    """What the planner decided for one incident, and why (``healer policy explain`` prints it)."""

    outcome: str  # planned | deferred | approval_requested | awaiting_approval | escalated | unchanged
    events: list[Event]
    policy: Policy | None = None
    step: int | None = None
    rejected: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    checks: list[g.Check] = field(default_factory=list)
    blocked_by: g.Check | None = None


def plan(
    state: FleetState, ev: RecordedEvent, policies: PolicySet, now: float, labels: Labels
) -> list[Event]:
    """The decisions ``ev`` calls for; ``state`` already includes ``ev``."""
    if ev.type not in TRIGGERS or ev.incident is None:
        return []
    inc = state.incidents.get(ev.incident)
    if inc is None or not inc.is_open or inc.phase not in _READY:
        return []
    return _guarded(state, inc, policies, now, labels)


def _guarded(
    state: FleetState, inc: IncidentView, policies: PolicySet, now: float, labels: Labels
) -> list[Event]:
    """``decide``, with a planner bug turned into a recorded escalation instead of a dead daemon."""
    try:
        return decide(state, inc, policies, now, labels).events
    except Exception as exc:  # the control loop must survive anything a policy makes us do
        reason = f"planner error, no automatic action: {type(exc).__name__}: {exc}"
        return [_escalate(inc, now, reason, {"policies_hash": policies.hash})]


def due(state: FleetState, now: float) -> list[int]:
    """Incidents to revisit on a tick, oldest first: deferred ones, and expired approvals."""
    out = []
    for iid in sorted(state.active_incident.values()):
        inc = state.incidents.get(iid)
        if inc is None or not inc.is_open:
            continue
        if inc.phase == "deferred":
            out.append(iid)
        elif inc.phase == "awaiting_approval":
            ap = _pending_approval(state, inc)
            if ap is not None and now >= ap.deadline:
                out.append(iid)
    return out


def revisit(state: FleetState, iid: int, policies: PolicySet, now: float, labels: Labels) -> list[Event]:
    inc = state.incidents.get(iid)
    if inc is None or not inc.is_open:
        return []
    if inc.phase == "awaiting_approval":
        ap = _pending_approval(state, inc)
        if ap is None or now < ap.deadline:
            return []
        outcome = "granted" if ap.default == "approve" else "denied"
        return [
            Event(
                T.APPROVAL_EXPIRED,
                now,
                inc.component,
                inc.id,
                {
                    "approval": ap.id,
                    "step": ap.step,
                    "policy": ap.policy,
                    "default": ap.default,
                    "outcome": outcome,
                    "by": {"timeout": True},
                    "reason": f"no decision within {ap.deadline - ap.requested_at:g}s: "
                    f"the policy's default ({ap.default}) applies",
                },
            )
        ]
    if inc.phase == "deferred":
        return _guarded(state, inc, policies, now, labels)
    return []


def next_wakeup(state: FleetState) -> float | None:
    """The earliest time a waiting incident may proceed (for the shell's timer), if one is known."""
    times = []
    for iid in state.active_incident.values():
        inc = state.incidents.get(iid)
        if inc is None or not inc.is_open:
            continue
        if inc.phase == "deferred" and inc.deferred and inc.deferred.get("next_allowed_at") is not None:
            times.append(float(inc.deferred["next_allowed_at"]))
        elif inc.phase == "awaiting_approval":
            ap = _pending_approval(state, inc)
            if ap is not None:
                times.append(ap.deadline)
    return min(times) if times else None


# -- the decision --------------------------------------------------------------------------------------
def decide(state: FleetState, inc: IncidentView, policies: PolicySet, now: float, labels: Labels) -> Decision:
    failure = inc.failure_class or "unclassified"
    comp_labels = labels.get(inc.component, {})
    rejected: list[dict[str, str]] = []
    policy: Policy | None = None
    for pol in policies.policies:
        why = pol.rejection(inc.component, comp_labels, failure)
        if why is None:
            unmet = g.unmet(pol.model.when, state, inc, now, pol.tz)
            why = f"condition not met: {unmet}" if unmet else None
        if why is None:
            policy = pol
            break
        rejected.append({"policy": pol.name, "file": pol.file, "reason": why})
    base: dict[str, Any] = {"policies_hash": policies.hash}
    if policy is None:
        ev = _escalate(
            inc, now, f"no policy handles {failure!r} on {inc.component!r}", {**base, "rejected": rejected}
        )
        return Decision("escalated", [ev], rejected=rejected)
    base.update({"policy": policy.name, "policy_file": policy.file, "policy_hash": policy.file_hash})
    steps = policy.steps
    # A plan already made keeps its policy's step position; a new policy starts at step 0.
    idx = inc.step_index if inc.policy == policy.name else 0
    skipped: list[dict[str, Any]] = []

    def done(outcome: str, events: list[Event], **kw: Any) -> Decision:
        return Decision(outcome, events, policy, kw.pop("step", None), rejected, skipped, **kw)

    approval: ApprovalView | None = None
    while True:
        if idx >= len(steps):
            reason = _exhausted_reason(inc, skipped) + "; chain ended"
            ev = _escalate(inc, now, reason, {**base, "step": None, "rejected": rejected, "skipped": skipped})
            return done("escalated", [ev])
        step = steps[idx]
        kind = step.kind
        if kind == "escalate":
            reason = _exhausted_reason(inc, skipped)
            if step.message:
                reason = f"{reason}; {step.message}"
            data = {**base, "step": idx, "rejected": rejected, "skipped": skipped, "message": step.message}
            return done("escalated", [_escalate(inc, now, reason, data)], step=idx)
        approval = _approval_for(state, inc, idx, policy.name)
        if approval is not None and approval.status in ("denied", "expired") and approval.outcome == "denied":
            who = _who(approval)
            skipped.append(
                {
                    "step": idx,
                    "strategy": step.name or kind,
                    "reason": f"approval {approval.id} denied by {who}",
                }
            )
            if step.on_failure == "escalate":
                return done(
                    "escalated", [_escalate_skipped(inc, now, base, idx, rejected, skipped)], step=idx
                )
            idx += 1
            continue
        unmet = g.unmet(step.when, state, inc, now, policy.step_tz[idx] if policy.step_tz else policy.tz)
        if unmet:
            skipped.append(
                {"step": idx, "strategy": step.name or kind, "reason": f"condition not met: {unmet}"}
            )
            idx += 1
            continue
        used = _attempts_used(state, inc, idx, step, kind, now)
        if used >= step.max_attempts:
            scope = f"in the last {step.window:g}s on {inc.component}" if step.window else "in this incident"
            why = f"{used}/{step.max_attempts} attempts used {scope}"
            if inc.last_failure and inc.attempts.get(idx):
                why += f"; last: {inc.last_failure}"
            skipped.append({"step": idx, "strategy": step.name or kind, "reason": why})
            if step.on_failure == "escalate":
                return done(
                    "escalated", [_escalate_skipped(inc, now, base, idx, rejected, skipped)], step=idx
                )
            idx += 1
            continue
        break

    comp_name = inc.component
    checks: list[g.Check] = []

    def blocked(check: g.Check) -> Decision:
        prev = inc.deferred or {}
        if (
            inc.phase == "deferred"
            and prev.get("guardrail") == check.name
            and prev.get("step") == idx
            and prev.get("policy") == policy.name
            and prev.get("next_allowed_at") == check.retry_at
        ):
            return done("unchanged", [], step=idx, checks=checks, blocked_by=check)
        data = {
            **base,
            "step": idx,
            "strategy": kind,
            "guardrail": check.name,
            "state": check.state,
            "next_allowed_at": check.retry_at,
            "reason": f"{kind} on {comp_name} held back by {check.name}: {check.reason}",
            "guardrails": [c.as_dict() for c in checks],
            "rejected": rejected,
            "skipped": skipped,
        }
        ev = Event(T.INCIDENT_DEFERRED, now, comp_name, inc.id, data)
        return done("deferred", [ev], step=idx, checks=checks, blocked_by=check)

    for check in (
        g.check_silence(state, comp_name, now),
        g.check_maintenance(policies, comp_name, labels.get(comp_name, {}), now),
    ):
        checks.append(check)
        if not check.ok:
            return blocked(check)

    actions = expand_step(step)
    if step.approval is not None:
        if approval is None:
            aid = state.next_approval
            deadline = now + step.approval.timeout
            data = {
                **base,
                "approval": aid,
                "step": idx,
                "step_name": step.name,
                "strategy": kind,
                "actions": actions,
                "deadline": deadline,
                "timeout": step.approval.timeout,
                "default": step.approval.default,
                "reason": f"{kind} on {comp_name} needs a human: `healer approve {aid}` or "
                f"`healer deny {aid} --reason ...`; on timeout: {step.approval.default}",
                "guardrails": [c.as_dict() for c in checks],
                "rejected": rejected,
                "skipped": skipped,
            }
            ev = Event(T.APPROVAL_REQUESTED, now, comp_name, inc.id, data)
            return done("approval_requested", [ev], step=idx, checks=checks)
        if approval.status == "pending":
            return done("awaiting_approval", [], step=idx, checks=checks)

    used = _attempts_used(state, inc, idx, step, kind, now)
    for check in (
        g.check_cooldown(state, comp_name, _kind_key(step, actions), step, used, now),
        g.check_concurrency(state, inc, policies.budget),
        g.check_rate(state, policies.budget, now),
        g.check_min_healthy(state, comp_name, labels, policies.budget),
    ):
        checks.append(check)
        if not check.ok:
            return blocked(check)

    attempt = inc.attempts.get(idx, 0) + 1
    reason = (
        f"{inc.failure_class} on {comp_name}: {kind} "
        f"(attempt {attempt}/{step.max_attempts}, policy {policy.name}, step {idx})"
    )
    if skipped:
        reason += "; " + "; ".join(
            f"step {s['step']} ({s['strategy']}) passed over: {s['reason']}" for s in skipped
        )
    data = {
        **base,
        "step": idx,
        "step_name": step.name,
        "strategy": kind,
        "kind": _kind_key(step, actions),
        # The saga Execute runs for this step, in order (rollback: stop, restore, start; ...).
        "actions": actions,
        "attempt": attempt,
        "max_attempts": step.max_attempts,
        "not_before": now,
        "cooldown": g.cooldown_delay(step, used),
        "timeout": step.timeout,
        "verify_timeout": step.verify_within,
        "verify_stable_for": step.stable_for,
        "idempotency_key": f"incident-{inc.id}/step-{idx}/attempt-{attempt}",
        "approval": approval.id if approval is not None else None,
        "guardrails": [c.as_dict() for c in checks],
        "rejected": rejected,
        "skipped": skipped,
        "reason": reason,
    }
    if step.verify_probes is not None:
        data["verify_probes"] = step.verify_probes  # only these probes judge the step
    ev = Event(T.INCIDENT_PLANNED, now, comp_name, inc.id, data)
    return done("planned", [ev], step=idx, checks=checks)


# -- helpers -----------------------------------------------------------------------------------------
def _kind_key(step: Step, actions: list[dict[str, Any]]) -> str:
    """What cooldowns and attempt windows count per component: the strategy, or for a direct
    step the actuator calls it makes."""
    if step.kind != "run":
        return step.kind
    return "+".join(f"{a['actuator']}.{a['action']}" for a in actions) or "run"


def _attempts_used(state: FleetState, inc: IncidentView, idx: int, step: Step, kind: str, now: float) -> int:
    if step.window is None:
        return inc.attempts.get(idx, 0)
    comp = state.components.get(inc.component)
    if comp is None:
        return 0
    key = _kind_key(step, expand_step(step))
    since = now - step.window
    return sum(1 for ts, k in comp.attempt_log if k == key and ts > since)


def _approval_for(state: FleetState, inc: IncidentView, step: int, policy: str) -> ApprovalView | None:
    for aid in reversed(inc.approvals):
        ap = state.approvals.get(aid)
        if ap is not None and ap.step == step and ap.policy == policy and ap.status != "cancelled":
            return ap
    return None


def _pending_approval(state: FleetState, inc: IncidentView) -> ApprovalView | None:
    for aid in reversed(inc.approvals):
        ap = state.approvals.get(aid)
        if ap is not None and ap.status == "pending":
            return ap
    return None


def _who(ap: ApprovalView) -> str:
    by = ap.decided_by or {}
    if by.get("timeout"):
        return f"timeout (default {ap.default})"
    who = str(by.get("user") or f"uid {by.get('uid')}")
    return f"{who}" + (f": {ap.reason}" if ap.reason else "")


def _exhausted_reason(inc: IncidentView, skipped: list[dict[str, Any]]) -> str:
    used = ", ".join(f"step {i}: {n} attempt(s)" for i, n in sorted(inc.attempts.items()))
    reason = f"remediation attempts exhausted ({used or 'none'})"
    passed = [f"step {s['step']} ({s['strategy']}): {s['reason']}" for s in skipped]
    if passed:
        reason += "; " + "; ".join(passed)
    elif inc.last_failure:
        reason += f"; last: {inc.last_failure}"
    return reason


def _escalate_skipped(
    inc: IncidentView,
    now: float,
    base: dict[str, Any],
    idx: int,
    rejected: list[dict[str, str]],
    skipped: list[dict[str, Any]],
) -> Event:
    reason = _exhausted_reason(inc, skipped) + f"; step {idx} says on_failure: escalate"
    return _escalate(inc, now, reason, {**base, "step": idx, "rejected": rejected, "skipped": skipped})


def _escalate(inc: IncidentView, now: float, reason: str, extra: dict[str, Any]) -> Event:
    data: dict[str, Any] = {"reason": reason, "policy": None, "step": None, **extra}
    if not data.get("rejected"):
        data.pop("rejected", None)
    return Event(T.INCIDENT_ESCALATED, now, inc.component, inc.id, data)
