"""What follows a DR step once it has run: degrade's flags put back when the incident resolves,
and a model swap's lineage recorded.

The decisions are pure functions of the snapshot (:func:`flags_to_restore`,
:func:`lineage_event`); :class:`Aftercare` does the I/O (through the registered ``feature_flag``
actuator, like any remediation) and records what it did.

- **Degrade.** A ``feature_flag.set`` that succeeded in an incident (and was not undone by a saga
  compensation) is reverted when the incident *resolves*: the values it replaced come back, the
  flags it added go (``flags.restored``). An escalated incident keeps its safe values: a human
  decides. ``restore: false`` in the step's params keeps them after resolution too. Restoring is
  idempotent (it writes values), so a daemon killed before recording ``flags.restored`` simply
  does it again on start.
- **Model swap.** Each ``symlink_swap`` of a ``swap_model`` step that succeeded is recorded as
  ``model.swapped`` {link, from, to, why: the incident, its diagnosis, the policy}: the lineage
  of what served the traffic, shown in the postmortem.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from healer.errors import HealerError
from healer.execute.actuators import ActionContext, Actuator
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlagRestore:
    incident: int
    component: str
    step_key: str
    params: Mapping[str, Any]
    result: Mapping[str, Any]


def flags_to_restore(state: FleetState, incident: int | None = None) -> list[FlagRestore]:
    """Degrade steps of resolved incidents whose flags have not been put back yet (pure)."""
    out: list[FlagRestore] = []
    incs = [state.incidents[incident]] if incident in state.incidents else []
    if incident is None:
        incs = list(state.incidents.values())
    for inc in incs:
        if inc.status != "resolved":
            continue
        undone = {c.of for c in inc.compensations if c.outcome == "succeeded"}
        for step in inc.actions:
            result = step.detail.get("result") or {}
            params = result.get("params") if isinstance(result, dict) else None
            if (
                step.actuator == "feature_flag"
                and step.action == "set"
                and step.outcome == "succeeded"
                and isinstance(params, dict)
                and params.get("restore", True)
                and step.key not in undone
                and step.key not in inc.flags_restored
            ):
                out.append(FlagRestore(inc.id, inc.component, step.key, params, result))
    return out


def lineage_event(state: FleetState, rec: RecordedEvent, now: float) -> Event | None:
    """``model.swapped`` for a ``swap_model`` step's link move that just succeeded (pure)."""
    if rec.type != T.STEP_SUCCEEDED or rec.data.get("actuator") != "symlink_swap":
        return None
    inc = state.incidents.get(rec.incident or 0)
    if inc is None or (inc.plan or {}).get("strategy") != "swap_model":
        return None
    result = rec.data.get("result") or {}
    if not isinstance(result, Mapping):
        return None
    data = {
        "link": result.get("link"),
        "from": result.get("current_before"),
        "to": result.get("current"),
        "action": rec.data.get("action"),
        "idempotency_key": rec.data.get("idempotency_key"),
        "why": {
            "incident": inc.id,
            "component": inc.component,
            "failure_class": inc.failure_class,
            "root_cause": inc.root_cause,
            "policy": inc.policy,
            "step": (inc.plan or {}).get("step"),
            "reason": (inc.plan or {}).get("reason"),
        },
    }
    return Event(T.MODEL_SWAPPED, now, inc.component, inc.id, data)


class Aftercare:
    """The daemon's side: restore a resolved incident's flags through the actuator, record it."""

    def __init__(
        self,
        state: FleetState,
        actuator: Callable[[str], Actuator],
        emit: Callable[[Event], None],
        timeout: float = 10.0,
    ) -> None:
        self.state = state
        self.actuator = actuator
        self.emit = emit
        self.timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[str] = set()

    def incident_resolved(self, incident: int | None = None) -> None:
        """Start restoring what ``incident`` (or every resolved incident: start-up) left degraded."""
        for todo in flags_to_restore(self.state, incident):
            if todo.step_key in self._running:
                continue
            self._running.add(todo.step_key)
            task = asyncio.create_task(self._restore(todo), name=f"restore-flags-{todo.incident}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.timeout)

    async def _restore(self, todo: FlagRestore) -> None:
        try:
            act = self.actuator("feature_flag")
            compensate = getattr(act, "compensate", None)
            if compensate is None:
                raise HealerError("the feature_flag actuator cannot restore flags")
            ctx = ActionContext(
                todo.component,
                "set",
                dict(todo.params),
                f"{todo.step_key}/restore",
                todo.incident,
                self.timeout,
                compensating=True,
                result=dict(todo.result),
                undoes=todo.step_key,
            )
            async with asyncio.timeout(self.timeout):
                done = await compensate(ctx)
        except Exception as exc:  # an actuator failure must not take the daemon down
            log.error(
                "incident %d: cannot restore the flags set by %s: %s", todo.incident, todo.step_key, exc
            )
            self._running.discard(todo.step_key)
            return
        self.emit(
            Event(
                T.FLAGS_RESTORED,
                time.time(),
                todo.component,
                todo.incident,
                {
                    "step": todo.step_key,
                    "where": done.get("where"),
                    "restored": dict(todo.result.get("previous") or {}),
                    "removed": list(todo.result.get("absent") or []),
                    "degraded": dict(todo.result.get("set") or {}),
                },
            )
        )
