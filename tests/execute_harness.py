"""The real Execute stage in-process: a SQLite store, the control loop, the live FleetState and
the Executor with the installed actuators. Sagas come from hand-built ``incident.planned``
events in the planner's output format (what healer/plan/planner.py emits)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healer.clock import SystemClock
from healer.config import ExecuteConfig
from healer.execute.actuators import ActuatorServices
from healer.execute.executor import Executor
from healer.execute.registry import ActuatorRegistry
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore, rebuild_state
from healer.loop import ControlLoop

FAST_COMPENSATION = {"attempts": 4, "wait_initial": 0.02, "wait_max": 0.05, "wait_jitter": 0.0}


class NoDecisions:
    """Analyze and Plan stay out of the way: these tests watch Execute alone."""

    def follow_ups(self, state: FleetState, rec: RecordedEvent, now: float) -> list[Event]:
        return []

    def due(self, state: FleetState, now: float) -> list[int]:
        return []

    def observed(self, state: FleetState, recs: list[RecordedEvent], now: float) -> list[Event]:
        return []

    def context(self) -> None:
        return None

    def revisit(self, state: FleetState, incident: int, now: float) -> list[Event]:
        return []


@dataclass
class Harness:
    store: SQLiteEventStore
    state: FleetState
    loop: ControlLoop
    executor: Executor
    clock: SystemClock
    recorded: list[RecordedEvent] = field(default_factory=list)

    def types(self, incident: int | None = None, prefix: str = "") -> list[str]:
        return [
            r.type
            for r in self.recorded
            if (incident is None or r.incident == incident) and r.type.startswith(prefix)
        ]

    def of(self, etype: str, incident: int | None = None) -> list[RecordedEvent]:
        return [r for r in self.recorded if r.type == etype and (incident is None or r.incident == incident)]

    async def plan(
        self, component: str, actions: list[dict[str, Any]], *, attempt: int = 1, incident: int | None = None
    ) -> int:
        """Open an incident (or reuse one) and record a planned saga; the executor picks it up."""
        now = self.clock.wall()
        if incident is None:
            incident = self.state.next_incident
            await self.loop.record(
                Event(T.INCIDENT_DETECTED, now, component, incident, {"evidence": {"test": True}})
            )
            await self.loop.record(
                Event(
                    T.INCIDENT_DIAGNOSED,
                    now,
                    component,
                    incident,
                    {"failure_class": "crash", "root_cause": component},
                )
            )
        await self.loop.record(
            Event(
                T.INCIDENT_PLANNED,
                now,
                component,
                incident,
                {
                    "policy": "test",
                    "step": 0,
                    "strategy": "saga",
                    "actions": actions,
                    "attempt": attempt,
                    "max_attempts": 3,
                    "not_before": now,
                    "timeout": 10,
                    "verify_timeout": 30,
                    "idempotency_key": f"incident-{incident}/step-0/attempt-{attempt}",
                },
            )
        )
        return incident

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait until every saga, compensation and recording has finished."""
        async with asyncio.timeout(timeout):
            while self.executor.in_flight:
                await asyncio.wait(set(self.executor._tasks), return_when=asyncio.ALL_COMPLETED)
            await self.loop.flush()

    async def rebuilt(self) -> FleetState:
        return await rebuild_state(self.store)


@asynccontextmanager
async def harness(
    tmp_path: Path,
    settings: dict[str, Any] | None = None,
    supervisor: Any = None,
    *,
    resume_first: bool = False,
) -> AsyncIterator[Harness]:
    """On ``tmp_path / "state"``: a new log, or the state a previous run (a killed daemon) left."""
    cfg = ExecuteConfig.model_validate({"compensation": FAST_COMPENSATION, **(settings or {})})
    state_dir = tmp_path / "state"
    store = await SQLiteEventStore.open(state_dir, exclusive=True)
    state = await rebuild_state(store)
    clock = SystemClock()
    recorded: list[RecordedEvent] = []
    executor: Executor | None = None

    def on_recorded(rec: RecordedEvent) -> None:
        recorded.append(rec)
        if rec.type == T.INCIDENT_PLANNED and executor is not None:
            executor.dispatch(rec)

    loop = ControlLoop(store, state, NoDecisions(), clock, on_recorded)  # type: ignore[arg-type]
    task = asyncio.create_task(loop.run())
    registry = ActuatorRegistry.discover(ActuatorServices(supervisor, state_dir, cfg, None))
    executor = Executor(
        registry, loop.record, clock, submit=loop.submit, settings=cfg, resume_first=resume_first
    )
    h = Harness(store, state, loop, executor, clock, recorded)
    try:
        yield h
    finally:
        await executor.drain(5)
        await loop.flush()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
