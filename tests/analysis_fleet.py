"""A pure, in-memory fold for Analyze tests: the snapshot, the analyzer and a clock, no daemon.

It follows the control loop's order exactly: a batch of observations is applied, analysed once,
and the decisions are applied in turn. The planner is left out on purpose: these tests are about
what Analyze decides, and a symptom must never reach the planner as an ``incident.diagnosed``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from healer.analyze.analyzer import (
    AnalysisContext,
    AnalysisSettings,
    GraphCache,
    analyze_batch,
    analyze_deadlines,
)
from healer.analyze.taxonomy import Taxonomy, load_taxonomy
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState


@functools.cache
def taxonomy() -> Taxonomy:
    return load_taxonomy()


class Fleet:
    def __init__(
        self,
        depends_on: Mapping[str, Sequence[str]],
        *,
        supervised: Sequence[str] = (),
        hosts: Mapping[str, str] | None = None,
        settle: float = 5.0,
        start: float = 1_000.0,
        detection: Mapping[str, float] | None = None,
        max_hold: float = 30.0,
    ) -> None:
        self.state = FleetState()
        self.ctx = AnalysisContext(
            taxonomy(),
            frozenset(supervised),
            GraphCache(depends_on),
            dict(hosts or {}),
            AnalysisSettings(settle_time=settle, max_dependency_hold=max_hold),
            dict(detection or {}),
        )
        self.log: list[RecordedEvent] = []
        self.now = start

    # -- time and input ---------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        self.now += seconds

    def _apply(self, ev: Event) -> RecordedEvent:
        rec = RecordedEvent(self.state.position + 1, ev.type, ev.ts, ev.component, ev.incident, dict(ev.data))
        self.state.apply(rec)
        self.log.append(rec)
        return rec

    def observe(self, *events: Event) -> list[RecordedEvent]:
        """One batch of observations; returns the decisions Analyze made (as recorded)."""
        recs = [self._apply(ev) for ev in events]
        return [self._apply(ev) for ev in analyze_batch(self.state, recs, self.now, self.ctx)]

    def record(self, *events: Event) -> None:
        """Events from other stages (plans, steps), applied without analysis."""
        for ev in events:
            self._apply(ev)

    def tick(self) -> list[RecordedEvent]:
        return [self._apply(ev) for ev in analyze_deadlines(self.state, self.now, self.ctx)]

    # -- observations, shaped like the Monitor's ----------------------------------------------------
    def healthy(self, comp: str, **probes: dict[str, Any]) -> Event:
        all_probes = {"http#0": {"status": "passing", "type": "http", "detail": "HTTP 200"}, **probes}
        return Event(T.COMPONENT_RECOVERED, self.now, comp, data={"probes": all_probes})

    def failed(self, comp: str, **probes: dict[str, Any]) -> Event:
        if not probes:
            probes = {"http#0": {"status": "failing", "type": "http", "detail": "HTTP 503"}}
        failing = sorted(n for n, p in probes.items() if p["status"] == "failing")
        return Event(T.COMPONENT_FAILED, self.now, comp, data={"probes": probes, "failing": failing})

    def started(self, comp: str, pid: int) -> Event:
        return Event(T.PROCESS_STARTED, self.now, comp, data={"pid": pid, "create_time": 1.0})

    def exited(self, comp: str, pid: int, signal: str = "SIGKILL") -> Event:
        return Event(T.PROCESS_EXITED, self.now, comp, data={"pid": pid, "signal": signal, "expected": False})

    def breaker(self, agent: str, dependency: str, state: str, failures: int = 5) -> Event:
        return Event(
            T.BREAKER_TRANSITIONED,
            self.now,
            agent,
            data={"dependency": dependency, "state": state, "failure_count": failures},
        )

    def reported(self, agent: str, kind: str, value: Any, detail: str = "") -> Event:
        return Event(T.AGENT_REPORTED, self.now, agent, data={"kind": kind, "value": value, "detail": detail})

    # -- reading -------------------------------------------------------------------------------------
    def of_type(self, etype: str, recs: Sequence[RecordedEvent] | None = None) -> list[RecordedEvent]:
        return [r for r in (self.log if recs is None else recs) if r.type == etype]

    def diagnosis(self, comp: str) -> RecordedEvent:
        found = [r for r in self.of_type(T.INCIDENT_DIAGNOSED) if r.component == comp]
        assert found, f"no diagnosis for {comp}"
        return found[-1]

    def open_roots(self) -> set[str]:
        """Components that own an open incident."""
        return {c for c, i in self.state.active_incident.items() if self.state.incidents[i].status == "open"}

    def symptom_roots(self) -> dict[str, set[str]]:
        """Each suppressed symptom -> the components of the open incidents it belongs to."""
        out = {}
        for comp, sv in self.state.symptoms.items():
            out[comp] = {
                self.state.incidents[i].component
                for i in sv.incidents
                if self.state.incidents[i].status == "open"
            }
        return out


def http(status: str, detail: str = "") -> dict[str, Any]:
    return {
        "status": status,
        "type": "http",
        "detail": detail or ("HTTP 200" if status == "passing" else "refused"),
    }


def process(status: str, os_status: str, pid: int = 100) -> dict[str, Any]:
    return {"status": status, "type": "process", "values": {"pid": pid, "status": os_status, "uptime_s": 5.0}}
