"""How Analyze's events read to a person: an incident's life, and the symptoms it suppressed."""

from __future__ import annotations

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.render import lines


@lines(T.INCIDENT_DETECTED, level="warning")
def _detected(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: detected from {rec.data.get('observation')} (event #{rec.data.get('cause')})"


@lines(T.INCIDENT_DIAGNOSED)
def _diagnosed(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: diagnosed {rec.data.get('failure_class')}, root cause {rec.data.get('root_cause')}"


@lines(T.VERIFICATION_FAILED, level="warning")
def _verification_failed(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: verification failed: {rec.data.get('reason')}"


@lines(T.INCIDENT_VERIFIED)
def _verified(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    after = d.get("verified_after")
    probes = d.get("probes")
    what = (
        f"verified by probes {', '.join(map(str, probes))}"
        if isinstance(probes, list)
        else "verified healthy"
    )
    still = d.get("still_failing")
    return (
        f"{inc}{who}: {what}"
        + (f" {after:.2f}s after the action" if isinstance(after, int | float) else "")
        + (f" (still failing: {', '.join(map(str, still))})" if isinstance(still, list) and still else "")
    )


@lines(T.INCIDENT_RESOLVED)
def _resolved(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: resolved ({rec.data.get('resolution')}), RTO {rec.data.get('rto_achieved', 0):.2f}s"


@lines(T.INCIDENT_ESCALATED, level="error")
def _escalated(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: ESCALATED to a human: {rec.data.get('reason')}"


@lines(T.SYMPTOM_SUPPRESSED, level="warning")
def _suppressed(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    return f"{inc}{who}: {d.get('reason') or 'symptom suppressed'} ({d.get('failure_class')})"


@lines(T.SYMPTOM_SETTLING)
def _settling(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: {rec.data.get('reason') or 'root recovered; settling'}"


@lines(T.SYMPTOM_RELEASED)
def _released(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{inc}{who}: {rec.data.get('reason') or 'no longer a symptom'}"
