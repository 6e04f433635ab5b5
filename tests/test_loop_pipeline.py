"""The control loop decides the next batch while the previous one commits: nothing of either is
acted on before it is durable, and a failed commit holds both. Real Analyze, Plan and SQLite
store; the store is wrapped only to hold a commit back and to fail one, on cue."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from healer.analyze.taxonomy import load_taxonomy
from healer.clock import ManualClock
from healer.config import load_config
from healer.errors import StoreError
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore, rebuild_state
from healer.loop import ControlLoop, decider_for
from healer.plan.policy import load_policies
from tests.recorded_incident import CONFIG, POLICY, T0, _probes


class GatedStore:
    """A real store whose next append can be held at a gate and then made to fail."""

    def __init__(self, inner: SQLiteEventStore) -> None:
        self.inner = inner
        self.gate: asyncio.Event | None = None
        self.fail = False
        self.entered = asyncio.Event()

    async def append(self, events: Sequence[Event | RecordedEvent]) -> list[RecordedEvent]:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise StoreError("cannot append to event store: disk I/O error (injected)")
        return await self.inner.append(events)

    async def read(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        return await self.inner.read(after, limit)

    async def last_position(self) -> int:
        return await self.inner.last_position()

    async def close(self) -> None:
        await self.inner.close()


async def _wait(cond: object, what: str) -> None:
    async with asyncio.timeout(5):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_the_next_batch_is_decided_during_a_commit_and_a_failed_commit_holds_both(
    tmp_path: Path,
) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.yaml").write_text(POLICY)
    (tmp_path / "healer.yaml").write_text(CONFIG)
    cfg = load_config(tmp_path / "healer.yaml")
    store = GatedStore(await SQLiteEventStore.open(tmp_path / "state"))
    acted: list[RecordedEvent] = []
    clock = ManualClock(T0)
    decider = decider_for(cfg, load_policies([cfg.policies_dir]), load_taxonomy())
    loop = ControlLoop(store, FleetState(), decider, clock, acted.append, retry_interval=0.05)
    task = asyncio.create_task(loop.run())
    try:
        for comp, pid in (("agent-a", 100), ("agent-b", 200)):
            loop.submit(Event(T.PROCESS_STARTED, clock.wall(), comp, None, {"pid": pid, "create_time": T0}))
            loop.submit(
                Event(T.COMPONENT_RECOVERED, clock.wall(), comp, None, {"probes": _probes("passing", "ok")})
            )
        await loop.flush()
        durable = await store.last_position()
        acted.clear()

        # Batch N: agent-a crashes. Its commit is held at the gate.
        store.gate, store.entered = asyncio.Event(), asyncio.Event()
        clock.advance(1.0)
        loop.submit(
            Event(
                T.PROCESS_EXITED,
                clock.wall(),
                "agent-a",
                None,
                {"pid": 100, "signal": "SIGKILL", "expected": False},
            )
        )
        async with asyncio.timeout(5):
            await store.entered.wait()
        assert loop.state.active_for("agent-a") is not None  # decided...
        assert acted == [] and await store.last_position() == durable  # ...but not durable, not acted on

        # Batch N+1, decided while N commits: agent-b hangs, and an intent waits for its reply.
        clock.advance(1.0)
        loop.submit(
            Event(
                T.COMPONENT_FAILED,
                clock.wall(),
                "agent-b",
                None,
                {"probes": _probes("failing", "timed out"), "failing": ["http#1"]},
            )
        )
        intent = asyncio.create_task(
            loop.record(Event("test.noted", clock.wall(), "agent-b", None, {"n": 1}))
        )
        await _wait(lambda: loop.state.active_for("agent-b") is not None, "batch N+1 decided")
        assert acted == [] and not intent.done()

        # N's commit fails: N+1 was decided on top of it, so both are held and nothing is acted on.
        store.fail = True
        store.gate.set()
        with pytest.raises(StoreError):
            await intent
        assert loop.degraded is not None and acted == []
        assert loop.state.digest() == (await rebuild_state(store)).digest()
        assert loop.state.active_for("agent-a") is None and loop.held >= 2

        # The store recovers: the held observations are decided again and recorded, then acted on.
        store.fail = False
        await _wait(lambda: loop.degraded is None, "store writable again")
        await loop.flush()
        rebuilt = await rebuild_state(store)
        assert loop.state.digest() == rebuilt.digest()
        assert rebuilt.active_for("agent-a") is not None and rebuilt.active_for("agent-b") is not None
        log = await store.read(durable)
        assert [r.position for r in log] == list(range(durable + 1, durable + 1 + len(log)))
        assert [r.position for r in acted] == [r.position for r in log]  # acted on once, in order
        planned = [r.component for r in acted if r.type == T.INCIDENT_PLANNED]
        assert sorted(planned) == ["agent-a", "agent-b"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
