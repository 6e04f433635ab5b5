"""Prometheus metrics, derived from recorded events in one place (:meth:`Metrics.on_recorded`).

Every number here is a function of the events the daemon recorded since it started (plus the
append timings of its one writer): what the log says is what Prometheus sees. The endpoint is
served by prometheus-client on a loopback address only: it has no authentication.

Event families other issues add (breakers, guardrail deferrals, MQTT link state) are counted
by type in ``healer_events_total`` and read generically from their data until they get
dedicated series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import DB_NAME, EventStore

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_ONSET_KEYS = ("since", "failing_since", "onset", "observed_at")
_BREAKER_STATES = {"opened": "open", "half_opened": "half-open", "closed": "closed"}


class Metrics:
    def __init__(self, state_dir: Path | None = None, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events = Counter("healer_events", "Events recorded, by type.", ["type"], registry=r)
        self.log_position = Gauge(
            "healer_event_log_position", "Position of the last recorded event.", registry=r
        )
        self.log_bytes = Gauge("healer_event_log_bytes", "Size of the event store files on disk.", registry=r)
        self.append_seconds = Histogram(
            "healer_event_append_seconds",
            "Latency of one durable append (a batch) through the store's writer.",
            buckets=APPEND_BUCKETS,
            registry=r,
        )
        self.appended = Counter("healer_events_appended", "Events appended durably.", registry=r)
        self.opened = Counter(
            "healer_incidents_opened", "Incidents opened, by failure class.", ["failure_class"], registry=r
        )
        self.resolved = Counter(
            "healer_incidents_resolved",
            "Incidents resolved, by failure class and resolution.",
            ["failure_class", "resolution"],
            registry=r,
        )
        self.escalated = Counter(
            "healer_incidents_escalated", "Incidents escalated to a human.", ["failure_class"], registry=r
        )
        self.open_incidents = Gauge("healer_incidents_open", "Incidents open now.", registry=r)
        self.actions = Counter(
            "healer_actions",
            "Remediation actions finished, by actuator, action and outcome.",
            ["actuator", "action", "outcome"],
            registry=r,
        )
        self.detection = Histogram(
            "healer_detection_seconds",
            "From the failure's onset (as observed) to the incident being opened.",
            ["failure_class"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.recovery = Histogram(
            "healer_recovery_seconds",
            "From detection to verified recovery (RTO achieved).",
            ["failure_class"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.healthy = Gauge(
            "healer_component_healthy", "1 healthy, 0 failing, -1 unknown.", ["component"], registry=r
        )
        self.transitions = Counter(
            "healer_health_transitions", "Component health transitions.", ["component", "health"], registry=r
        )
        self.probe_passing = Gauge(
            "healer_probe_passing",
            "Each probe's latest result at the last transition: 1 passing, 0 failing, -1 unknown.",
            ["component", "probe"],
            registry=r,
        )
        self.breaker = Gauge(
            "healer_breaker_state",
            "1 for the state a circuit breaker is in (from breaker events).",
            ["component", "breaker", "state"],
            registry=r,
        )
        self.guardrail_blocks = Counter(
            "healer_guardrail_blocks", "Actions held back by a guardrail.", ["guardrail"], registry=r
        )
        self.mqtt_connected = Gauge("healer_mqtt_connected", "1 while the MQTT link is up.", registry=r)
        self._class: dict[int, str] = {}
        self._observed: dict[str, float] = {}  # component -> onset of its latest failure observation
        self._open: set[int] = set()
        self._db = state_dir / DB_NAME if state_dir is not None else None
        if self._db is not None:
            self.log_bytes.set_function(self._store_bytes)

    # -- the one place ----------------------------------------------------------------------------
    def prime(self, state: FleetState) -> None:
        """Gauges from the snapshot the daemon rebuilt at start (counters start at zero)."""
        self.log_position.set(state.position)
        for name, comp in state.components.items():
            self._set_health(name, comp.health)
        for inc in state.incidents.values():
            if inc.is_open:
                self._open.add(inc.id)
            self._class[inc.id] = inc.failure_class or "unclassified"
        self.open_incidents.set(len(self._open))

    def on_recorded(self, rec: RecordedEvent) -> None:
        t = rec.type
        d = rec.data
        self.events.labels(t).inc()
        self.log_position.set(rec.position)
        comp = rec.component
        if t in (T.COMPONENT_FAILED, T.COMPONENT_RECOVERED) and comp is not None:
            health = "failing" if t == T.COMPONENT_FAILED else "healthy"
            self.transitions.labels(comp, health).inc()
            self._set_health(comp, health)
            for probe, ev in dict(d.get("probes") or {}).items():
                status = ev.get("status") if isinstance(ev, dict) else None
                self.probe_passing.labels(comp, probe).set({"passing": 1, "failing": 0}.get(str(status), -1))
            if t == T.COMPONENT_FAILED:
                self._observed[comp] = _onset(d, rec.ts)
        elif t == T.PROCESS_EXITED and comp is not None and not d.get("expected"):
            self._observed[comp] = _onset(d, rec.ts)
        elif t == T.INCIDENT_DIAGNOSED and rec.incident is not None:
            cls = str(d.get("failure_class") or "unclassified")
            first = rec.incident not in self._class
            self._class[rec.incident] = cls
            if first:
                self._open.add(rec.incident)
                self.opened.labels(cls).inc()
                onset = self._observed.get(comp or "", rec.ts)
                self.detection.labels(cls).observe(max(0.0, rec.ts - onset))
        elif t == T.INCIDENT_RESOLVED and rec.incident is not None:
            cls = self._class.get(rec.incident, "unclassified")
            self.resolved.labels(cls, str(d.get("resolution"))).inc()
            rto = d.get("rto_achieved")
            if isinstance(rto, int | float):
                self.recovery.labels(cls).observe(float(rto))
            self._open.discard(rec.incident)
            self._class.pop(rec.incident, None)
        elif t == T.INCIDENT_ESCALATED and rec.incident is not None:
            self.escalated.labels(self._class.get(rec.incident, "unclassified")).inc()
            self._open.discard(rec.incident)
        elif t in (T.STEP_SUCCEEDED, T.STEP_FAILED, T.STEP_INTERRUPTED):
            self.actions.labels(str(d.get("actuator")), str(d.get("action")), t.removeprefix("step.")).inc()
        else:
            self._generic(rec)
        self.open_incidents.set(len(self._open))

    def _generic(self, rec: RecordedEvent) -> None:
        t, d = rec.type, rec.data
        if "breaker" in t:
            state = d.get("state") or d.get("to") or _BREAKER_STATES.get(t.rsplit(".", 1)[-1])
            name = next((d[k] for k in ("breaker", "dependency", "name", "target") if d.get(k)), None)
            if state and name:
                for s in {"open", "half-open", "closed", str(state)}:
                    self.breaker.labels(rec.component or "-", str(name), s).set(1 if s == state else 0)
        elif isinstance(d.get("guardrail"), str) and any(w in t for w in ("defer", "block")):
            self.guardrail_blocks.labels(d["guardrail"]).inc()
        elif t.startswith("mqtt.") and t.endswith("connected"):
            self.mqtt_connected.set(0 if t.endswith("disconnected") else 1)

    def _set_health(self, comp: str, health: str) -> None:
        self.healthy.labels(comp).set({"healthy": 1, "failing": 0}.get(health, -1))

    def _store_bytes(self) -> float:
        assert self._db is not None
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += (self._db.parent / (self._db.name + suffix)).stat().st_size
            except OSError:
                continue
        return float(total)

    # -- append latency ----------------------------------------------------------------------
    def timed(self, store: EventStore) -> EventStore:
        return _TimedStore(store, self)

    # -- the endpoint ------------------------------------------------------------------------------
    def serve(self, address: str, port: int) -> Any:
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", address, server.server_port)
        return server


def _onset(d: Any, ts: float) -> float:
    for key in _ONSET_KEYS:
        v = d.get(key)
        if isinstance(v, int | float) and v <= ts:
            return float(v)
    return ts


class _TimedStore:
    """The store, with every append timed (the writer commits each batch durably)."""

    def __init__(self, inner: EventStore, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def append(self, events: Sequence[Event | RecordedEvent]) -> list[RecordedEvent]:
        t0 = time.perf_counter()
        out = await self._inner.append(events)
        self._metrics.append_seconds.observe(time.perf_counter() - t0)
        self._metrics.appended.inc(len(out))
        return out

    async def read(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        return await self._inner.read(after, limit)

    async def last_position(self) -> int:
        return await self._inner.last_position()

    async def close(self) -> None:
        await self._inner.close()
