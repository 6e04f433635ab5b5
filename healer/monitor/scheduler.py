"""Runs every probe on its schedule and turns results into observations.

Each probe gets hysteresis (N consecutive failures to fail, M passes to pass); a component is
failing when any of its probes fails and healthy when all pass. Only transitions become
events: the log records what changed, not every heartbeat of every probe. A probe that
raises says nothing about its target: the component becomes *unknown*, never healthy.
Event-driven results (a pidfd exit, an MQTT last will) are pushed in through the probe's
context and recorded at once, without waiting for the probe's next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from healer.clock import Clock
from healer.config import HealerConfig, ProbeConfig, component_probes
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.monitor.probes import Probe, ProbeRegistry, ProbeResult
from healer.monitor.telemetry import TelemetryBook
from healer.supervisor import Supervisor

log = logging.getLogger(__name__)

# After a (re)start a probe looks this often until it is conclusive, so recovery is seen fast.
STARTUP_INTERVAL = 0.2


class Wake:
    """Ends a runner's wait between checks early (an Event's set/clear/is_set, and a sleep).

    A thousand probes a second make the wait between checks the scheduler's hottest path: one
    future and one timer handle per wait cost about half of ``asyncio.timeout`` around
    ``Event.wait``.
    """

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if ``set`` is called meanwhile."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        handle = loop.call_later(delay, _resolve, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@dataclass
class ProbeRunner:
    name: str
    spec: ProbeConfig
    probe: Probe
    status: str = "unknown"  # unknown | passing | failing
    passes: int = 0
    failures: int = 0
    last: ProbeResult | None = None
    wake: Wake = field(default_factory=Wake)
    errored: bool = False  # the last check raised: this probe cannot judge its target
    reported: str = "unknown"  # the status the event log last recorded for this probe

    def record(self, result: ProbeResult) -> None:
        self.last = result
        if result.ok is None:
            return
        if result.ok:
            self.passes += 1
            self.failures = 0
            if self.passes >= self.spec.success_threshold:
                self.status = "passing"
        else:
            self.failures += 1
            self.passes = 0
            if self.failures >= self.spec.failure_threshold:
                self.status = "failing"

    def force_failing(self, result: ProbeResult) -> None:
        self.last = result
        self.failures = max(self.failures, self.spec.failure_threshold)
        self.passes = 0
        self.status = "failing"

    def reset(self) -> None:
        self.status, self.passes, self.failures, self.last = "unknown", 0, 0, None
        self.reported = "unknown"  # as the log's process.started says
        self.errored = False
        self.wake.set()

    def evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "type": self.spec.type}
        if self.last is not None:
            out["detail"] = self.last.detail
            if self.last.values:
                out["values"] = dict(self.last.values)
        return out


@dataclass
class ComponentHealth:
    name: str
    runners: list[ProbeRunner]
    reported: str = "unknown"

    def aggregate(self) -> str:
        statuses = {r.status for r in self.runners}
        if "failing" in statuses:
            return "failing"
        if statuses == {"passing"}:
            return "healthy"
        return "unknown"


class _Ctx:
    def __init__(
        self,
        component: str,
        supervisor: Supervisor,
        http: httpx.AsyncClient,
        clock: Clock,
        telemetry: TelemetryBook | None,
        monitor: Monitor,
    ) -> None:
        self._component = component
        self._supervisor = supervisor
        self._http = http
        self._clock = clock
        self._telemetry = telemetry
        self._monitor = monitor
        self.runner: ProbeRunner | None = None  # bound once the runner exists

    @property
    def component(self) -> str:
        return self._component

    def supervised_pid(self) -> int | None:
        return self._supervisor.pid(self._component)

    def supervised_uptime(self) -> float | None:
        return self._supervisor.uptime(self._component)

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def telemetry(self) -> TelemetryBook | None:
        return self._telemetry

    def push(self, result: ProbeResult) -> None:
        if self.runner is not None:
            self._monitor.push(self._component, self.runner, result)

    def wake(self) -> None:
        if self.runner is not None:
            self.runner.wake.set()


class Monitor:
    def __init__(
        self,
        config: HealerConfig,
        registry: ProbeRegistry,
        supervisor: Supervisor,
        emit: Callable[[Event], None],
        clock: Clock,
        http: httpx.AsyncClient,
        telemetry: TelemetryBook | None = None,
    ) -> None:
        self._emit = emit
        self._clock = clock
        self.components: dict[str, ComponentHealth] = {}
        for name, comp in config.components.items():
            runners = []
            for probe_name, spec in component_probes(comp):
                params = registry.validate(spec.type, spec.params)
                ctx = _Ctx(name, supervisor, http, clock, telemetry, self)
                probe = registry.create(spec.type, params, ctx)
                ctx.runner = ProbeRunner(probe_name, spec, probe)
                runners.append(ctx.runner)
            self.components[name] = ComponentHealth(name, runners)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for comp in self.components.values():
                    for runner in comp.runners:
                        tg.create_task(self._loop(comp, runner), name=f"probe:{comp.name}:{runner.name}")
        finally:
            for comp in self.components.values():
                for runner in comp.runners:
                    close = getattr(runner.probe, "close", None)
                    if callable(close):
                        with contextlib.suppress(Exception):
                            close()

    async def _loop(self, comp: ComponentHealth, runner: ProbeRunner) -> None:
        spec = runner.spec
        # Spread first checks so a fleet's probes do not fire in lock-step.
        await self._clock.sleep(random.uniform(0, min(spec.interval, 0.1)))  # noqa: S311  spreading load, not secrets
        phased = False
        while True:
            runner.wake.clear()
            result = await self._check(runner)
            runner.record(result)
            self._update(comp)
            if runner.status == "unknown":
                delay = min(spec.interval, STARTUP_INTERVAL)
            elif not phased:
                # Probes that started together would stay in lock-step and hit the loop as one
                # burst every interval (delaying a last will behind a thousand checks): the first
                # steady-state wait gives each probe its own phase, never a longer wait.
                delay = random.uniform(0, spec.interval)  # noqa: S311  spreading load, not secrets
                phased = True
            else:
                delay = spec.interval
            if spec.jitter:
                delay += random.uniform(0, spec.jitter)  # noqa: S311  jitter, not secrets
            await runner.wake.sleep(delay)

    async def _check(self, runner: ProbeRunner) -> ProbeResult:
        try:
            async with asyncio.timeout(runner.spec.timeout):
                result = await runner.probe.check()
            runner.errored = False
            return result
        except TimeoutError:
            runner.errored = False
            return ProbeResult(
                False, f"timed out after {runner.spec.timeout:g}s", {"timeout_s": runner.spec.timeout}
            )
        except Exception as exc:
            # A broken probe plugin says nothing about the target: unknown, never healthy.
            if not runner.errored:
                log.warning("probe %s raised %s: %s", runner.name, type(exc).__name__, exc)
            runner.status, runner.passes, runner.failures = "unknown", 0, 0
            runner.errored = True
            return ProbeResult(
                None, f"probe error: {type(exc).__name__}: {exc}"[:200], {"error": type(exc).__name__}
            )

    def push(self, component: str, runner: ProbeRunner, result: ProbeResult) -> None:
        """A result that arrived outside the schedule; a failure is recorded at once."""
        comp = self.components.get(component)
        if comp is None:
            return
        if result.ok is False:
            runner.force_failing(result)
        else:
            runner.record(result)
            runner.wake.set()
        self._update(comp)

    def _update(self, comp: ComponentHealth) -> None:
        health = comp.aggregate()
        if health == "unknown" and comp.reported != "unknown" and any(r.errored for r in comp.runners):
            comp.reported = "unknown"
            errored = sorted(r.name for r in comp.runners if r.errored)
            probes = {r.name: r.evidence() for r in comp.runners}
            evidence = {"probes": probes, "errored": errored}
            self._emit(
                Event(T.COMPONENT_BECAME_UNKNOWN, self._clock.wall(), component=comp.name, data=evidence)
            )
            self._probes_recorded(comp)
            return
        if health in (comp.reported, "unknown"):
            self._probe_transitions(comp)
            return
        comp.reported = health
        probes = {r.name: r.evidence() for r in comp.runners}
        failing = sorted(r.name for r in comp.runners if r.status == "failing")
        kind = T.COMPONENT_FAILED if health == "failing" else T.COMPONENT_RECOVERED
        data: dict[str, Any] = {"probes": probes}
        if failing:
            data["failing"] = failing
        self._emit(Event(kind, self._clock.wall(), component=comp.name, data=data))
        self._probes_recorded(comp)

    @staticmethod
    def _probes_recorded(comp: ComponentHealth) -> None:
        for r in comp.runners:
            r.reported = r.status  # the component's event carried every probe's status

    def _probe_transitions(self, comp: ComponentHealth) -> None:
        """A probe changed while its component's health did not: a step's verification may name
        just that probe (``verify.probes``), so the log records the change on its own."""
        for r in comp.runners:
            if r.status != r.reported:
                data = {"probe": r.name, "previous": r.reported, **r.evidence()}
                r.reported = r.status
                self._emit(Event(T.PROBE_TRANSITIONED, self._clock.wall(), component=comp.name, data=data))

    # -- hooks from the supervisor ------------------------------------------------------------
    def process_started(self, component: str) -> None:
        comp = self.components.get(component)
        if comp is None:
            return
        comp.reported = "unknown"
        for runner in comp.runners:
            runner.reset()

    def process_exited(self, component: str, data: dict[str, Any]) -> None:
        comp = self.components.get(component)
        if comp is None or data.get("expected"):
            return
        for runner in comp.runners:
            if runner.spec.type == "process" and getattr(runner.probe, "supervised", True):
                runner.force_failing(ProbeResult(False, "process exited", data))
        self._update(comp)
