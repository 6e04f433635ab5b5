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
    COMPONENT_BECAME_UNKNOWN = "component.became_unknown"  # a probe broke: health cannot be judged
    BREAKER_TRANSITIONED = "breaker.transitioned"  # an agent's circuit breaker changed state
    AGENT_REPORTED = "agent.reported"  # an agent reported a signal (state corruption, quality, ...)
    # Monitor: the telemetry link itself
    MQTT_CONNECTED = "mqtt.connected"
    MQTT_DISCONNECTED = "mqtt.disconnected"
    TELEMETRY_DROPPED = "telemetry.dropped"  # bad input dropped since the last summary, per reason
    # Analyze
    INCIDENT_DETECTED = "incident.detected"
    INCIDENT_DIAGNOSED = "incident.diagnosed"
    VERIFICATION_FAILED = "incident.verification_failed"
    INCIDENT_VERIFIED = "incident.verified"
    INCIDENT_RESOLVED = "incident.resolved"
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
        EventType.COMPONENT_BECAME_UNKNOWN,
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
