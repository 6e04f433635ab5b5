"""A control loop for Plan tests: the real ControlLoop, Analyze, Plan and SQLite store, with a
manual clock, and the test standing in for the world (observations) and for Execute (it
records each planned action's intent and outcome the way the executor does)."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healer.analyze.taxonomy import load_taxonomy
from healer.clock import ManualClock
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore, rebuild_state
from healer.loop import ControlLoop, Decider
from healer.plan.policy import PolicySet, load_policies

# The actuators the Execute issue adds; Plan tests may plan for them without them installed.
EXECUTE_ACTUATORS = frozenset(
    {
        "process",
        "systemd",
        "exec",
        "http",
        "mqtt_publish",
        "feature_flag",
        "symlink_swap",
        "checkpoint_restore",
        "dr",
    }
)


def policies_from(tmp: Path, *texts: str, installed: frozenset[str] = EXECUTE_ACTUATORS) -> PolicySet:
    d = tmp / f"policies-{len(list(tmp.glob('policies-*')))}"
    d.mkdir()
    for i, text in enumerate(texts):
        (d / f"{i:02d}.yaml").write_text(textwrap.dedent(text))
    return load_policies([d], installed=installed)


@dataclass
class Harness:
    loop: ControlLoop
    state: FleetState
    clock: ManualClock
    store: SQLiteEventStore
    log: list[RecordedEvent] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    # -- the world --------------------------------------------------------------------------------
    async def submit(self, ev: Event) -> None:
        self.loop.submit(ev)
        await self.loop.flush()

    async def started(self, comp: str) -> None:
        pid = self.pids[comp] = self.pids.get(comp, 1000) + 1
        await self.submit(Event(T.PROCESS_STARTED, self.clock.wall(), comp, data={"pid": pid}))

    async def crash(self, comp: str, code: int = 1) -> None:
        await self.submit(
            Event(
                T.PROCESS_EXITED,
                self.clock.wall(),
                comp,
                data={"pid": self.pids.get(comp, 0), "exit_code": code},
            )
        )

    async def recovered(self, comp: str) -> None:
        await self.submit(Event(T.COMPONENT_RECOVERED, self.clock.wall(), comp, data={"probes": {}}))

    async def failed(self, comp: str) -> None:
        await self.submit(
            Event(T.COMPONENT_FAILED, self.clock.wall(), comp, data={"failing": ["http"], "probes": {}})
        )

    async def tick(self, advance: float = 0.0) -> None:
        if advance:
            self.clock.advance(advance)
        self.loop.tick()
        await self.loop.flush()

    # -- Execute's part -------------------------------------------------------------------------------
    async def execute(self, comp: str, ok: bool = True) -> RecordedEvent:
        """Run the incident's current plan: intent, then outcome, for each action."""
        inc = self.state.active_for(comp)
        assert inc is not None and inc.plan is not None and inc.phase == "planned", (comp, inc and inc.phase)
        plan = inc.plan
        key = plan["idempotency_key"]
        last: RecordedEvent | None = None
        for index, action in enumerate(plan["actions"]):
            base = {
                "step": plan["step"],
                "attempt": plan["attempt"],
                "policy": plan["policy"],
                "plan_key": key,
                "action_index": index,
                "actuator": action["actuator"],
                "action": action["action"],
                "idempotency_key": f"{key}/action-{index}",
            }
            rec = await self.loop.record(Event(T.STEP_STARTED, self.clock.wall(), comp, inc.id, base))
            assert rec is not None
            if action["actuator"] == "process" and action["action"] in ("restart", "start"):
                await self.started(comp)
            kind = T.STEP_SUCCEEDED if ok else T.STEP_FAILED
            extra = {"result": {}} if ok else {"error": "actuator said no"}
            last = await self.loop.record(Event(kind, self.clock.wall(), comp, inc.id, {**base, **extra}))
            if not ok:
                break
        assert last is not None
        return last

    # -- reading -------------------------------------------------------------------------------------
    def of(self, type_: str, comp: str | None = None) -> list[RecordedEvent]:
        return [e for e in self.log if e.type == type_ and (comp is None or e.component == comp)]

    def last(self, type_: str, comp: str | None = None) -> RecordedEvent:
        found = self.of(type_, comp)
        assert found, f"no {type_} for {comp}: {[(e.type, e.component) for e in self.log[-15:]]}"
        return found[-1]

    def phase(self, comp: str) -> str:
        inc = self.state.active_for(comp)
        return inc.phase if inc is not None else "none"


@contextlib.asynccontextmanager
async def harness(
    tmp: Path,
    policies: PolicySet,
    components: Mapping[str, Mapping[str, str]] | None = None,
    start: float = 1_700_000_000.0,
    state_dir: Path | None = None,
) -> AsyncIterator[Harness]:
    comps = dict(components or {"a": {}})
    store = await SQLiteEventStore.open(state_dir or tmp / "state", synchronous="NORMAL")
    state = await rebuild_state(store)
    clock = ManualClock(start)
    decider = Decider(load_taxonomy(), policies, {n: dict(v) for n, v in comps.items()}, frozenset(comps))
    log: list[RecordedEvent] = []
    loop = ControlLoop(store, state, decider, clock, log.append)
    h = Harness(loop, state, clock, store, log)
    task = asyncio.create_task(loop.run())
    try:
        yield h
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


def data(ev: RecordedEvent) -> dict[str, Any]:
    return dict(ev.data)
