"""Replay --verify on logs where batch boundaries matter: observations stamped with their batch's
``now``, a run of observations that decided nothing followed by the next batch, and escalations
the Executor writes itself. Real ControlLoop, real Analyze and Plan, real SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from healer.analyze.taxonomy import load_taxonomy
from healer.clock import ManualClock
from healer.config import load_config
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore
from healer.loop import ControlLoop, Decider, decider_for
from healer.plan.policy import load_policies
from healer.replay import DecisionWalker, log_events, replay
from tests.recorded_incident import CONFIG, POLICY, T0, _probes

Script = Callable[[ControlLoop, ManualClock], Awaitable[None]]


def _decider(base: Path) -> Decider:
    cfg = load_config(base / "healer.yaml")
    return decider_for(cfg, load_policies([cfg.policies_dir]), load_taxonomy())


def _record(base: Path, script: Script) -> list[RecordedEvent]:
    (base / "policies").mkdir()
    (base / "policies" / "default.yaml").write_text(POLICY)
    (base / "healer.yaml").write_text(CONFIG)

    async def run() -> None:
        clock = ManualClock(T0)
        store = await SQLiteEventStore.open(base / "state")
        loop = ControlLoop(store, FleetState(), _decider(base), clock, lambda rec: None)
        task = asyncio.create_task(loop.run())
        try:
            await script(loop, clock)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()

    asyncio.run(run())
    return list(log_events(base / "state"))


async def _healthy_fleet(loop: ControlLoop, clock: ManualClock) -> None:
    for comp, pid in (("agent-a", 100), ("agent-b", 200)):
        loop.submit(Event(T.PROCESS_STARTED, clock.wall(), comp, None, {"pid": pid, "create_time": T0}))
        loop.submit(
            Event(T.COMPONENT_RECOVERED, clock.wall(), comp, None, {"probes": _probes("passing", "ok")})
        )
    await loop.flush()


def test_observations_are_stamped_with_their_batch_and_keep_when_they_were_seen(tmp_path: Path) -> None:
    async def script(loop: ControlLoop, clock: ManualClock) -> None:
        clock.advance(2.0)
        seen = clock.wall() - 0.25  # the probe saw it a little before the loop's batch
        loop.submit(Event(T.PROCESS_STARTED, seen, "agent-a", None, {"pid": 7, "create_time": T0}))
        await loop.flush()

    recorded = _record(tmp_path, script)
    (started,) = recorded
    assert started.ts == T0 + 2.0
    assert started.data["observed_at"] == T0 + 1.75 and started.data["pid"] == 7


def test_a_run_that_decided_nothing_is_not_merged_with_the_next_batch(tmp_path: Path) -> None:
    """Batch 1: agent-a reports a good quality value (nothing to decide). Batch 2, a second later:
    its health checks fail. The incident's cause is batch 2's failure; a walker that merged both
    runs would take the report as the cause (the first observation of a run) and diverge."""

    async def script(loop: ControlLoop, clock: ManualClock) -> None:
        await _healthy_fleet(loop, clock)
        clock.advance(1.0)
        loop.submit(
            Event(T.AGENT_REPORTED, clock.wall(), "agent-a", None, {"kind": "quality", "value": 0.95})
        )
        await loop.flush()
        clock.advance(1.0)
        loop.submit(
            Event(
                T.COMPONENT_FAILED,
                clock.wall(),
                "agent-a",
                None,
                {"probes": _probes("failing", "timed out"), "failing": ["http#1"]},
            )
        )
        await loop.flush()

    recorded = _record(tmp_path, script)
    report = next(r for r in recorded if r.type == T.AGENT_REPORTED)
    failed = next(r for r in recorded if r.type == T.COMPONENT_FAILED)
    detected = next(r for r in recorded if r.type == T.INCIDENT_DETECTED)
    assert report.position + 1 == failed.position, "nothing was decided on the report"
    assert detected.data["cause"] == failed.position and detected.ts == failed.ts == report.ts + 1.0

    result = replay(log_events(tmp_path / "state"), decider=_decider(tmp_path))
    assert result.verified and result.divergence is None, result.divergence
    assert result.decisions >= 3 and result.inputs == len(recorded) - result.decisions

    # The walker still names a change in that batch's decisions.
    walker = DecisionWalker(_decider(tmp_path))
    divergence = None
    for rec in recorded:
        fed = rec
        if rec.position == detected.position:
            fed = RecordedEvent(
                rec.position,
                rec.type,
                rec.ts,
                rec.component,
                rec.incident,
                {**rec.data, "cause": report.position},
            )
        divergence = walker.feed(fed)
        if divergence is not None:
            break
    assert divergence is not None and divergence.position == detected.position


def test_a_run_that_decided_nothing_at_the_end_of_the_log_verifies(tmp_path: Path) -> None:
    async def script(loop: ControlLoop, clock: ManualClock) -> None:
        await _healthy_fleet(loop, clock)
        clock.advance(3.0)
        loop.submit(Event(T.AGENT_REPORTED, clock.wall(), "agent-b", None, {"kind": "quality", "value": 0.9}))
        await loop.flush()

    recorded = _record(tmp_path, script)
    assert recorded[-1].type == T.AGENT_REPORTED and recorded[-1].ts == T0 + 3.0
    result = replay(log_events(tmp_path / "state"), decider=_decider(tmp_path))
    assert result.verified and result.decisions == 0 and result.inputs == len(recorded)


def _step(incident: int) -> dict[str, Any]:
    key = f"incident-{incident}/step-0/attempt-1"
    return {
        "step": 0,
        "attempt": 1,
        "policy": "restart-then-escalate",
        "plan_key": key,
        "action_index": 0,
        "actuator": "process",
        "action": "restart",
        "idempotency_key": f"{key}/action-0",
    }


def test_an_escalation_the_executor_writes_is_an_input_not_a_divergence(tmp_path: Path) -> None:
    """A compensation out of retries: the Executor records incident.escalated itself (``by:
    execute``, as ``Executor._escalate`` writes it). Replay takes it as an input; the same event
    without that mark is a decision nothing explains."""

    async def script(loop: ControlLoop, clock: ManualClock) -> None:
        await _healthy_fleet(loop, clock)
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
        await loop.flush()
        clock.advance(0.1)
        assert await loop.record(Event(T.STEP_STARTED, clock.wall(), "agent-a", 1, _step(1)))
        clock.advance(0.1)
        failed = {**_step(1), "error": "exit 1", "compensations": [{"key": "k/compensate", "of": "k"}]}
        assert await loop.record(Event(T.STEP_FAILED, clock.wall(), "agent-a", 1, failed))
        clock.advance(0.5)
        escalation = {
            "reason": "compensation k/compensate failed 4 times: a human takes over",
            "by": "execute",
        }
        assert await loop.record(Event(T.INCIDENT_ESCALATED, clock.wall(), "agent-a", 1, escalation))
        assert loop.state.incidents[1].status == "escalated"

    recorded = _record(tmp_path, script)
    escalated = [r for r in recorded if r.type == T.INCIDENT_ESCALATED]
    assert escalated and escalated[-1].data["by"] == "execute"
    result = replay(log_events(tmp_path / "state"), decider=_decider(tmp_path))
    assert result.verified and result.divergence is None, result.divergence

    db = tmp_path / "state" / "events.db"
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute(
        "UPDATE events SET data = ? WHERE position = ?", ('{"reason": "forged"}', escalated[-1].position)
    )
    conn.commit()
    conn.close()
    forged = replay(log_events(tmp_path / "state"), decider=_decider(tmp_path))
    assert not forged.verified and forged.divergence is not None
    assert forged.divergence.position == escalated[-1].position
    assert "no event before it leads to it" in forged.divergence.reason


def test_the_fast_digest_is_the_snapshot_digest(tmp_path: Path) -> None:
    """``FleetState.digest`` skips ``asdict``'s deep copy; the bytes hashed must stay those of
    ``snapshot()``, or digests recorded by earlier daemons would no longer verify."""
    from tests.recorded_incident import record

    state = FleetState()
    checked = 0
    for rec in log_events(asyncio.run(record(tmp_path))):
        state.apply(rec)
        if rec.position % 5 == 0 or rec.incident is not None:
            assert state.digest() == state.slow_digest(), rec
            checked += 1
    assert checked > 10 and state.incidents and any(i.actions for i in state.incidents.values())
    state.learned_edges.append(("agent-a", "agent-b"))
    assert state.digest() == state.slow_digest()


def test_detection_time_still_counts_from_when_the_failure_was_seen(tmp_path: Path) -> None:
    """The observation is recorded at its batch's ``now``; the detection metric measures from
    ``observed_at``, when the Monitor saw it (here 0.3 s earlier: a backed-up queue)."""
    from healer.metrics import Metrics

    metrics = Metrics()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.yaml").write_text(POLICY)
    (tmp_path / "healer.yaml").write_text(CONFIG)

    async def run() -> None:
        clock = ManualClock(T0)
        store = await SQLiteEventStore.open(tmp_path / "state")
        loop = ControlLoop(store, FleetState(), _decider(tmp_path), clock, metrics.on_recorded)
        task = asyncio.create_task(loop.run())
        try:
            await _healthy_fleet(loop, clock)
            clock.advance(5.0)
            seen = clock.wall() - 0.3
            loop.submit(Event(T.PROCESS_EXITED, seen, "agent-b", None, {"pid": 200, "signal": "SIGKILL"}))
            await loop.flush()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()

    asyncio.run(run())
    exited = next(r for r in log_events(tmp_path / "state") if r.type == T.PROCESS_EXITED)
    assert exited.ts == T0 + 5.0 and exited.data["observed_at"] == T0 + 4.7
    total = metrics.registry.get_sample_value("healer_detection_seconds_sum", {"failure_class": "crash"})
    count = metrics.registry.get_sample_value("healer_detection_seconds_count", {"failure_class": "crash"})
    assert count == 1 and total is not None and abs(total - 0.3) < 1e-6
