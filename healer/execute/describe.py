"""How Execute's own events read to a person (``healer log``, the daemon's log)."""

from __future__ import annotations

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent

LEVELS: dict[str, str] = {
    T.STEP_ABANDONED: "error",
    T.COMPENSATION_FAILED: "warning",
    T.COMPENSATION_ABANDONED: "error",
    T.BREAKER_OPENED: "warning",
    T.STEP_RESUMED: "warning",
}


def describe_execute(rec: RecordedEvent) -> str | None:
    d = rec.data
    who = rec.component or "healer"
    inc = f"[incident {rec.incident}] " if rec.incident is not None else ""
    t = rec.type
    what = f"{d.get('actuator')}.{d.get('action')}"
    if t == T.STEP_RESUMED:
        return f"{inc}{who}: {what} resumed after restart, same key {d.get('idempotency_key')}"
    if t == T.STEP_ABANDONED:
        return f"{inc}{who}: {what} abandoned: {d.get('uncertainty')}"
    if t == T.COMPENSATION_STARTED:
        again = f" (try {d.get('try')})" if int(d.get("try") or 1) > 1 else ""
        return f"{inc}{who}: compensating {d.get('of')} with {what}{again}"
    if t == T.COMPENSATION_SUCCEEDED:
        how = " (verified after restart)" if d.get("recovered") else ""
        return f"{inc}{who}: compensated {d.get('of')}{how}"
    if t == T.COMPENSATION_FAILED:
        nxt = "giving up" if d.get("final") else f"retry in {d.get('retry_in')}s"
        err = d.get("error")
        return f"{inc}{who}: compensation of {d.get('of')} failed (try {d.get('try')}): {err}; {nxt}"
    if t == T.COMPENSATION_ABANDONED:
        return f"{inc}{who}: compensation abandoned: {d.get('uncertainty')}"
    if t == T.SAGA_COMPENSATED:
        done = ", ".join(d.get("compensated") or []) or "nothing to undo"
        return f"{inc}{who}: saga {d.get('plan_key')} compensated: {done}"
    if t in (T.BREAKER_OPENED, T.BREAKER_HALF_OPENED, T.BREAKER_CLOSED):
        return (
            f"circuit breaker {d.get('breaker')} {d.get('from')} -> {d.get('state')} "
            f"({d.get('failures')}/{d.get('fail_max')} failures)"
        )
    if t == T.ACTUATORS_LOADED:
        refused = d.get("refused") or {}
        blocked = d.get("blocked") or []
        text = f"actuators loaded: {', '.join(sorted(d.get('loaded') or {}))}"
        if blocked:
            text += f"; blocked: {', '.join(blocked)}"
        if refused:
            text += "; REFUSED: " + "; ".join(str(r) for r in refused.values())
        return text
    return None
