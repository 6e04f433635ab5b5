"""Event types. Names are past tense: an event records something that already happened."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple


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
    # One probe changed status while its component's health did not (step verification by probe)
    PROBE_TRANSITIONED = "probe.transitioned"
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
    SYMPTOM_SUPPRESSED = "symptom.suppressed"
    SYMPTOM_SETTLING = "symptom.settling"
    SYMPTOM_RELEASED = "symptom.released"
    # Plan
    INCIDENT_PLANNED = "incident.planned"
    INCIDENT_ESCALATED = "incident.escalated"
    INCIDENT_DEFERRED = "incident.deferred"  # a guardrail blocked the next action (recorded, with retry time)
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_GRANTED = "approval.granted"
    APPROVAL_DENIED = "approval.denied"
    APPROVAL_EXPIRED = "approval.expired"  # nobody decided in time: the policy's default applied
    SILENCE_CREATED = "silence.created"
    SILENCE_EXPIRED = "silence.expired"  # lifted by hand before its end
    # Execute
    STEP_STARTED = "step.started"
    STEP_SUCCEEDED = "step.succeeded"
    STEP_FAILED = "step.failed"
    STEP_INTERRUPTED = "step.interrupted"
    # Execute: sagas, crash recovery, breakers
    STEP_RESUMED = "step.resumed"  # recovery re-runs an idempotent action with the same key
    STEP_ABANDONED = "step.abandoned"  # recovery could not tell whether the action took effect
    COMPENSATION_STARTED = "compensation.started"
    COMPENSATION_SUCCEEDED = "compensation.succeeded"
    COMPENSATION_FAILED = "compensation.failed"
    COMPENSATION_ABANDONED = "compensation.abandoned"
    SAGA_COMPENSATED = "saga.compensated"
    BREAKER_OPENED = "breaker.opened"
    BREAKER_HALF_OPENED = "breaker.half_opened"
    BREAKER_CLOSED = "breaker.closed"
    ACTUATORS_LOADED = "actuators.loaded"
    # Disaster recovery (healer.dr)
    CHECKPOINT_CORRUPTED = "checkpoint.corrupted"  # failed re-hash or validation: never restored
    CHECKPOINT_RESTORED = "checkpoint.restored"  # an agent's HEAD moved back to this checkpoint
    CHECKPOINT_REMOVED = "checkpoint.removed"  # retention dropped it
    EFFECT_COMPENSATED = "effect.compensated"  # one ledger side effect undone (exactly once)
    FAILOVER_FENCED = "failover.fenced"  # a role's fencing token moved to the standby
    OBJECTIVES_MEASURED = "incident.objectives_measured"  # RPO/RTO achieved vs the targets
    FLAGS_RESTORED = "flags.restored"  # a degrade's flags put back once its incident resolved
    MODEL_SWAPPED = "model.swapped"  # a model link moved: lineage (from, to, why)
    AGENT_PAUSED = "agent.paused"  # an agent acknowledged a pause request (rollback halt over MQTT)
    # DR drills (healer drill): recorded through the control socket, so incidents they cause are
    # known to be drills, not real outages
    DRILL_STARTED = "drill.started"
    DRILL_FAULT_INJECTED = "drill.fault_injected"
    DRILL_FAULT_REVERTED = "drill.fault_reverted"
    DRILL_FINISHED = "drill.finished"


OBSERVATIONS = frozenset(
    {
        EventType.PROCESS_STARTED,
        EventType.PROCESS_ADOPTED,
        EventType.PROCESS_EXITED,
        EventType.COMPONENT_FAILED,
        EventType.COMPONENT_RECOVERED,
        EventType.COMPONENT_BECAME_UNKNOWN,
        EventType.PROBE_TRANSITIONED,
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


class RecordedEvent(NamedTuple):
    """An event as stored: ``position`` is its place in the global, gapless log.

    A named tuple rather than a frozen dataclass: every event the loop decides and every row a
    replay reads builds one, and a frozen dataclass's ``__init__`` (one ``object.__setattr__``
    per field) cost about a microsecond each, a tenth of a million-event replay.
    """

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
