"""How Plan's events read to a person: plans, waits, approvals, silences and policy loads."""

from __future__ import annotations

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.render import lines, timestamp


@lines(T.INCIDENT_PLANNED)
def _planned(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    wait = ""
    via = ", ".join(f"{a.get('actuator')}.{a.get('action')}" for a in d.get("actions", [])) or "-"
    nb = d.get("not_before")
    if isinstance(nb, int | float) and nb - rec.ts > 0.05:
        wait = f", not before +{nb - rec.ts:.1f}s (cooldown)"
    return (
        f"{inc}{who}: plan {d.get('strategy')} attempt {d.get('attempt')}/{d.get('max_attempts')} "
        f"via {via} (policy {d.get('policy')} @{d.get('policy_hash')}){wait}"
    )


@lines(T.INCIDENT_DEFERRED, level="warning")
def _deferred(rec: RecordedEvent, who: str, inc: str) -> str:
    nxt = rec.data.get("next_allowed_at")
    when = f", next allowed {timestamp(nxt)}" if isinstance(nxt, int | float) else ""
    return f"{inc}{who}: waiting: {rec.data.get('reason')}{when}"


@lines(T.APPROVAL_REQUESTED, level="warning")
def _approval_requested(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    return (
        f"{inc}{who}: APPROVAL {d.get('approval')} needed for {d.get('strategy')} "
        f"(policy {d.get('policy')}, step {d.get('step')}): healer approve {d.get('approval')} | "
        f"healer deny {d.get('approval')} --reason ...; default {d.get('default')} "
        f"at {timestamp(float(d.get('deadline') or 0))}"
    )


@lines(T.APPROVAL_DENIED, level="warning")
@lines(T.APPROVAL_GRANTED)
def _approval_decided(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    by = d.get("by") or {}
    verb = "granted" if rec.type == T.APPROVAL_GRANTED else "denied"
    why = f": {d.get('reason')}" if d.get("reason") else ""
    user = f"{by.get('user')} (uid {by.get('uid')})"
    return f"{inc}{who}: approval {d.get('approval')} {verb} by {user}{why}"


@lines(T.APPROVAL_EXPIRED, level="warning")
def _approval_expired(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    return f"{inc}{who}: approval {d.get('approval')} expired: {d.get('reason')} -> {d.get('outcome')}"


@lines(T.SILENCE_CREATED)
def _silence_created(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    by = (d.get("by") or {}).get("user")
    return (
        f"silence {d.get('silence')} on {d.get('component')} "
        f"until {timestamp(float(d.get('until') or 0))} by {by}: {d.get('reason') or 'no reason given'}"
    )


@lines(T.SILENCE_EXPIRED)
def _silence_expired(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    by = (d.get("by") or {}).get("user")
    return f"silence {d.get('silence')} on {d.get('component')} lifted by {by}"


@lines(T.POLICIES_LOADED)
def _policies_loaded(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    count = len(d.get("policies", []))
    return f"policies {'re' if d.get('reload') else ''}loaded: {count} policies, hash {d.get('hash')}"


@lines(T.POLICIES_REJECTED, level="error")
def _policies_rejected(rec: RecordedEvent, who: str, inc: str) -> str:
    problems = "; ".join(rec.data.get("problems", [])[:3])
    return f"policy reload rejected, previous policies kept: {problems}"
