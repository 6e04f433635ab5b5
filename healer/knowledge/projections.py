"""Projections: the state the daemon decides from, folded from the event log.

``FleetState.apply`` is the only way state changes. The daemon applies each event as it is
recorded; start-up, ``healer status`` and replay apply the same events from the log, so the
live state and a rebuilt one are equal by construction (``digest`` lets tests check it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent

OPEN_PHASES = frozenset(
    {"detected", "diagnosed", "planned", "acting", "verifying", "deferred", "awaiting_approval"}
)
# Bounds on the per-component and fleet-wide histories the guardrails count over: deterministic
# (by count, not time), so a rebuilt snapshot equals the live one.
HISTORY_MAX = 256
OPEN_PHASES = frozenset({"detected", "diagnosed", "planned", "acting", "verifying"})
# How many health transitions a component keeps: enough for any flapping window worth having.
TRANSITIONS_KEPT = 32
BREAKER_STATES = frozenset({"closed", "open", "half_open"})


@dataclass
class ComponentView:
    name: str
    health: str = "unknown"  # unknown | healthy | failing
    health_since: float | None = None
    pid: int | None = None
    pid_create_time: float | None = None  # with pid: identifies the process across daemon restarts
    process_running: bool = False
    last_exit: dict[str, Any] | None = None
    last_action_at: float | None = None
    restarts: int = 0
    evidence: dict[str, Any] = field(default_factory=dict)
    # Guardrail counters (Plan): last start of each kind of remediation, recent attempts, incidents.
    last_action_by: dict[str, float] = field(default_factory=dict)
    attempt_log: list[tuple[float, str]] = field(default_factory=list)  # (started at, kind)
    incident_ids: list[int] = field(default_factory=list)
    # Analyze: flapping, breaker telemetry, agent reports, the component's latest incident.
    last_known_health: str | None = None  # healthy | failing: "unknown" does not count
    transitions: list[float] = field(default_factory=list)  # times of healthy<->failing changes
    breakers: dict[str, dict[str, Any]] = field(default_factory=dict)  # dependency -> latest state
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> latest agent report
    last_incident: int | None = None
    # Each probe's last recorded status and since when (a step's verification may name probes).
    probes: dict[str, tuple[str, float]] = field(default_factory=dict)


@dataclass
class StepView:
    step: int  # index in the policy's escalation chain
    action_index: int  # index in the planned step's saga of actions
    attempt: int
    actuator: str
    action: str
    key: str
    started_at: float
    outcome: str | None = None  # succeeded | failed | interrupted; None while in flight
    finished_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)  # what the actuator's prepare() saw (intent)


@dataclass
class CompensationView:
    """One compensation of a failed saga: undoes the action whose key is ``of``."""

    key: str
    of: str
    action_index: int
    actuator: str
    action: str
    tries: int = 0
    in_flight: bool = False  # started, no outcome yet: what crash recovery looks for
    outcome: str | None = None  # succeeded | failed | abandoned; None while pending or retrying
    started_at: float | None = None
    finished_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class IncidentView:
    id: int
    component: str
    opened_at: float
    status: str = "open"  # open | resolved | escalated
    phase: str = "detected"
    failure_class: str | None = None
    root_cause: str | None = None
    symptoms: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    policy: str | None = None
    policy_hash: str | None = None
    step_index: int = 0
    attempts: dict[int, int] = field(default_factory=dict)  # step index -> attempts started
    plan: dict[str, Any] | None = None  # the pending or current planned step
    verify_deadline: float | None = None
    actions: list[StepView] = field(default_factory=list)
    resolved_at: float | None = None
    escalated_at: float | None = None
    escalation_reason: str | None = None
    resolution: str | None = None
    rto_achieved: float | None = None
    compensations: list[CompensationView] = field(default_factory=list)
    # The saga being compensated: {"plan_key", "failed", "pending": [compensation specs, in order]}.
    compensating: dict[str, Any] | None = None
    deferred: dict[str, Any] | None = None  # the guardrail holding the next step back, while it does
    last_failure: str | None = None  # why the latest attempt did not work (for the chain's reasons)
    approvals: list[int] = field(default_factory=list)
    # Disaster recovery: the restored checkpoint's age at detection, effects undone, RPO/RTO vs targets.
    rpo_achieved: float | None = None
    rpo_checkpoint_at: float | None = None
    effects_undone: list[str] = field(default_factory=list)
    objectives: dict[str, Any] | None = None
    flags_restored: list[str] = field(default_factory=list)  # keys of degrade steps put back
    # Analyze: repeated observations folded into this incident (deduplication), blast radius.
    observations: int = 0
    last_observed_at: float | None = None
    blast_radius: list[str] = field(default_factory=list)
    blast_radius_complete: bool = True
    # The DR drill whose window and blast radius this incident was detected in (None: a real one).
    drill: int | None = None

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    def open_step(self) -> StepView | None:
        for step in reversed(self.actions):
            if step.outcome is None:
                return step
        return None


@dataclass
class ApprovalView:
    id: int
    incident: int
    component: str
    step: int
    policy: str
    strategy: str
    requested_at: float
    deadline: float
    default: str  # deny | approve: what a timeout decides
    actions: list[dict[str, Any]] = field(default_factory=list)
    status: str = "pending"  # pending | granted | denied | expired | cancelled
    outcome: str | None = None  # granted | denied once decided (by a person or by the default)
    decided_at: float | None = None
    decided_by: dict[str, Any] | None = None
    reason: str | None = None


@dataclass
class SilenceView:
    id: int
    component: str  # a name or a glob
    created_at: float
    until: float
    reason: str
    by: dict[str, Any] = field(default_factory=dict)
    expired_at: float | None = None  # lifted by hand
    expired_by: dict[str, Any] | None = None

    def active(self, now: float) -> bool:
        return self.expired_at is None and self.created_at <= now < self.until


@dataclass
class SymptomView:
    """A failing component attached to its root causes' incidents instead of having its own."""

    component: str
    incidents: list[int]  # the root incidents it belongs to (open, or closed while settling)
    roots: list[str]
    since: float
    failure_class: str | None = None
    settle_until: float | None = None  # set once every root incident is closed
    hold_down: float | None = None  # waiting this long for a healthy-looking dependency's verdict


