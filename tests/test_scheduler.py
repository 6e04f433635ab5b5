"""The scheduler in-process: hysteresis, probe plugins that raise, results pushed outside the
schedule, timeouts. Probes here are scripted plugins (what a third-party probe looks like);
the monitor, its tasks and its timing are the real ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from healer.clock import SystemClock
from healer.config import HealerConfig
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.monitor.probes import ProbeContext, ProbeRegistry, ProbeResult
from healer.monitor.scheduler import Monitor
from healer.supervisor import Supervisor


class Script:
    """What the scripted probes answer next; a test changes it while the monitor runs."""

    answer: Any = True  # True / False / None, or an exception instance to raise
    calls = 0
    ctx: ProbeContext | None = None


class ScriptedProbe:
    class Params(BaseModel):
        pass

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        Script.ctx = ctx

    async def check(self) -> ProbeResult:
        Script.calls += 1
        if isinstance(Script.answer, BaseException):
            raise Script.answer
        if Script.answer == "hang":
            await asyncio.sleep(3600)
        return ProbeResult(Script.answer, f"scripted {Script.answer}", {"calls": Script.calls})


class SteadyProbe:
    class Params(BaseModel):
        pass

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        pass

    async def check(self) -> ProbeResult:
        return ProbeResult(True, "fine")


@pytest.fixture(autouse=True)
def _reset_script() -> None:
    Script.answer, Script.calls, Script.ctx = True, 0, None


@pytest.fixture
async def run_monitor(tmp_path: Path) -> AsyncIterator[Any]:
    tasks: list[asyncio.Task[None]] = []
    http = httpx.AsyncClient(trust_env=False)

    def start(probes: list[dict[str, Any]]) -> tuple[list[Event], asyncio.Event]:
        cfg = HealerConfig(
            state_dir=tmp_path / "state",
            policies_dir=tmp_path / "policies",
            components={"comp": {"probes": probes}},
        )
        got: list[Event] = []
        arrived = asyncio.Event()

        def emit(ev: Event) -> None:
            if ev.type == T.PROBE_TRANSITIONED:
                return  # one probe's changes under a steady component: tests/test_verify_probes.py
            got.append(ev)
            arrived.set()

        registry = ProbeRegistry({"scripted": ScriptedProbe, "steady": SteadyProbe})
        supervisor = Supervisor({}, tmp_path / "logs", lambda *a: None)
        monitor = Monitor(cfg, registry, supervisor, emit, SystemClock(), http)
        tasks.append(asyncio.create_task(monitor.run()))
        return got, arrived

    yield start
    for t in tasks:
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
    await http.aclose()


async def next_event(got: list[Event], arrived: asyncio.Event, count: int, timeout: float = 5) -> Event:
    async with asyncio.timeout(timeout):
        while len(got) < count:
            arrived.clear()
            await arrived.wait()
    return got[count - 1]


SCRIPTED = {"type": "scripted", "interval": "20ms", "failure_threshold": 3, "success_threshold": 2}


async def test_n_failures_to_fail_and_m_passes_to_recover(run_monitor: Any) -> None:
    got, arrived = run_monitor([SCRIPTED])
    first = await next_event(got, arrived, 1)
    assert first.type == T.COMPONENT_RECOVERED and Script.calls >= 2, "two passes before healthy"
    Script.answer = False
    calls_before = Script.calls
    failed = await next_event(got, arrived, 2)
    assert failed.type == T.COMPONENT_FAILED
    assert Script.calls - calls_before >= 3, "three consecutive failures before failing"
    assert failed.data["failing"] == ["scripted#0"]
    assert failed.data["probes"]["scripted#0"]["type"] == "scripted"
    assert failed.data["probes"]["scripted#0"]["values"]["calls"] == Script.calls
    Script.answer = True
    recovered = await next_event(got, arrived, 3)
    assert recovered.type == T.COMPONENT_RECOVERED
    assert len(got) == 3, "only transitions are events"


async def test_a_probe_that_raises_makes_its_component_unknown_not_healthy(run_monitor: Any) -> None:
    got, arrived = run_monitor([SCRIPTED, {"type": "steady", "interval": "20ms"}])
    assert (await next_event(got, arrived, 1)).type == T.COMPONENT_RECOVERED
    Script.answer = RuntimeError("plugin bug")
    unknown = await next_event(got, arrived, 2)
    assert unknown.type == T.COMPONENT_BECAME_UNKNOWN
    assert unknown.data["errored"] == ["scripted#0"]
    assert "plugin bug" in unknown.data["probes"]["scripted#0"]["detail"]
    calls = Script.calls
    while Script.calls < calls + 5:  # it keeps raising: still unknown, never healthy
        await asyncio.sleep(0.02)
    assert len(got) == 2
    # The projection reads it the same way: not healthy.
    state = FleetState()
    for i, ev in enumerate(got, 1):
        state.apply(RecordedEvent(i, ev.type, ev.ts, ev.component, None, ev.data))
    assert state.components["comp"].health == "unknown"
    Script.answer = True
    assert (await next_event(got, arrived, 3)).type == T.COMPONENT_RECOVERED


async def test_a_raising_probe_never_lets_a_component_start_healthy(run_monitor: Any) -> None:
    Script.answer = ValueError("broken from the start")
    got, _ = run_monitor([SCRIPTED, {"type": "steady", "interval": "20ms"}])
    while Script.calls < 10:
        await asyncio.sleep(0.02)
    assert got == []


async def test_a_failing_probe_outranks_a_raising_one(run_monitor: Any) -> None:
    got, arrived = run_monitor([SCRIPTED, {"type": "steady", "interval": "20ms"}])
    await next_event(got, arrived, 1)
    Script.answer = False
    assert (await next_event(got, arrived, 2)).type == T.COMPONENT_FAILED
    Script.answer = RuntimeError("now broken too")
    unknown = await next_event(got, arrived, 3)
    assert unknown.type == T.COMPONENT_BECAME_UNKNOWN, "a failing probe that breaks can judge nothing"


async def test_a_pushed_failure_skips_hysteresis_and_is_recorded_at_once(run_monitor: Any) -> None:
    slow = {**SCRIPTED, "interval": "1h", "success_threshold": 1}
    got, arrived = run_monitor([slow])
    await next_event(got, arrived, 1)
    assert Script.ctx is not None
    loop = asyncio.get_running_loop()
    start = loop.time()
    Script.ctx.push(ProbeResult(False, "last will", {"state": "offline"}))
    failed = got[-1]  # pushed synchronously: no scheduling round trip
    assert failed.type == T.COMPONENT_FAILED and loop.time() - start < 0.01
    assert failed.data["probes"]["scripted#0"]["values"] == {"state": "offline"}
    Script.ctx.wake()  # a wake runs the check now, not in an hour
    recovered = await next_event(got, arrived, 3, timeout=2)
    assert recovered.type == T.COMPONENT_RECOVERED


async def test_a_hung_check_times_out_as_a_failure(run_monitor: Any) -> None:
    got, arrived = run_monitor([{**SCRIPTED, "timeout": "50ms", "failure_threshold": 1}])
    await next_event(got, arrived, 1)
    Script.answer = "hang"
    failed = await next_event(got, arrived, 2)
    assert failed.type == T.COMPONENT_FAILED
    assert failed.data["probes"]["scripted#0"]["detail"] == "timed out after 0.05s"
