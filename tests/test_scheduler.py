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


class NowaitScript:
    """A probe on the scheduler's inline path: ``pending`` polls say "not yet" before it answers."""

    answer: Any = True  # True / False, or "hang": never answers, and check() never returns
    pending = 0  # polls that answer None before the answer
    nowait_calls = 0
    awaited = 0
    closed = 0


class NowaitProbe:
    class Params(BaseModel):
        pass

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        self.left = NowaitScript.pending

    def check_nowait(self) -> ProbeResult | None:
        NowaitScript.nowait_calls += 1
        if NowaitScript.answer == "hang":
            return None
        if self.left > 0:
            self.left -= 1
            return None
        self.left = NowaitScript.pending
        return ProbeResult(NowaitScript.answer, f"nowait {NowaitScript.answer}")

    async def check(self) -> ProbeResult:
        NowaitScript.awaited += 1
        while (result := self.check_nowait()) is None:
            await asyncio.sleep(0.005)
        return result

    def close(self) -> None:
        NowaitScript.closed += 1


@pytest.fixture(autouse=True)
def _reset_script() -> None:
    Script.answer, Script.calls, Script.ctx = True, 0, None
    NowaitScript.answer, NowaitScript.pending = True, 0
    NowaitScript.nowait_calls = NowaitScript.awaited = NowaitScript.closed = 0


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

        kinds = {"scripted": ScriptedProbe, "steady": SteadyProbe, "nowait": NowaitProbe}
        registry = ProbeRegistry({**kinds, "tcp": ProbeRegistry.discover().kinds["tcp"]})
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


async def test_inline_probes_answer_without_a_task_and_keep_their_hysteresis(run_monitor: Any) -> None:
    got, arrived = run_monitor([{"type": "nowait", "interval": "20ms", "failure_threshold": 2}])
    assert (await next_event(got, arrived, 1)).type == T.COMPONENT_RECOVERED
    NowaitScript.answer = False
    failed = await next_event(got, arrived, 2)
    assert failed.type == T.COMPONENT_FAILED and failed.data["probes"]["nowait#0"]["detail"] == "nowait False"
    assert NowaitScript.awaited == 0, "answered at once: never awaited"


async def test_an_answer_not_there_yet_is_polled_then_awaited_within_the_timeout(run_monitor: Any) -> None:
    # Four "not yet"s: the scheduler polls once more, then awaits check() for the rest.
    NowaitScript.pending = 4
    got, arrived = run_monitor([{"type": "nowait", "interval": "20ms", "timeout": "1s"}])
    assert (await next_event(got, arrived, 1)).type == T.COMPONENT_RECOVERED
    assert NowaitScript.awaited >= 1


async def test_an_inline_probe_that_never_answers_times_out_and_is_abandoned(run_monitor: Any) -> None:
    got, arrived = run_monitor([{"type": "nowait", "interval": "20ms", "timeout": "60ms"}])
    assert (await next_event(got, arrived, 1)).type == T.COMPONENT_RECOVERED
    NowaitScript.answer = "hang"
    failed = await next_event(got, arrived, 2)
    assert failed.type == T.COMPONENT_FAILED
    assert failed.data["probes"]["nowait#0"]["detail"] == "timed out after 0.06s"
    assert NowaitScript.closed >= 1, "the check in flight was abandoned through close()"


async def test_a_real_tcp_connect_that_hangs_fails_by_timeout(run_monitor: Any) -> None:
    from tests.test_probes import full_backlog_listener

    listener, fillers = full_backlog_listener()
    try:
        port = listener.getsockname()[1]
        probe = {"type": "tcp", "host": "127.0.0.1", "port": port, "interval": "50ms", "timeout": "100ms"}
        got, arrived = run_monitor([{**probe, "failure_threshold": 1}])
        failed = await next_event(got, arrived, 1)
        assert failed.type == T.COMPONENT_FAILED
        assert failed.data["probes"]["tcp#0"]["detail"] == "timed out after 0.1s"
    finally:
        for sock in fillers:
            sock.close()
        listener.close()