@dataclass
class DrillView:
    """A DR drill run by ``healer drill``: its blast radius and what it did, as recorded."""

    id: int
    name: str
    started_at: float
    radius: list[str]  # the components the drill may touch
    deadline: float  # after this the drill counts as over even if its end was never recorded
    by: dict[str, Any] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)  # injected / reverted, in order
    finished_at: float | None = None
    verdict: str | None = None  # passed | failed | aborted
    reasons: list[str] = field(default_factory=list)
    incidents: list[int] = field(default_factory=list)

    def active(self, ts: float) -> bool:
        return self.finished_at is None and self.started_at <= ts <= self.deadline


@dataclass
class FleetState:
    components: dict[str, ComponentView] = field(default_factory=dict)
    incidents: dict[int, IncidentView] = field(default_factory=dict)
    # component -> the incident that currently owns it (open, or escalated and not yet recovered)
    active_incident: dict[str, int] = field(default_factory=dict)
    next_incident: int = 1
    position: int = 0
    policies_hash: str | None = None
    actuator_breakers: dict[str, str] = field(default_factory=dict)  # breaker name -> its last state
    approvals: dict[int, ApprovalView] = field(default_factory=dict)
    next_approval: int = 1
    silences: dict[int, SilenceView] = field(default_factory=dict)
    next_silence: int = 1
    plan_times: list[float] = field(default_factory=list)  # fleet-wide, for actions-per-window budgets
    # Monitor's telemetry link: bad input dropped per reason (cumulative), the broker link's state
    telemetry_dropped: dict[str, int] = field(default_factory=dict)
    mqtt: dict[str, Any] | None = None  # {"state": connected|disconnected, "since": ts, ...}
    # Analyze: suppressed symptoms, and dependency edges learned from breaker telemetry in the
    # order first seen (the graph Analyze uses is config + these, so replay rebuilds it exactly).
    symptoms: dict[str, SymptomView] = field(default_factory=dict)
    learned_edges: list[tuple[str, str]] = field(default_factory=list)  # (component, dependency)
    # Derived indexes, rebuilt by the fold and left out of the snapshot.
    failing: set[str] = field(default_factory=set)
    open_breakers_on: dict[str, set[str]] = field(default_factory=dict)  # dependency -> reporters
    _learned: set[tuple[str, str]] = field(default_factory=set)
    drills: dict[int, DrillView] = field(default_factory=dict)
    next_drill: int = 1

    # -- reading helpers (used by the pure Analyze and Plan stages) -----------------------
    def component(self, name: str) -> ComponentView:
        view = self.components.get(name)
        if view is None:
            view = ComponentView(name)
        return view

    def active_for(self, component: str) -> IncidentView | None:
        iid = self.active_incident.get(component)
        return self.incidents.get(iid) if iid is not None else None

    # -- the fold ---------------------------------------------------------------------------
    def apply_all(self, events: Iterable[RecordedEvent]) -> FleetState:
        for ev in events:
            self.apply(ev)
        return self

    def apply(self, ev: RecordedEvent) -> None:
        self.position = ev.position
        t = ev.type
        handler = _HANDLERS.get(t)
        if handler is not None:
            handler(self, ev)
        if t in _INDEXED:  # most events (steps, plans, closings) change nothing Analyze indexes
            _analysis_index(self, ev)

    def _comp(self, ev: RecordedEvent) -> ComponentView:
        assert ev.component is not None
        view = self.components.get(ev.component)
        if view is None:
            view = self.components[ev.component] = ComponentView(ev.component)
        return view

    def _inc(self, ev: RecordedEvent) -> IncidentView | None:
        return self.incidents.get(ev.incident) if ev.incident is not None else None

    # -- views for the CLI and for digests --------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "components": {k: asdict(v) for k, v in sorted(self.components.items())},
            "incidents": {str(k): asdict(v) for k, v in sorted(self.incidents.items())},
            "active_incident": dict(sorted(self.active_incident.items())),
            "next_incident": self.next_incident,
            "approvals": {str(k): asdict(v) for k, v in sorted(self.approvals.items())},
            "silences": {str(k): asdict(v) for k, v in sorted(self.silences.items())},
            "next_approval": self.next_approval,
            "next_silence": self.next_silence,
            "plan_times": list(self.plan_times),
            "symptoms": {k: asdict(v) for k, v in sorted(self.symptoms.items())},
            "learned_edges": [list(e) for e in self.learned_edges],
            "drills": {str(k): asdict(v) for k, v in sorted(self.drills.items())},
        }

    def digest(self) -> str:
        """sha256 of ``snapshot()`` as sorted JSON, without building it: the encoder walks the
        views through their ``__dict__`` (same fields, same bytes) instead of ``asdict``'s deep
        copy, which made the digest cost as much as the fold itself."""
        doc = {
            "components": dict(sorted(self.components.items())),
            "incidents": {str(k): v for k, v in sorted(self.incidents.items())},
            "active_incident": dict(sorted(self.active_incident.items())),
            "next_incident": self.next_incident,
            "approvals": {str(k): v for k, v in sorted(self.approvals.items())},
            "silences": {str(k): v for k, v in sorted(self.silences.items())},
            "next_approval": self.next_approval,
            "next_silence": self.next_silence,
            "plan_times": self.plan_times,
            "symptoms": dict(sorted(self.symptoms.items())),
            "learned_edges": self.learned_edges,
            "drills": {str(k): v for k, v in sorted(self.drills.items())},
        }
        blob = json.dumps(doc, sort_keys=True, default=_plain).encode()
        return hashlib.sha256(blob).hexdigest()

    def slow_digest(self) -> str:
        """The digest from ``snapshot()`` itself (what ``digest`` must always equal)."""
        blob = json.dumps(self.snapshot(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


def _plain(obj: Any) -> Any:
    return vars(obj) if is_dataclass(obj) and not isinstance(obj, type) else str(obj)


def _process_started(s: FleetState, ev: RecordedEvent) -> None:
    c = s._comp(ev)
    c.pid = ev.data.get("pid")
    c.pid_create_time = ev.data.get("create_time")
    c.process_running = True
    c.health = "unknown"  # a new process must prove itself: probes start over
    c.health_since = ev.ts
    for name in c.probes:
        c.probes[name] = ("unknown", ev.ts)
    if ev.type == T.PROCESS_STARTED and ev.data.get("restart"):
        c.restarts += 1


def _process_exited(s: FleetState, ev: RecordedEvent) -> None:
    c = s._comp(ev)
    if c.pid == ev.data.get("pid"):
        c.process_running = False
    c.last_exit = dict(ev.data)


def _health_became(health: str) -> Callable[[FleetState, RecordedEvent], None]:
    """The projector of a component's health transition: failed, recovered, became unknown."""

    def apply(s: FleetState, ev: RecordedEvent) -> None:
        c = s._comp(ev)
        c.health = health
        c.health_since = ev.ts
        c.evidence = dict(ev.data)
        _probe_statuses(c, ev)

    return apply


PROBE_STATUSES = frozenset({"unknown", "passing", "failing"})


def _set_probe(c: ComponentView, name: Any, status: Any, ts: float) -> None:
    if not isinstance(name, str) or status not in PROBE_STATUSES:
        return  # written by the Monitor; anything else changes nothing here
    old = c.probes.get(name)
    if old is None or old[0] != status:
        c.probes[name] = (status, ts)


def _probe_statuses(c: ComponentView, ev: RecordedEvent) -> None:
    probes = ev.data.get("probes")
    if isinstance(probes, dict):
        for name, evidence in probes.items():
            if isinstance(evidence, dict):
                _set_probe(c, name, evidence.get("status"), ev.ts)


def _probe_transitioned(s: FleetState, ev: RecordedEvent) -> None:
    c = s._comp(ev)
    name, status = ev.data.get("probe"), ev.data.get("status")
    _set_probe(c, name, status, ev.ts)
    probes = c.evidence.get("probes")
    if isinstance(name, str) and status in PROBE_STATUSES and isinstance(probes, dict):
        # Keep the evidence diagnosis reads current (copies: the recorded event's data is shared).
        entry = {k: v for k, v in ev.data.items() if k not in ("probe", "previous")}
        probes = {**probes, name: entry}
        failing = sorted(n for n, p in probes.items() if isinstance(p, dict) and p.get("status") == "failing")
        c.evidence = {**c.evidence, "probes": probes, "failing": failing}


def _telemetry_dropped(s: FleetState, ev: RecordedEvent) -> None:
    for reason, count in dict(ev.data.get("dropped", {})).items():
        s.telemetry_dropped[reason] = s.telemetry_dropped.get(reason, 0) + int(count)


def _mqtt_link(s: FleetState, ev: RecordedEvent) -> None:
    state = "connected" if ev.type == T.MQTT_CONNECTED else "disconnected"
    s.mqtt = {"state": state, "since": ev.ts, **dict(ev.data)}


def _daemon_started_mqtt(s: FleetState, ev: RecordedEvent) -> None:
    s.mqtt = None  # a new daemon: its link has not reported yet


def _incident_detected(s: FleetState, ev: RecordedEvent) -> None:
    assert ev.incident is not None and ev.component is not None
    s.incidents[ev.incident] = IncidentView(
        id=ev.incident, component=ev.component, opened_at=ev.ts, evidence=dict(ev.data.get("evidence", {}))
    )
    s.active_incident[ev.component] = ev.incident
    s.next_incident = max(s.next_incident, ev.incident + 1)
    _bounded_append(s._comp(ev).incident_ids, ev.incident)
    _mark_drill_incident(s, s.incidents[ev.incident], ev.ts)


def _incident_diagnosed(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is None:
        return
    inc.phase = "diagnosed"
    inc.failure_class = ev.data.get("failure_class")
    inc.root_cause = ev.data.get("root_cause")
    inc.symptoms = list(ev.data.get("symptoms", []))
    inc.evidence = dict(ev.data.get("evidence", inc.evidence))


def _incident_planned(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is None:
        return
    inc.phase = "planned"
    inc.policy = ev.data.get("policy")
    inc.policy_hash = ev.data.get("policy_hash")
    inc.step_index = int(ev.data.get("step", 0))
    inc.plan = dict(ev.data)
    inc.verify_deadline = None
    inc.deferred = None
    _bounded_append(s.plan_times, ev.ts)


def _step_started(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is None:
        return
    d = ev.data
    step = int(d.get("step", 0))
    action_index = int(d.get("action_index", 0))
    inc.phase = "acting"
    if action_index == 0:  # one attempt per saga, however many actions it has
        inc.attempts[step] = inc.attempts.get(step, 0) + 1
    inc.actions.append(
        StepView(
            step=step,
            action_index=action_index,
            attempt=int(d.get("attempt", 1)),
            actuator=str(d.get("actuator")),
            action=str(d.get("action")),
            key=str(d.get("idempotency_key")),
            started_at=ev.ts,
            before=dict(d.get("before") or {}),
        )
    )
    if ev.component is not None:
        s._comp(ev).last_action_at = ev.ts
        if action_index == 0:
            kind = str((inc.plan or {}).get("kind") or (inc.plan or {}).get("strategy") or d.get("action"))
            comp = s._comp(ev)
            comp.last_action_by[kind] = ev.ts
            _bounded_append(comp.attempt_log, (ev.ts, kind))


def _step_finished(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is None:
        return
    key = ev.data.get("idempotency_key")
    for step in reversed(inc.actions):
        if step.key == key and step.outcome is None:
            step.outcome = ev.type.removeprefix("step.")
            step.finished_at = ev.ts
            step.detail = dict(ev.data)
            break
    last_action = len((inc.plan or {}).get("actions", [])) - 1
    if ev.type == T.STEP_SUCCEEDED and int(ev.data.get("action_index", 0)) < last_action:
        return  # more actions of this saga to run
    if ev.type == T.STEP_SUCCEEDED:
        inc.phase = "verifying"
        timeout = float((inc.plan or {}).get("verify_timeout", 30.0))
        inc.verify_deadline = ev.ts + timeout
    else:
        inc.phase = "diagnosed"  # waiting for the planner's next step
        inc.verify_deadline = None
        inc.last_failure = str(ev.data.get("error") or ev.data.get("reason") or ev.type)


def _verification_failed(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is not None:
        inc.phase = "diagnosed"
        inc.verify_deadline = None
        inc.last_failure = str(ev.data.get("reason") or "verification failed")


def _incident_verified(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is not None:
        inc.verify_deadline = None


def _incident_resolved(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is None:
        return
    inc.status = "resolved"
    inc.phase = "resolved"
    inc.resolved_at = ev.ts
    inc.resolution = ev.data.get("resolution")
    inc.rto_achieved = ev.ts - inc.opened_at
    inc.verify_deadline = None
    _close_waits(s, inc, ev)
    if s.active_incident.get(inc.component) == inc.id:
        del s.active_incident[inc.component]


def _incident_escalated(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is None:
        return
    inc.status = "escalated"
    inc.phase = "escalated"
    inc.escalated_at = ev.ts
    inc.escalation_reason = ev.data.get("reason")
    inc.verify_deadline = None
    _close_waits(s, inc, ev)


def _step_failed(s: FleetState, ev: RecordedEvent) -> None:
    _step_finished(s, ev)
    inc = s._inc(ev)
    pending = ev.data.get("compensations")
    if inc is not None and pending:
        inc.compensating = {
            "plan_key": ev.data.get("plan_key"),
            "failed": ev.data.get("idempotency_key"),
            "pending": [dict(c) for c in pending],
        }


def _step_abandoned(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is None:
        return
    for step in reversed(inc.actions):
        if step.key == ev.data.get("idempotency_key") and step.outcome is None:
            step.outcome = "abandoned"
            step.finished_at = ev.ts
            step.detail = dict(ev.data)
            break


def _compensation_view(inc: IncidentView, ev: RecordedEvent) -> CompensationView:
    d = ev.data
    for view in inc.compensations:
        if view.key == d.get("idempotency_key"):
            return view
    view = CompensationView(
        key=str(d.get("idempotency_key")),
        of=str(d.get("of")),
        action_index=int(d.get("action_index", 0)),
        actuator=str(d.get("actuator")),
        action=str(d.get("action")),
    )
    inc.compensations.append(view)
    return view


def _compensation_event(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is None:
        return
    view = _compensation_view(inc, ev)
    if ev.type == T.COMPENSATION_STARTED:
        view.tries += 1
        view.in_flight = True
        view.outcome = None
        view.started_at = ev.ts
        return
    view.in_flight = False
    view.finished_at = ev.ts
    view.detail = dict(ev.data)
    if ev.type == T.COMPENSATION_SUCCEEDED:
        view.outcome = "succeeded"
        if inc.compensating is not None:
            inc.compensating["pending"] = [c for c in inc.compensating["pending"] if c.get("key") != view.key]
    elif ev.type == T.COMPENSATION_ABANDONED or ev.data.get("final"):
        # Out of retries, or unknown whether it took effect: a human takes over the rest.
        view.outcome = "abandoned" if ev.type == T.COMPENSATION_ABANDONED else "failed"
        inc.compensating = None


def _saga_compensated(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is not None:
        inc.compensating = None


def _breaker_changed(s: FleetState, ev: RecordedEvent) -> None:
    name = ev.data.get("breaker")
    if name:
        s.actuator_breakers[str(name)] = str(ev.data.get("state"))


def _policies_loaded(s: FleetState, ev: RecordedEvent) -> None:
    s.policies_hash = ev.data.get("hash")


def _bounded_append(items: list[Any], value: Any) -> None:
    items.append(value)
    if len(items) > HISTORY_MAX:
        del items[: len(items) - HISTORY_MAX]


def _close_waits(s: FleetState, inc: IncidentView, ev: RecordedEvent) -> None:
    """A closed incident waits for nothing: its deferral ends and pending approvals are void."""
    inc.deferred = None
    for aid in inc.approvals:
        ap = s.approvals.get(aid)
        if ap is not None and ap.status == "pending":
            ap.status = "cancelled"
            ap.decided_at = ev.ts
            ap.reason = f"incident {inc.status}"


def _incident_deferred(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is None:
        return
    inc.phase = "deferred"
    inc.deferred = dict(ev.data)


def _approval_requested(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    d = ev.data
    aid = int(d["approval"])
    s.approvals[aid] = ApprovalView(
        id=aid,
        incident=int(ev.incident or 0),
        component=str(ev.component),
        step=int(d.get("step", 0)),
        policy=str(d.get("policy")),
        strategy=str(d.get("strategy")),
        requested_at=ev.ts,
        deadline=float(d.get("deadline", ev.ts)),
        default=str(d.get("default", "deny")),
        actions=list(d.get("actions", [])),
    )
    s.next_approval = max(s.next_approval, aid + 1)
    if inc is not None:
        inc.phase = "awaiting_approval"
        inc.deferred = None
        inc.approvals.append(aid)


def _approval_decided(s: FleetState, ev: RecordedEvent) -> None:
    ap = s.approvals.get(int(ev.data.get("approval", 0)))
    if ap is None:
        return
    ap.status = ev.type.removeprefix("approval.")
    ap.outcome = "granted" if ev.data.get("outcome", ap.status) in ("granted", "approve") else "denied"
    ap.decided_at = ev.ts
    ap.decided_by = ev.data.get("by")
    ap.reason = ev.data.get("reason")
    inc = s.incidents.get(ap.incident)
    if inc is not None and inc.is_open and inc.phase == "awaiting_approval":
        inc.phase = "diagnosed"  # the planner decides again, knowing the answer


def _silence_created(s: FleetState, ev: RecordedEvent) -> None:
    d = ev.data
    sid = int(d["silence"])
    s.silences[sid] = SilenceView(
        id=sid,
        component=str(d.get("component")),
        created_at=ev.ts,
        until=float(d.get("until", ev.ts)),
        reason=str(d.get("reason", "")),
        by=dict(d.get("by") or {}),
    )
    s.next_silence = max(s.next_silence, sid + 1)


def _silence_expired(s: FleetState, ev: RecordedEvent) -> None:
    sil = s.silences.get(int(ev.data.get("silence", 0)))
    if sil is not None and sil.expired_at is None:
        sil.expired_at = ev.ts
        sil.expired_by = ev.data.get("by")


# -- Analyze: breaker telemetry, agent reports, symptoms --------------------------------------
def component_failing(c: ComponentView) -> bool:
    """Failing health checks, or a process that ended without being asked to."""
    if c.health == "failing":
        return True
    return not c.process_running and c.last_exit is not None and not c.last_exit.get("expected")


def _breaker_transitioned(s: FleetState, ev: RecordedEvent) -> None:
    dep = ev.data.get("dependency")
    state = ev.data.get("state")
    if not isinstance(dep, str) or not dep or state not in BREAKER_STATES:
        return  # telemetry is validated by the Monitor; a malformed record changes nothing here
    c = s._comp(ev)
    record = {k: v for k, v in ev.data.items() if k != "dependency"}
    record["since"] = ev.ts
    c.breakers[dep] = record
    reporters = s.open_breakers_on.setdefault(dep, set())
    if state == "open":
        reporters.add(c.name)
    else:
        reporters.discard(c.name)
        if not reporters:
            del s.open_breakers_on[dep]
    edge = (c.name, dep)
    if dep != c.name and edge not in s._learned:
        s._learned.add(edge)
        s.learned_edges.append(edge)


def _agent_reported(s: FleetState, ev: RecordedEvent) -> None:
    kind = ev.data.get("kind")
    if not isinstance(kind, str) or not kind:
        return
    s._comp(ev).reports[kind] = {"value": ev.data.get("value"), "detail": ev.data.get("detail"), "ts": ev.ts}


def _symptom_suppressed(s: FleetState, ev: RecordedEvent) -> None:
    assert ev.component is not None
    incidents = [int(i) for i in ev.data.get("incidents", [ev.incident] if ev.incident else [])]
    roots = [str(r) for r in ev.data.get("roots", [])]
    view = s.symptoms.get(ev.component)
    if view is None:
        view = s.symptoms[ev.component] = SymptomView(
            ev.component, [], [], ev.ts, ev.data.get("failure_class")
        )
    view.incidents.extend(i for i in incidents if i not in view.incidents)
    view.roots.extend(r for r in roots if r not in view.roots)
    # Joining an open incident stops any settling; a late symptom arrives already settling.
    view.settle_until = ev.data.get("settle_until")
    view.hold_down = ev.data.get("hold_down_s")
    for iid in incidents:
        inc = s.incidents.get(iid)
        if inc is not None and ev.component not in inc.symptoms:
            inc.symptoms.append(ev.component)


def _symptom_settling(s: FleetState, ev: RecordedEvent) -> None:
    view = s.symptoms.get(ev.component or "")
    if view is not None:
        view.settle_until = ev.data.get("settle_until")


def _symptom_released(s: FleetState, ev: RecordedEvent) -> None:
    s.symptoms.pop(ev.component or "", None)


_REPEATS = frozenset({T.PROCESS_EXITED, T.COMPONENT_FAILED, T.AGENT_REPORTED})
_HEALTH = frozenset({T.COMPONENT_FAILED, T.COMPONENT_RECOVERED})
_LIFECYCLE = frozenset({T.PROCESS_STARTED, T.PROCESS_ADOPTED, T.PROCESS_EXITED, *_HEALTH})


# The event types _analysis_index acts on (it returns at once for any other).
_INDEXED = frozenset(
    {*_LIFECYCLE, *_REPEATS, T.INCIDENT_DETECTED, T.INCIDENT_DIAGNOSED, T.BREAKER_TRANSITIONED}
)


def _analysis_index(s: FleetState, ev: RecordedEvent) -> None:
    """Bookkeeping Analyze reads: transitions, the failing set, incident extension."""
    t = ev.type
    if ev.component is None:
        return
    if t in _LIFECYCLE:
        c = s.components[ev.component]  # every lifecycle handler creates the view
        if t in _HEALTH:
            if c.last_known_health is not None and c.last_known_health != c.health:
                c.transitions.append(ev.ts)
                del c.transitions[:-TRANSITIONS_KEPT]
            c.last_known_health = c.health
        if component_failing(c):
            s.failing.add(c.name)
        else:
            s.failing.discard(c.name)
    if t == T.INCIDENT_DETECTED:
        if ev.incident is not None:
            s._comp(ev).last_incident = ev.incident
        return
    if t == T.INCIDENT_DIAGNOSED:
        inc = s._inc(ev)
        if inc is not None:
            inc.blast_radius = list(ev.data.get("blast_radius", []))
            inc.blast_radius_complete = bool(ev.data.get("blast_radius_complete", True))
        return
    # A repeated observation of an open failure extends that incident instead of opening one.
    target = ev.component
    if t == T.BREAKER_TRANSITIONED:
        if ev.data.get("state") != "open":
            return
        target = str(ev.data.get("dependency"))
    elif t not in _REPEATS or (t == T.PROCESS_EXITED and ev.data.get("expected")):
        return
    inc = s.active_for(target)
    if inc is not None and inc.opened_at <= ev.ts:
        inc.observations += 1
        inc.last_observed_at = ev.ts


def _mark_drill_incident(s: FleetState, inc: IncidentView, ts: float) -> None:
    # Newest drill first: with overlapping drills the incident belongs to the latest that covers it.
    for drill in sorted(s.drills.values(), key=lambda d: -d.id):
        if drill.active(ts) and inc.component in drill.radius:
            inc.drill = drill.id
            _bounded_append(drill.incidents, inc.id)
            return


def _drill_started(s: FleetState, ev: RecordedEvent) -> None:
    d = ev.data
    did = int(d.get("drill", 0))
    s.drills[did] = DrillView(
        id=did,
        name=str(d.get("name", "")),
        started_at=ev.ts,
        radius=[str(c) for c in d.get("radius", [])],
        deadline=float(d.get("deadline", ev.ts)),
        by=dict(d.get("by") or {}),
    )
    s.next_drill = max(s.next_drill, did + 1)


def _drill_fault(s: FleetState, ev: RecordedEvent) -> None:
    drill = s.drills.get(int(ev.data.get("drill", 0)))
    if drill is not None:
        phase = "injected" if ev.type == T.DRILL_FAULT_INJECTED else "reverted"
        _bounded_append(drill.faults, {"phase": phase, "at": ev.ts, **dict(ev.data.get("fault") or {})})


def _drill_finished(s: FleetState, ev: RecordedEvent) -> None:
    drill = s.drills.get(int(ev.data.get("drill", 0)))
    if drill is not None and drill.finished_at is None:
        drill.finished_at = ev.ts
        drill.verdict = ev.data.get("verdict")
        drill.reasons = [str(r) for r in ev.data.get("reasons", [])]


def _checkpoint_restored(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is not None and ev.data.get("created_at") is not None:
        inc.rpo_checkpoint_at = float(ev.data["created_at"])
        inc.rpo_achieved = max(0.0, inc.opened_at - inc.rpo_checkpoint_at)


def _effect_compensated(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is not None:
        inc.effects_undone.append(str(ev.data.get("effect")))


def _flags_restored(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is not None and ev.data.get("step") not in inc.flags_restored:
        inc.flags_restored.append(str(ev.data.get("step")))


def _objectives_measured(s: FleetState, ev: RecordedEvent) -> None:
    inc = s._inc(ev)
    if inc is not None:
        inc.objectives = dict(ev.data)


_HANDLERS: dict[str, Callable[[FleetState, RecordedEvent], None]] = {
    T.PROCESS_STARTED: _process_started,
    T.PROCESS_ADOPTED: _process_started,
    T.PROCESS_EXITED: _process_exited,
    T.COMPONENT_FAILED: _health_became("failing"),
    T.COMPONENT_RECOVERED: _health_became("healthy"),
    T.INCIDENT_DETECTED: _incident_detected,
    T.INCIDENT_DIAGNOSED: _incident_diagnosed,
    T.INCIDENT_PLANNED: _incident_planned,
    T.STEP_STARTED: _step_started,
    T.STEP_SUCCEEDED: _step_finished,
    T.STEP_FAILED: _step_failed,
    T.STEP_INTERRUPTED: _step_finished,
    T.VERIFICATION_FAILED: _verification_failed,
    T.INCIDENT_VERIFIED: _incident_verified,
    T.INCIDENT_RESOLVED: _incident_resolved,
    T.INCIDENT_ESCALATED: _incident_escalated,
    T.POLICIES_LOADED: _policies_loaded,
    T.STEP_ABANDONED: _step_abandoned,
    T.COMPENSATION_STARTED: _compensation_event,
    T.COMPENSATION_SUCCEEDED: _compensation_event,
    T.COMPENSATION_FAILED: _compensation_event,
    T.COMPENSATION_ABANDONED: _compensation_event,
    T.SAGA_COMPENSATED: _saga_compensated,
    T.BREAKER_OPENED: _breaker_changed,
    T.BREAKER_HALF_OPENED: _breaker_changed,
    T.BREAKER_CLOSED: _breaker_changed,
    T.INCIDENT_DEFERRED: _incident_deferred,
    T.APPROVAL_REQUESTED: _approval_requested,
    T.APPROVAL_GRANTED: _approval_decided,
    T.APPROVAL_DENIED: _approval_decided,
    T.APPROVAL_EXPIRED: _approval_decided,
    T.SILENCE_CREATED: _silence_created,
    T.SILENCE_EXPIRED: _silence_expired,
    T.COMPONENT_BECAME_UNKNOWN: _health_became("unknown"),
    T.PROBE_TRANSITIONED: _probe_transitioned,
    T.TELEMETRY_DROPPED: _telemetry_dropped,
    T.MQTT_CONNECTED: _mqtt_link,
    T.MQTT_DISCONNECTED: _mqtt_link,
    T.DAEMON_STARTED: _daemon_started_mqtt,
    T.CHECKPOINT_RESTORED: _checkpoint_restored,
    T.EFFECT_COMPENSATED: _effect_compensated,
    T.OBJECTIVES_MEASURED: _objectives_measured,
    T.FLAGS_RESTORED: _flags_restored,
    T.BREAKER_TRANSITIONED: _breaker_transitioned,
    T.AGENT_REPORTED: _agent_reported,
    T.SYMPTOM_SUPPRESSED: _symptom_suppressed,
    T.SYMPTOM_SETTLING: _symptom_settling,
    T.SYMPTOM_RELEASED: _symptom_released,
    T.DRILL_STARTED: _drill_started,
    T.DRILL_FAULT_INJECTED: _drill_fault,
    T.DRILL_FAULT_REVERTED: _drill_fault,
    T.DRILL_FINISHED: _drill_finished,
}
