"""Execute: run a planned step's saga of actions, writing intent before and outcome after.

For each action, ``step.started`` (with its idempotency key, and what the actuator's
``prepare`` saw) is durable before the actuator is called, and ``step.succeeded`` /
``step.failed`` after. Whether an action may start is decided by the control loop against the
current snapshot at the moment its intent is recorded, so nothing starts for an incident that
moved on (resolved by itself, escalated) while the step waited for its cooldown.

When an action fails, the actions of the same saga already done are compensated in reverse
order: the list of compensations is part of the ``step.failed`` event (so it survives a
crash), and each compensation is journaled (``compensation.started`` / ``succeeded`` /
``failed``) and retried with backoff (stamina) until it succeeds or its retries run out, which
escalates the incident. One saga (or its compensation) runs at a time per incident.

Every actuator call runs under a timeout and behind a circuit breaker per (actuator, target).

At start-up :meth:`Executor.recover` resumes what the previous run left in flight: an action
with an intent and no outcome is re-run with the same key when its actuator is idempotent for
it; otherwise it is never re-run blindly: the actuator's ``verify`` checks whether the intended
state holds (then the action counts as done) and if it does not, or cannot tell, the incident
is escalated with the uncertainty stated. Compensations in flight resume the same way, and a
saga whose last recorded action succeeded continues with the next. An executor made with
``resume_first`` holds every plan dispatched before :meth:`recover` has run (the daemon's first
batches may plan an incident whose cooldown ran out while it was down) and releases them behind
the recoveries, so a saga or compensation left in flight is never overtaken by the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import stamina

from healer.clock import Clock
from healer.config import ExecuteConfig
from healer.errors import ActuatorError, HealerError, StoreError
from healer.execute.actuators import (
    ActionContext,
    Actuator,
    compensates,
    compensation_is_idempotent,
    is_idempotent,
    target_of,
)
from healer.execute.breakers import BreakerBoard, CircuitBreakerError
from healer.execute.faults import FaultPoints
from healer.execute.registry import ActuatorRegistry
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState, IncidentView

log = logging.getLogger(__name__)

Precondition = Callable[[FleetState], bool]
Record = Callable[[Event, Precondition | None], Awaitable[RecordedEvent | None]]


@dataclass
class Outcome:
    status: str  # succeeded | failed | skipped (the precondition did not hold: nothing happened)
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    permanent: bool = False  # retrying cannot help (bad parameters, unknown actuator)
    breaker: str | None = None  # set when an open breaker failed the call fast
    duration: float = 0.0


@dataclass
class Done:
    """An action of the running saga that succeeded: what its compensation needs."""

    index: int
    key: str
    action: Mapping[str, Any]
    result: Mapping[str, Any]
    before: Mapping[str, Any]


class _CompensationFailed(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def _jsonable(value: Any) -> dict[str, Any]:
    """Results go into the log: make sure a plugin's answer can be recorded."""
    if not isinstance(value, Mapping):
        value = {"value": value}
    out: dict[str, Any] = json.loads(json.dumps(dict(value), default=str))
    return out


