"""Waking a dependency's probes for a hold-down: the Monitor checks them now, not at their turn,
and the control loop asks it to for each dependency a recorded hold waits on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from pydantic import BaseModel

from healer.analyze.analyzer import AnalysisContext, AnalysisSettings, GraphCache
from healer.analyze.taxonomy import load_taxonomy
from healer.clock import ManualClock, SystemClock
from healer.config import HealerConfig
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore
from healer.loop import ControlLoop, Decider
from healer.monitor.probes import ProbeContext, ProbeRegistry, ProbeResult
from healer.monitor.scheduler import Monitor
from healer.plan.policy import PolicySet
from healer.supervisor import Supervisor


class Answer:
    ok = True
    checks: ClassVar[list[float]] = []


class SwitchProbe:
    class Params(BaseModel):
        pass

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        pass

    async def check(self) -> ProbeResult:
        Answer.checks.append(time.monotonic())
        return ProbeResult(Answer.ok, "switch")


@pytest.mark.asyncio
async def test_wake_component_checks_its_probes_now_not_at_their_next_turn(tmp_path: Path) -> None:
    Answer.ok, Answer.checks = True, []
    cfg = HealerConfig(
        state_dir=tmp_path / "state",
        policies_dir=tmp_path / "policies",
        # A minute between checks: only a wake can make it look again within the test.
        components={"db": {"probes": [{"type": "switch", "interval": "60s", "failure_threshold": 1}]}},
    )
    got: list[Event] = []
    async with httpx.AsyncClient(trust_env=False) as http:
        monitor = Monitor(
            cfg,
            ProbeRegistry({"switch": SwitchProbe}),
            Supervisor({}, tmp_path / "logs", lambda *a: None),
            got.append,
            SystemClock(),
            http,
        )
        task = asyncio.create_task(monitor.run())
        try:
            async with asyncio.timeout(5):
                while not any(e.type == T.COMPONENT_RECOVERED for e in got):
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # past start-up checks: the next one is up to a minute away
            Answer.ok = False
            checks = len(Answer.checks)
            monitor.wake_component("db")
            monitor.wake_component("no-such-component")  # nothing to wake: no error
            async with asyncio.timeout(2):
                while not any(e.type == T.COMPONENT_FAILED for e in got):
                    await asyncio.sleep(0.01)
            assert len(Answer.checks) == checks + 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
async def test_the_loop_wakes_the_dependencies_a_recorded_hold_waits_on(tmp_path: Path) -> None:
    tax = load_taxonomy()
    ctx = AnalysisContext(
        tax, frozenset(), GraphCache({"db": [], "api": ["db"]}), {}, AnalysisSettings(), {"db": 2.0}
    )
    store = await SQLiteEventStore.open(tmp_path / "state")
    clock = ManualClock(1000.0)
    woken: list[str] = []
    loop = ControlLoop(
        store, FleetState(), Decider(tax, PolicySet((), {}), {}, frozenset(), ctx), clock, lambda _r: None
    )
    loop.wake_probes = woken.append
    task = asyncio.create_task(loop.run())
    try:
        probes = {"http#0": {"status": "passing", "type": "http"}}
        for comp in ("db", "api"):
            loop.submit(Event(T.COMPONENT_RECOVERED, clock.wall(), comp, data={"probes": probes}))
        await loop.flush()
        assert woken == []
        failing = {"http#0": {"status": "failing", "type": "http"}}
        loop.submit(Event(T.COMPONENT_FAILED, clock.wall(), "api", data={"probes": failing}))
        await loop.flush()
        assert woken == ["db"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
