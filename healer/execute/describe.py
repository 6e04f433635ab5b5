"""How Execute's events read to a person: steps, compensations, breakers, loaded actuators."""

from __future__ import annotations

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.render import lines


def _what(rec: RecordedEvent) -> str:
    return f"{rec.data.get('actuator')}.{rec.data.get('action')}"


@lines(T.STEP_STARTED)
def _started(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: {rec.data.get('action')} started, key {rec.data.get('idempotency_key')}"


@lines(T.STEP_SUCCEEDED)
def _succeeded(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: {rec.data.get('action')} succeeded in {rec.data.get('duration_s', 0):.2f}s"


@lines(T.STEP_FAILED, level="warning")
def _failed(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: {rec.data.get('action')} failed: {rec.data.get('error')}"


@lines(T.STEP_INTERRUPTED, level="warning")
def _interrupted(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: {rec.data.get('action', 'step')} interrupted: {rec.data.get('reason')}"


@lines(T.STEP_RESUMED, level="warning")
def _resumed(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: {_what(rec)} resumed after restart, same key {rec.data.get('idempotency_key')}"


@lines(T.STEP_ABANDONED, level="error")
def _abandoned(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: {_what(rec)} abandoned: {rec.data.get('uncertainty')}"


@lines(T.COMPENSATION_STARTED)
def _compensation_started(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    again = f" (try {d.get('try')})" if int(d.get("try") or 1) > 1 else ""
    return f"{inc}{who}: compensating {d.get('of')} with {_what(rec)}{again}"


@lines(T.COMPENSATION_SUCCEEDED)
def _compensation_succeeded(rec: RecordedEvent, who: str, inc: str) -> str:
    how = " (verified after restart)" if rec.data.get("recovered") else ""
    return f"{inc}{who}: compensated {rec.data.get('of')}{how}"


@lines(T.COMPENSATION_FAILED, level="warning")
def _compensation_failed(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    nxt = "giving up" if d.get("final") else f"retry in {d.get('retry_in')}s"
    return f"{inc}{who}: compensation of {d.get('of')} failed (try {d.get('try')}): {d.get('error')}; {nxt}"


@lines(T.COMPENSATION_ABANDONED, level="error")
def _compensation_abandoned(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: compensation abandoned: {rec.data.get('uncertainty')}"


@lines(T.SAGA_COMPENSATED)
def _saga(rec: RecordedEvent, who: str, inc: str) -> str:
    done = ", ".join(rec.data.get("compensated") or []) or "nothing to undo"
    return f"{inc}{who}: saga {rec.data.get('plan_key')} compensated: {done}"


@lines(T.BREAKER_OPENED, level="warning")
@lines(T.BREAKER_HALF_OPENED, T.BREAKER_CLOSED)
def _breaker(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    return (
        f"circuit breaker {d.get('breaker')} {d.get('from')} -> {d.get('state')} "
        f"({d.get('failures')}/{d.get('fail_max')} failures)"
    )


@lines(T.ACTUATORS_LOADED, level=lambda rec: "error" if rec.data.get("refused") else "info")
def _actuators(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    refused = d.get("refused") or {}
    blocked = d.get("blocked") or []
    text = f"actuators loaded: {', '.join(sorted(d.get('loaded') or {}))}"
    if blocked:
        text += f"; blocked: {', '.join(blocked)}"
    if refused:
        text += "; REFUSED: " + "; ".join(str(r) for r in refused.values())
    return text