class Executor:
    def __init__(
        self,
        registry: ActuatorRegistry,
        record: Record,
        clock: Clock,
        *,
        submit: Callable[[Event], None] | None = None,
        settings: ExecuteConfig | None = None,
        breakers: BreakerBoard | None = None,
        faults: FaultPoints | None = None,
        resume_first: bool = False,
    ) -> None:
        self._registry = registry
        self._record = record
        self._clock = clock
        self.settings = settings or ExecuteConfig()
        self._submit = submit or self._record_later
        self.breakers = breakers or BreakerBoard(self.settings.breaker, self._submit, clock)
        self._faults = faults or FaultPoints(self.settings.fault_exit_at)
        self._tasks: set[asyncio.Task[None]] = set()
        self._acting: set[asyncio.Task[None]] = set()  # past an intent: the world may be changing
        self._locks: dict[int, asyncio.Lock] = {}
        self.accepting = True
        # Plans dispatched before the first recover(): released behind the recoveries it starts.
        self._held: list[RecordedEvent] | None = [] if resume_first else None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def dispatched(self, plan_key: str) -> bool:
        """Whether a task for this plan is under way or held (so it is not dispatched twice)."""
        if any(p.data.get("idempotency_key") == plan_key for p in self._held or ()):
            return True
        return any(t.get_name() == f"step:{plan_key}" for t in self._tasks)

    def _record_later(self, event: Event) -> None:
        self._spawn(self._record_quietly(event), f"record:{event.type}")

    async def _record_quietly(self, event: Event) -> None:
        await self._record(event, None)

    def _lock(self, incident: int) -> asyncio.Lock:
        return self._locks.setdefault(incident, asyncio.Lock())

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._acting.discard(task)
        exc = task.exception() if not task.cancelled() else None
        if isinstance(exc, StoreError):
            # Nothing is acted on without its intent on record; an action whose outcome could not be
            # recorded keeps an open intent, which recover() resolves (at the latest on restart).
            log.error("%s stopped: the event store is unwritable (%s)", task.get_name(), exc)
        elif exc is not None:
            log.error("executor task %s failed", task.get_name(), exc_info=exc)

    def _mark_acting(self) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._acting.add(me)

    # -- running planned sagas -------------------------------------------------------------------
    def dispatch(self, planned: RecordedEvent) -> None:
        if not self.accepting:
            return
        if self._held is not None:
            self._held.append(planned)
            return
        self._spawn(self._run_planned(planned), f"step:{planned.data.get('idempotency_key')}")

    async def _run_planned(self, planned: RecordedEvent) -> None:
        d = planned.data
        iid, comp = planned.incident, planned.component
        assert iid is not None and comp is not None
        async with self._lock(iid):
            wait = float(d.get("not_before", 0)) - self._clock.wall()
            if wait > 0:
                await self._clock.sleep(wait)
            await self._run_saga(comp, iid, d, 0, [])

    async def _run_saga(
        self, comp: str, iid: int, plan: Mapping[str, Any], start: int, done: list[Done]
    ) -> None:
        actions = list(plan.get("actions") or [])
        for index in range(start, len(actions)):
            action = dict(actions[index])
            out = await self._attempt(comp, iid, plan, index, action, done)
            if out.status == "skipped":
                return
            if out.status == "failed":
                await self._fail_saga(comp, iid, plan, index, action, out, done)
                return

    def _base(self, plan: Mapping[str, Any], index: int, action: Mapping[str, Any]) -> dict[str, Any]:
        plan_key = str(plan["idempotency_key"])
        return {
            "step": plan.get("step"),
            "attempt": plan.get("attempt"),
            "policy": plan.get("policy"),
            "plan_key": plan_key,
            "action_index": index,
            "actuator": action.get("actuator"),
            "action": action.get("action"),
            "idempotency_key": f"{plan_key}/action-{index}",
        }

    def _timeout(self, actuator: Actuator | None, action: Mapping[str, Any]) -> float:
        t = action.get("timeout")
        if t:
            return float(t)
        return float(actuator.default_timeout) if actuator is not None else 30.0

    async def _attempt(
        self,
        comp: str,
        iid: int,
        plan: Mapping[str, Any],
        index: int,
        action: dict[str, Any],
        done: list[Done],
    ) -> Outcome:
        base = self._base(plan, index, action)
        key, plan_key = base["idempotency_key"], base["plan_key"]
        name, verb = str(action.get("actuator")), str(action.get("action"))
        params = dict(action.get("params") or {})
        phase = "planned" if index == 0 else "acting"

        def still_current(state: FleetState) -> bool:
            inc = state.incidents.get(iid)
            return (
                self.accepting  # decided at recording time: nothing starts once shutdown began
                and inc is not None
                and inc.phase == phase
                and (inc.plan or {}).get("idempotency_key") == plan_key
            )

        actuator: Actuator | None = None
        problem: Outcome | None = None
        before: dict[str, Any] = {}
        timeout = self._timeout(None, action)
        try:
            actuator = self._registry.get(name)
            timeout = self._timeout(actuator, action)
            actuator.validate(verb, params)
            prepare = getattr(actuator, "prepare", None)
            if prepare is not None:
                ctx0 = ActionContext(comp, verb, params, key, iid, timeout)
                async with asyncio.timeout(timeout):
                    before = _jsonable(await prepare(ctx0))
        except (ActuatorError, ValueError) as exc:
            problem = Outcome("failed", error=str(exc), permanent=True)
        except Exception as exc:  # prepare of a plugin: fails the action, never the daemon
            problem = Outcome("failed", error=f"prepare failed: {type(exc).__name__}: {exc}")
        idem = is_idempotent(actuator, verb, params) if actuator is not None else None
        intent = {**base, "idempotent": idem, "timeout": timeout}
        if before:
            intent["before"] = before
        self._faults.hit("before-intent", name, index)
        recording = asyncio.ensure_future(
            self._record(Event(T.STEP_STARTED, self._clock.wall(), comp, iid, intent), still_current)
        )
        try:
            started = await asyncio.shield(recording)
        except asyncio.CancelledError:
            # Shutdown while the intent was being recorded: if it was, say that nothing was done.
            if await recording is not None:
                await self._note(
                    T.STEP_INTERRUPTED,
                    comp,
                    iid,
                    {**base, "reason": "daemon stopping before the actuator was called", "not_called": True},
                )
            raise
        if started is None:
            return Outcome("skipped")  # the incident moved on while this step waited
        self._mark_acting()
        if problem is not None:
            return problem
        assert actuator is not None
        self._faults.hit("after-intent", name, index)
        ctx = ActionContext(comp, verb, params, key, iid, timeout, before=before)
        saga_idempotent = bool(idem) and all(self._idempotent_action(d.action) for d in done)
        out = await self._call(actuator, ctx, name, base, interruptible=saga_idempotent)
        if out.status == "succeeded":
            self._faults.hit("after-effect", name, index)
            await self._note(
                T.STEP_SUCCEEDED, comp, iid, {**base, "result": out.result, "duration_s": out.duration}
            )
            self._faults.hit("after-outcome", name, index)
            done.append(Done(index, key, action, out.result, before))
        return out

    def _idempotent_action(self, action: Mapping[str, Any]) -> bool:
        actuator = self._registry.actuators.get(str(action.get("actuator")))
        if actuator is None:
            return False
        return is_idempotent(actuator, str(action.get("action")), dict(action.get("params") or {}))

    async def _call(
        self,
        actuator: Actuator,
        ctx: ActionContext,
        name: str,
        base: Mapping[str, Any],
        *,
        interruptible: bool,
        compensate: bool = False,
    ) -> Outcome:
        """One actuator call under its timeout and breaker; never raises but for cancellation."""
        t0 = self._clock.monotonic()
        out = await self._guarded(
            actuator, ctx, name, base, interruptible=interruptible, compensate=compensate
        )
        out.duration = round(self._clock.monotonic() - t0, 6)
        return out

    async def _guarded(
        self,
        actuator: Actuator,
        ctx: ActionContext,
        name: str,
        base: Mapping[str, Any],
        *,
        interruptible: bool,
        compensate: bool,
    ) -> Outcome:
        try:
            target = target_of(actuator, ctx.action, ctx.params, ctx.component)
        except Exception:  # a plugin's target() bug: key its breaker on the component
            log.exception("actuator %s: target() failed", name)
            target = ctx.component
        fn = actuator.perform if not compensate else getattr(actuator, "compensate")  # noqa: B009
        try:
            with self.breakers.calling(name, target, ctx.component, ctx.incident, ctx.idempotency_key):
                async with asyncio.timeout(ctx.timeout):
                    raw = await fn(ctx)
        except CircuitBreakerError as exc:
            bname = self.breakers.name_of(name, target)
            return Outcome(
                "failed",
                error=f"circuit breaker {bname} is open: failed fast, the actuator was not called ({exc})",
                breaker=bname,
            )
        except TimeoutError:
            return Outcome("failed", error=f"timed out after {ctx.timeout:g}s")
        except ValueError as exc:
            return Outcome("failed", error=str(exc), permanent=True)
        except (ActuatorError, HealerError, OSError) as exc:
            return Outcome("failed", error=str(exc) or type(exc).__name__)
        except asyncio.CancelledError:
            if interruptible and not compensate:
                # Shutdown cut the action short. Safe to say so and let the planner retry: every
                # action of this saga may run again. Otherwise the intent stays open and the next
                # start verifies instead of repeating.
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        self._note(
                            T.STEP_INTERRUPTED,
                            ctx.component,
                            ctx.incident,
                            {**base, "reason": "daemon stopping"},
                        )
                    )
            else:
                log.warning("%s cut short by shutdown; the next start resolves it", ctx.idempotency_key)
            raise
        except Exception as exc:  # a plugin bug fails the action, never the daemon
            log.exception("actuator %s crashed", name)
            return Outcome("failed", error=f"{type(exc).__name__}: {exc}")
        return Outcome("succeeded", result=_jsonable(raw))

    async def _note(self, kind: str, comp: str, iid: int, data: Mapping[str, Any]) -> None:
        await self._record(Event(kind, self._clock.wall(), comp, iid, dict(data)), None)

    # -- failure and compensation ----------------------------------------------------------------
    def _compensation_for(self, comp: str, d: Done) -> tuple[dict[str, Any] | None, str]:
        act = d.action
        name, verb = str(act.get("actuator")), str(act.get("action"))
        params = dict(act.get("params") or {})
        spec = {
            "key": f"{d.key}/compensate",
            "of": d.key,
            "action_index": d.index,
            "result": dict(d.result),
            "before": dict(d.before),
        }
        if act.get("compensate") is False:
            return None, "the policy says not to compensate it"
        explicit = act.get("compensation")
        if isinstance(explicit, Mapping):
            return {
                **spec,
                "via": "explicit",
                "actuator": explicit.get("actuator"),
                "action": explicit.get("action"),
                "params": dict(explicit.get("params") or {}),
                "timeout": explicit.get("timeout") or act.get("timeout"),
            }, ""
        actuator = self._registry.actuators.get(name)
        if actuator is None or not compensates(actuator, verb, params):
            return None, f"{name}.{verb} has no compensation"
        return {
            **spec,
            "via": "actuator",
            "actuator": name,
            "action": verb,
            "params": params,
            "timeout": act.get("timeout"),
        }, ""

    async def _fail_saga(
        self,
        comp: str,
        iid: int,
        plan: Mapping[str, Any],
        index: int,
        action: Mapping[str, Any],
        out: Outcome,
        done: list[Done],
    ) -> None:
        specs: list[dict[str, Any]] = []
        left: list[dict[str, str]] = []
        for d in sorted(done, key=lambda d: d.index, reverse=True):
            spec, why = self._compensation_for(comp, d)
            if spec is not None:
                specs.append(spec)
            else:
                left.append({"key": d.key, "reason": why})
        data = {**self._base(plan, index, action), "error": out.error, "duration_s": out.duration}
        if out.breaker:
            data["breaker"] = out.breaker
        if specs:
            data["compensations"] = specs
        if left:
            data["not_compensated"] = left
        await self._note(T.STEP_FAILED, comp, iid, data)
        if specs:
            await self._compensate(comp, iid, str(plan["idempotency_key"]), specs)

    def _compensation_ctx(
        self, comp: str, iid: int, spec: Mapping[str, Any]
    ) -> tuple[Actuator, ActionContext]:
        actuator = self._registry.get(str(spec.get("actuator")))
        ctx = ActionContext(
            comp,
            str(spec.get("action")),
            dict(spec.get("params") or {}),
            str(spec["key"]),
            iid,
            self._timeout(actuator, spec),
            # An explicit compensation is an ordinary action of its own; the actuator's own undo
            # works from what perform recorded.
            compensating=spec.get("via") == "actuator",
            result=dict(spec.get("result") or {}),
            before=dict(spec.get("before") or {}),
            undoes=str(spec.get("of") or ""),
        )
        return actuator, ctx

    def _compensation_idempotent(self, actuator: Actuator, spec: Mapping[str, Any]) -> bool:
        if spec.get("via") == "actuator":
            return compensation_is_idempotent(actuator)
        return is_idempotent(actuator, str(spec.get("action")), dict(spec.get("params") or {}))

    async def _compensate(
        self, comp: str, iid: int, plan_key: str, specs: list[dict[str, Any]], resumed: bool = False
    ) -> bool:
        """Run ``specs`` in order; True when all succeeded (False: escalated)."""
        for i, spec in enumerate(specs):
            ok = await self._compensate_one(comp, iid, spec, specs[i + 1 :], resumed=resumed and i == 0)
            if not ok:
                return False
        await self._note(
            T.SAGA_COMPENSATED,
            comp,
            iid,
            {"plan_key": plan_key, "compensated": [s["key"] for s in specs]},
        )
        return True

    async def _compensate_one(
        self, comp: str, iid: int, spec: dict[str, Any], rest: list[dict[str, Any]], resumed: bool
    ) -> bool:
        cfg = self.settings.compensation
        key = str(spec["key"])
        info = {
            "idempotency_key": key,
            "of": spec.get("of"),
            "action_index": spec.get("action_index"),
            "actuator": spec.get("actuator"),
            "action": spec.get("action"),
            "via": spec.get("via"),
        }

        def pending(state: FleetState) -> bool:
            inc = state.incidents.get(iid)
            return (
                inc is not None
                and inc.compensating is not None
                and any(c.get("key") == key for c in inc.compensating.get("pending", []))
            )

        last: Outcome | None = None
        try:
            async for attempt in stamina.retry_context(
                on=_CompensationFailed,
                attempts=cfg.attempts,
                timeout=None,
                wait_initial=cfg.wait_initial,
                wait_max=cfg.wait_max,
                wait_jitter=cfg.wait_jitter,
            ):
                with attempt:
                    out = await self._compensation_try(comp, iid, spec, info, attempt.num, pending, resumed)
                    if out.status == "skipped":
                        return True  # someone else compensated it already
                    if out.status == "failed":
                        last = out
                        final = out.permanent or attempt.num >= cfg.attempts
                        await self._note(
                            T.COMPENSATION_FAILED,
                            comp,
                            iid,
                            {
                                **info,
                                "try": attempt.num,
                                "error": out.error,
                                "breaker": out.breaker,
                                "final": final,
                                "retry_in": None if final else round(attempt.next_wait, 3),
                            },
                        )
                        if final:
                            break
                        raise _CompensationFailed(out)
                    return True
        except _CompensationFailed as exc:
            last = exc.outcome
        assert last is not None
        tries = "permanently" if last.permanent else f"after {cfg.attempts} tries"
        await self._escalate(
            comp,
            iid,
            f"compensation {spec.get('actuator')}.{spec.get('action')} of {spec.get('of')} failed {tries}: "
            f"{last.error}; its effects, and those of the actions not yet compensated "
            f"({', '.join(str(s['of']) for s in rest) or 'none'}), may remain",
            {"compensation": key, "not_compensated": [s["of"] for s in [spec, *rest]]},
        )
        return False

    async def _compensation_try(
        self,
        comp: str,
        iid: int,
        spec: Mapping[str, Any],
        info: Mapping[str, Any],
        num: int,
        pending: Precondition,
        resumed: bool,
    ) -> Outcome:
        name = str(spec.get("actuator"))
        index = int(spec.get("action_index", 0))
        started = await self._record(
            Event(
                T.COMPENSATION_STARTED,
                self._clock.wall(),
                comp,
                iid,
                {**info, "try": num, **({"resumed": True} if resumed and num == 1 else {})},
            ),
            pending,
        )
        if started is None:
            return Outcome("skipped")
        self._mark_acting()
        try:
            actuator, ctx = self._compensation_ctx(comp, iid, spec)
            if ctx.compensating:
                if not callable(getattr(actuator, "compensate", None)):
                    raise ActuatorError(f"{name} has no compensate()")
            else:
                actuator.validate(ctx.action, ctx.params)
        except (ActuatorError, ValueError) as exc:
            return Outcome("failed", error=str(exc), permanent=True)
        self._faults.hit("after-compensation-intent", name, index)
        out = await self._call(actuator, ctx, name, info, interruptible=False, compensate=ctx.compensating)
        if out.status == "succeeded":
            self._faults.hit("after-compensation-effect", name, index)
            await self._note(
                T.COMPENSATION_SUCCEEDED,
                comp,
                iid,
                {**info, "try": num, "result": out.result, "duration_s": out.duration},
            )
        return out

    async def _escalate(self, comp: str, iid: int, reason: str, extra: Mapping[str, Any]) -> None:
        await self._note(T.INCIDENT_ESCALATED, comp, iid, {"reason": reason, "by": "execute", **extra})

    # -- crash recovery ----------------------------------------------------------------------------
    def recover(self, state: FleetState) -> list[int]:
        """Resume what a previous run left in flight; returns the incidents being resumed.

        Call before dispatching anything else, or make the executor with ``resume_first`` (it holds
        what is dispatched earlier until here): per incident, recovery runs first."""
        resumed = []
        busy = {t.get_name() for t in self._tasks}
        for iid, inc in sorted(state.incidents.items()):
            plan_key = (inc.plan or {}).get("idempotency_key")
            if f"recover:incident-{iid}" in busy or f"step:{plan_key}" in busy:
                continue  # already being worked on (recover may be called again after a store outage)
            if inc.compensating or self._saga_in_flight(inc):
                resumed.append(iid)
                self._spawn(self._recover_incident(state, iid), f"recover:incident-{iid}")
        # Spawned after the recoveries: each waits for its incident's lock behind them, and then
        # runs only if its plan is still the current one (the recovery may have escalated).
        held, self._held = self._held, None
        for planned in held or ():
            self.dispatch(planned)
        return resumed

    @staticmethod
    def _saga_in_flight(inc: IncidentView) -> bool:
        return inc.is_open and inc.plan is not None and (inc.phase == "acting" or inc.open_step() is not None)

    async def _recover_incident(self, state: FleetState, iid: int) -> None:
        async with self._lock(iid):
            self._mark_acting()
            inc = state.incidents[iid]
            if inc.compensating and not await self._resume_compensation(inc):
                return
            inc = state.incidents[iid]
            if self._saga_in_flight(inc):
                await self._resume_saga(inc)

    async def _verify(self, actuator: Actuator, ctx: ActionContext) -> tuple[bool | None, str]:
        verify = getattr(actuator, "verify", None)
        if verify is None:
            return None, f"{actuator.name} cannot check the intended state (it has no verify)"
        try:
            async with asyncio.timeout(ctx.timeout):
                verdict = await verify(ctx)
        except Exception as exc:
            return None, f"its verify check failed ({type(exc).__name__}: {exc})"
        if verdict is True:
            return True, "its verify check found the intended state in place"
        if verdict is False:
            return False, "its verify check found the intended state NOT in place"
        return None, "its verify check could not tell"

    async def _resume_compensation(self, inc: IncidentView) -> bool:
        """Finish a compensation the previous run started; False if it escalated instead."""
        assert inc.compensating is not None
        comp, iid = inc.component, inc.id
        specs = [dict(s) for s in inc.compensating.get("pending", [])]
        plan_key = str(inc.compensating.get("plan_key"))
        if not specs:
            await self._note(T.SAGA_COMPENSATED, comp, iid, {"plan_key": plan_key, "compensated": []})
            return True
        first = specs[0]
        in_flight = any(v.key == first["key"] and v.in_flight for v in inc.compensations)
        if in_flight:
            verdict: bool | None = None
            try:
                actuator, ctx = self._compensation_ctx(comp, iid, first)
            except ActuatorError as exc:
                why = f"its actuator cannot be used any more ({exc})"
            else:
                if self._compensation_idempotent(actuator, first):
                    # Safe to repeat: _compensate re-runs it with the same key.
                    return await self._compensate(comp, iid, plan_key, specs, resumed=True)
                verdict, why = await self._verify(actuator, ctx)
            info = {k: first.get(k) for k in ("of", "action_index", "actuator", "action", "via")}
            info["idempotency_key"] = first["key"]
            if verdict is not True:
                uncertainty = (
                    f"uncertain whether compensation {first.get('actuator')}.{first.get('action')} "
                    f"(key {first['key']}) took effect: the daemon stopped between its intent and its "
                    f"outcome, it is not safe to repeat, so healer did not, and {why}"
                )
                await self._note(T.COMPENSATION_ABANDONED, comp, iid, {**info, "uncertainty": uncertainty})
                await self._escalate(
                    comp,
                    iid,
                    uncertainty,
                    {"compensation": first["key"], "not_compensated": [s["of"] for s in specs]},
                )
                return False
            await self._note(
                T.COMPENSATION_SUCCEEDED, comp, iid, {**info, "recovered": "verified", "detail": why}
            )
            specs = specs[1:]
        return await self._compensate(comp, iid, plan_key, specs)

    async def _resume_saga(self, inc: IncidentView) -> None:
        comp, iid = inc.component, inc.id
        plan = dict(inc.plan or {})
        plan_key = str(plan.get("idempotency_key"))
        actions = list(plan.get("actions") or [])
        mine = [s for s in inc.actions if s.key.startswith(f"{plan_key}/action-")]
        done = [
            Done(s.action_index, s.key, actions[s.action_index], dict(s.detail.get("result") or {}), s.before)
            for s in mine
            if s.outcome == "succeeded" and s.action_index < len(actions)
        ]
        open_steps = [s for s in mine if s.outcome is None]
        if not open_steps:
            start = max((d.index for d in done), default=-1) + 1
            if start < len(actions):
                log.info("incident %d: resuming saga %s at action %d", iid, plan_key, start)
                await self._run_saga(comp, iid, plan, start, done)
            return
        step = open_steps[-1]
        index = step.action_index
        action = dict(actions[index]) if index < len(actions) else {}
        base = self._base(plan, index, action)
        name, verb = str(action.get("actuator")), str(action.get("action"))
        params = dict(action.get("params") or {})
        try:
            actuator = self._registry.get(name)
            actuator.validate(verb, params)
        except (ActuatorError, ValueError) as exc:
            await self._abandon(comp, iid, base, f"its actuator cannot be used any more ({exc})", done)
            return
        ctx = ActionContext(
            comp,
            verb,
            params,
            step.key,
            iid,
            self._timeout(actuator, action),
            resumed=True,
            before=step.before,
        )
        if is_idempotent(actuator, verb, params):
            await self._note(
                T.STEP_RESUMED,
                comp,
                iid,
                {
                    **base,
                    "reason": "intent without outcome after a daemon restart; "
                    "idempotent, so run again with the same key",
                },
            )
            out = await self._call(actuator, ctx, name, base, interruptible=False)
            if out.status == "failed":
                await self._fail_saga(comp, iid, plan, index, action, out, done)
                return
            self._faults.hit("after-effect", name, index)
            await self._note(
                T.STEP_SUCCEEDED,
                comp,
                iid,
                {**base, "result": out.result, "recovered": "re-run", "duration_s": out.duration},
            )
            done.append(Done(index, step.key, action, out.result, step.before))
        else:
            verdict, why = await self._verify(actuator, ctx)
            if verdict is not True:
                await self._abandon(comp, iid, base, why, done)
                return
            await self._note(
                T.STEP_SUCCEEDED,
                comp,
                iid,
                {**base, "result": {"verified": True}, "recovered": "verified", "detail": why},
            )
            done.append(Done(index, step.key, action, {"verified": True}, step.before))
        if index + 1 < len(actions):
            await self._run_saga(comp, iid, plan, index + 1, done)

    async def _abandon(
        self, comp: str, iid: int, base: Mapping[str, Any], why: str, done: list[Done]
    ) -> None:
        uncertainty = (
            f"uncertain whether {base.get('actuator')}.{base.get('action')} (key {base['idempotency_key']}) "
            f"took effect: the daemon stopped between its intent and its outcome; it is not safe to run "
            f"again, so healer did not, and {why}"
        )
        await self._note(T.STEP_ABANDONED, comp, iid, {**base, "uncertainty": uncertainty})
        await self._escalate(
            comp,
            iid,
            uncertainty + (f"; done before it: {', '.join(d.key for d in done)}" if done else ""),
            {"uncertain": base["idempotency_key"], "done": [d.key for d in done]},
        )

    # -- shutdown --------------------------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Let in-flight sagas finish for up to ``timeout``; cut the rest short."""
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
