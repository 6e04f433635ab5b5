"""Execute: run planned steps through actuators, writing intent before and outcome after.

``step.started`` (with the idempotency key) is durable before the actuator is called, and
``step.succeeded`` / ``step.failed`` after; a daemon killed in between finds the open step on
start-up. Whether a step may start is decided by the control loop against the current
snapshot, at the moment the intent is recorded, so a step never starts for an incident that
moved on (resolved by itself, escalated) while the step waited for its cooldown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from healer.clock import Clock
from healer.errors import ActuatorError, HealerError, StoreError
from healer.execute.actuators import ActionContext, ActuatorRegistry
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState

log = logging.getLogger(__name__)

Precondition = Callable[[FleetState], bool]
Record = Callable[[Event, Precondition | None], Awaitable[RecordedEvent | None]]


class Executor:
    def __init__(self, registry: ActuatorRegistry, record: Record, clock: Clock) -> None:
        self._registry = registry
        self._record = record
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._acting: set[asyncio.Task[None]] = set()  # past their intent: the world may be changing
        self.accepting = True

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def dispatched(self, plan_key: str) -> bool:
        return any(t.get_name() == f"step:{plan_key}" for t in self._tasks)

    def dispatch(self, planned: RecordedEvent) -> None:
        if not self.accepting:
            return
        task = asyncio.create_task(self._run(planned), name=f"step:{planned.data.get('idempotency_key')}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, planned: RecordedEvent) -> None:
        d = planned.data
        plan_key = str(d["idempotency_key"])
        iid = planned.incident
        comp = planned.component
        assert iid is not None and comp is not None
        wait = float(d.get("not_before", 0)) - self._clock.wall()
        if wait > 0:
            await self._clock.sleep(wait)
        actions = list(d.get("actions") or [])
        for index, action in enumerate(actions):
            try:
                ok = await self._run_action(planned, plan_key, index, action, comp, iid)
            except StoreError as exc:
                # No intent on record, no action: the step is dispatched again once the store recovers.
                log.error("not running %s: its intent could not be recorded (%s)", plan_key, exc)
                return
            if not ok:
                return  # the planner decides what follows a failed action

    async def _run_action(
        self, planned: RecordedEvent, plan_key: str, index: int, action: dict[str, Any], comp: str, iid: int
    ) -> bool:
        d = planned.data
        key = f"{plan_key}/action-{index}"
        phase = "planned" if index == 0 else "acting"

        def still_current(state: FleetState) -> bool:
            inc = state.incidents.get(iid)
            return (
                inc is not None and inc.phase == phase and (inc.plan or {}).get("idempotency_key") == plan_key
            )

        base = {
            "step": d.get("step"),
            "attempt": d.get("attempt"),
            "policy": d.get("policy"),
            "plan_key": plan_key,
            "action_index": index,
            "actuator": action.get("actuator"),
            "action": action.get("action"),
            "idempotency_key": key,
        }
        started = await self._record(
            Event(T.STEP_STARTED, self._clock.wall(), comp, iid, base), still_current
        )
        if started is None:
            return False  # the incident moved on while this step waited
        me = asyncio.current_task()
        assert me is not None
        self._acting.add(me)
        ctx = ActionContext(comp, str(action.get("action")), dict(action.get("params") or {}), key, iid)
        timeout = float(action.get("timeout") or 30.0)
        t0 = self._clock.monotonic()
        try:
            actuator = self._registry.get(str(action.get("actuator")))
            async with asyncio.timeout(timeout):
                result = await actuator.perform(ctx)
        except asyncio.CancelledError:
            # Shutdown cut the action short: say so in the log, so a restart resolves it.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._record(
                        Event(
                            T.STEP_INTERRUPTED,
                            self._clock.wall(),
                            comp,
                            iid,
                            {**base, "reason": "daemon stopping"},
                        ),
                        None,
                    )
                )
            raise
        except TimeoutError:
            await self._finish(T.STEP_FAILED, comp, iid, base, t0, {"error": f"timed out after {timeout:g}s"})
            return False
        except (ActuatorError, HealerError, ValueError, OSError) as exc:
            await self._finish(T.STEP_FAILED, comp, iid, base, t0, {"error": str(exc)})
            return False
        except Exception as exc:  # a plugin bug fails the step, never the daemon
            log.exception("actuator %s crashed", action.get("actuator"))
            await self._finish(T.STEP_FAILED, comp, iid, base, t0, {"error": f"{type(exc).__name__}: {exc}"})
            return False
        finally:
            self._acting.discard(me)
        await self._finish(T.STEP_SUCCEEDED, comp, iid, base, t0, {"result": result})
        return True

    async def _finish(
        self, kind: str, comp: str, iid: int, base: dict[str, Any], t0: float, extra: dict[str, Any]
    ) -> None:
        data = {**base, **extra, "duration_s": round(self._clock.monotonic() - t0, 6)}
        await self._record(Event(kind, self._clock.wall(), comp, iid, data), None)

    async def drain(self, timeout: float) -> None:
        """Let in-flight steps finish for up to ``timeout``; interrupt the rest (recorded)."""
        self.accepting = False
        for task in self._tasks - self._acting:
            task.cancel()  # still waiting out a cooldown: nothing happened yet, nothing to record
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
