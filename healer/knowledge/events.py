"""Event types. Names are past tense: an event records something that already happened."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    DAEMON_STARTED = "daemon.started"
    DAEMON_STOPPED = "daemon.stopped"
    POLICIES_LOADED = "policies.loaded"
    POLICIES_REJECTED = "policies.rejected"
    # Monitor: observations
    PROCESS_STARTED = "process.started"
    PROCESS_ADOPTED = "process.adopted"
    PROCESS_EXITED = "process.exited"
    COMPONENT_FAILED = "component.failed"
    COMPONENT_RECOVERED = "component.recovered"
    BREAKER_TRANSITIONED = "breaker.transitioned"
    AGENT_REPORTED = "agent.reported"
    # Analyze
    INCIDENT_DETECTED = "incident.detected"
    INCIDENT_DIAGNOSED = "incident.diagnosed"
    VERIFICATION_FAILED = "incident.verification_failed"
    INCIDENT_VERIFIED = "incident.verified"
    INCIDENT_RESOLVED = "incident.resolved"
    SYMPTOM_SUPPRESSED = "symptom.suppressed"
    SYMPTOM_SETTLING = "symptom.settling"
    SYMPTOM_RELEASED = "symptom.released"
    # Plan
    INCIDENT_PLANNED = "incident.planned"
    INCIDENT_ESCALATED = "incident.escalated"
    # Execute
    STEP_STARTED = "step.started"
    STEP_SUCCEEDED = "step.succeeded"
    STEP_FAILED = "step.failed"
    STEP_INTERRUPTED = "step.interrupted"


OBSERVATIONS = frozenset(
    {
        EventType.PROCESS_STARTED,
        EventType.PROCESS_ADOPTED,
        EventType.PROCESS_EXITED,
        EventType.COMPONENT_FAILED,
        EventType.COMPONENT_RECOVERED,
        EventType.BREAKER_TRANSITIONED,
        EventType.AGENT_REPORTED,
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """An event decided but not yet recorded."""

    type: str
    ts: float
    component: str | None = None
    incident: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: ``position`` is its place in the global, gapless log."""

    position: int
    type: str
    ts: float
    component: str | None
    incident: int | None
    data: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "ts": self.ts,
            "type": self.type,
            "component": self.component,
            "incident": self.incident,
            "data": dict(self.data),
        }
