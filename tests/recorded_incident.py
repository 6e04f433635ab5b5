"""A recorded incident, generated deterministically for golden tests.

The real control loop (real Analyze, Plan, projections and SQLite store) decides everything;
only the inputs are scripted — the observations the supervisor and the probes would submit
and the step events the executor would record — each at a fixed time of a manual clock. The
same script therefore always yields the same log, byte for byte.

Story: agent-a is killed (SIGKILL); the first restart dies during verification (exit 3); the
second restart, planned on a tick once its cooldown is over, comes up healthy. Meanwhile agent-b hangs and is
restarted once. Incident 1 is agent-a's, incident 2 agent-b's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from healer.analyze.taxonomy import load_taxonomy
from healer.clock import ManualClock
from healer.config import load_config
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore
from healer.loop import ControlLoop, decider_for
from healer.plan.policy import load_policies

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

POLICY = """\
version: 1
policies:
  - name: databases-first
    priority: 10
    match:
      components: ["db-*"]
      failures: [crash]
    steps:
      - strategy: restart
        max_attempts: 1
      - strategy: escalate
  - name: restart-then-escalate
    match:
      components: ["*"]
      failures: [crash, hang]
    steps:
      - strategy: restart
        max_attempts: 3
        cooldown: 1s
        backoff: 2.0
        verify_timeout: 10s
      - strategy: escalate
"""

CONFIG = """\
state_dir: state
policies_dir: policies
components:
  agent-a:
    command:
      argv: ["/bin/true"]
    rto: 5s
    rpo: 1m
  agent-b:
    command:
      argv: ["/bin/true"]
    rto: 1s
"""


def _probes(status: str, detail: str) -> dict[str, Any]:
    return {
        "process#0": {"status": "passing", "type": "process", "detail": "running"},
        "http#1": {"status": status, "type": "http", "detail": detail, "values": {"status_code": 200}}
        if status == "passing"
        else {"status": status, "type": "http", "detail": detail},
    }


async def record(base: Path) -> Path:
    """Write ``base/policies``, ``base/healer.yaml`` and the log under ``base/state``.

    The Decider is built from the config exactly as the daemon builds it, so ``healer replay
    --verify -c base/healer.yaml`` re-makes every decision. Policy paths in the log are absolute
    (under ``base``): golden comparisons replace ``base`` with a placeholder.
    """
    (base / "policies").mkdir(exist_ok=True)
    (base / "policies" / "default.yaml").write_text(POLICY)
    (base / "healer.yaml").write_text(CONFIG)
    clock = ManualClock(T0)
    store = await SQLiteEventStore.open(base / "state")
    cfg = load_config(base / "healer.yaml")
    decider = decider_for(cfg, load_policies([cfg.policies_dir]), load_taxonomy())
    loop = ControlLoop(store, FleetState(), decider, clock, lambda rec: None)
    runner = asyncio.create_task(loop.run())

    async def at(
        t: float, etype: str, component: str | None = None, incident: int | None = None, **data: Any
    ) -> None:
        clock.advance(T0 + t - clock.wall())
        rec = await loop.record(Event(etype, clock.wall(), component, incident, data))
        assert rec is not None

    async def tick(t: float) -> None:
        clock.advance(T0 + t - clock.wall())
        loop.tick()
        await loop.flush()

    def step_data(incident: int, attempt: int) -> dict[str, Any]:
        key = f"incident-{incident}/step-0/attempt-{attempt}"
        return {
            "step": 0,
            "attempt": attempt,
            "policy": "restart-then-escalate",
            "plan_key": key,
            "action_index": 0,
            "actuator": "process",
            "action": "restart",
            "idempotency_key": f"{key}/action-0",
        }

    try:
        await at(
            0.0,
            T.DAEMON_STARTED,
            pid=4242,
            version="test",
            rebuilt_digest=FleetState().digest(),
            rebuilt_position=0,
        )
        await at(
            0.0,
            T.POLICIES_LOADED,
            hash=decider.policies.hash,
            files=dict(decider.policies.files),
            policies=[p.name for p in decider.policies.policies],
            reload=False,
        )
        await at(0.1, T.PROCESS_STARTED, "agent-a", pid=100, create_time=T0)
        await at(0.1, T.PROCESS_STARTED, "agent-b", pid=200, create_time=T0)
        await at(1.2, T.COMPONENT_RECOVERED, "agent-a", probes=_probes("passing", "200 OK"))
        await at(1.3, T.COMPONENT_RECOVERED, "agent-b", probes=_probes("passing", "200 OK"))
        # incident 1: agent-a is killed
        await at(10.0, T.PROCESS_EXITED, "agent-a", pid=100, signal="SIGKILL", expected=False)
        await at(10.05, T.STEP_STARTED, "agent-a", 1, **step_data(1, 1))
        await at(10.3, T.PROCESS_STARTED, "agent-a", pid=101, create_time=T0 + 10.3, restart=True)
        await at(
            10.35, T.STEP_SUCCEEDED, "agent-a", 1, **step_data(1, 1), result={"pid": 101}, duration_s=0.3
        )
        await at(10.9, T.PROCESS_EXITED, "agent-a", pid=101, exit_code=3, expected=False)
        # the second attempt waits for its cooldown (1 s after the first action): Plan records
        # incident.deferred, and the daemon's timer ticks the loop just after the allowed time
        await tick(11.06)
        await at(11.1, T.STEP_STARTED, "agent-a", 1, **step_data(1, 2))
        await at(11.4, T.PROCESS_STARTED, "agent-a", pid=102, create_time=T0 + 11.4, restart=True)
        await at(
            11.45, T.STEP_SUCCEEDED, "agent-a", 1, **step_data(1, 2), result={"pid": 102}, duration_s=0.35
        )
        # incident 2: agent-b stops answering while its process lives
        await at(
            12.0,
            T.COMPONENT_FAILED,
            "agent-b",
            probes=_probes("failing", "timed out after 0.3s"),
            failing=["http#1"],
        )
        await at(12.5, T.COMPONENT_RECOVERED, "agent-a", probes=_probes("passing", "200 OK"))
        await at(12.6, T.STEP_STARTED, "agent-b", 2, **step_data(2, 1))
        await at(13.0, T.PROCESS_EXITED, "agent-b", pid=200, signal="SIGTERM", expected=True)
        await at(13.1, T.PROCESS_STARTED, "agent-b", pid=201, create_time=T0 + 13.1, restart=True)
        await at(
            13.15, T.STEP_SUCCEEDED, "agent-b", 2, **step_data(2, 1), result={"pid": 201}, duration_s=0.55
        )
        await at(14.0, T.COMPONENT_RECOVERED, "agent-b", probes=_probes("passing", "200 OK"))
        await at(20.0, T.DAEMON_STOPPED, pid=4242, digest=loop.state.digest())
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await store.close()
    return base / "state"
