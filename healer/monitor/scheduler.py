"""Runs every probe on its schedule and turns results into observations.

Each probe gets hysteresis (N consecutive failures to fail, M passes to pass); a component is
failing when any of its probes fails and healthy when all pass. Only transitions become
events: the log records what changed, not every heartbeat of every probe. A probe that
raises says nothing about its target: the component becomes *unknown*, never healthy.
Event-driven results (a pidfd exit, an MQTT last will) are pushed in through the probe's
context and recorded at once, without waiting for the probe's next turn.

One driver task, not one task per probe: the probes wait in a heap ordered by their next
check, the driver wakes when the earliest is due (at most once per tick, 5-20 ms) and runs
everything due in one batch. A probe that can answer without waiting
(:class:`~healer.monitor.probes.NowaitProbe`: a ``stat``, a ``/proc`` read, a non-blocking
connect) is checked inline, with no task and no timeout object, since nothing in it can
suspend for a timeout to interrupt. A probe whose answer is not there yet is polled once more
a tick later and only then awaited; a probe that always awaits (``exec``, ``https``, most
plugins) runs as a task under ``asyncio.timeout``. Either way the check's ``timeout`` counts
from when the check started.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

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
# The driver wakes at most once per tick (pushed results do not wait for it): checks due within
# one tick run as one batch, at most one tick late, and an answer that was not there at once is
# read one tick later. The tick is 1/20 of the shortest probe interval, within these bounds: a
# thousand probes at 1 s then cost 20 wake-ups a second instead of a thousand task switches.
# A wake-up is dear on a shared machine (the daemon comes back to cold caches: measured, ~3
# checks' worth each), so the tick trades a probe being at most 5 % of its interval late
# (never checked less often: the next check is due an interval after the last one was *due*)
# and ``connect_ms``/``elapsed_ms`` being upper bounds within a tick, for CPU.
MIN_TICK = 0.005
MAX_TICK = 0.05
TICKS_PER_INTERVAL = 20


@dataclass(eq=False)
class ProbeRunner:
    name: str
    spec: ProbeConfig
    probe: Probe
    status: str = "unknown"  # unknown | passing | failing
    passes: int = 0
    failures: int = 0
    last: ProbeResult | None = None
    errored: bool = False  # the last check raised: this probe cannot judge its target
    reported: str = "unknown"  # the status the event log last recorded for this probe
    # -- scheduling (the Monitor's) --
    nowait: Callable[[], ProbeResult | None] | None = field(default=None, repr=False)
    component: ComponentHealth | None = field(default=None, repr=False)
    token: int = 0  # the heap entry that is current; older ones are skipped
    due: float = 0.0  # when the current (or last) check was due
    phased: bool = False
    started: float | None = None  # a check is in flight since then (polled or awaited)
    rerun: bool = False  # woken while a check was in flight: check again once it ends

    # the spec's timing, read on every check (a pydantic model's attributes cost more)
    interval: float = field(default=0.0, repr=False)
    jitter: float = field(default=0.0, repr=False)
    timeout: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        nowait = getattr(self.probe, "check_nowait", None)
        self.nowait = nowait if callable(nowait) else None
        self.interval = float(self.spec.interval)
        self.jitter = float(self.spec.jitter)
        self.timeout = float(self.spec.timeout)

    def record(self, result: ProbeResult) -> None:
        self.last = result
        ok = result.ok
        if ok is None:
            return
        if ok:
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
            self._monitor.wake(self.runner)


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
        self._supervisor = supervisor
        self.components: dict[str, ComponentHealth] = {}
        for name, comp in config.components.items():
            runners = []
            for probe_name, spec in component_probes(comp):
                params = registry.validate(spec.type, spec.params)
                ctx = _Ctx(name, supervisor, http, clock, telemetry, self)
                probe = registry.create(spec.type, params, ctx)
                ctx.runner = ProbeRunner(probe_name, spec, probe)
                runners.append(ctx.runner)
            health = self.components[name] = ComponentHealth(name, runners)
            for runner in runners:
                runner.component = health
        intervals = [r.spec.interval for c in self.components.values() for r in c.runners]
        self.tick = min(MAX_TICK, max(MIN_TICK, min(intervals, default=1.0) / TICKS_PER_INTERVAL))
        self._heap: list[tuple[float, int, ProbeRunner]] = []
        self._seq = 0
        # Inline checks whose answer was not there at once: polled again in the next batch (a
        # list, not the heap: nearly every TCP and HTTP check passes through here once).
        self._polls: list[ProbeRunner] = []
        self._poll_at = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        # The driver is a timer callback, not a task awaiting a future: a wake-up is then one
        # pass of the event loop, not two (timer -> future -> task step), and no future.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._last = float("-inf")  # when the driver last ran a batch
        self._in_batch = False
        self._stopped: asyncio.Future[None] | None = None  # failed with a driver's exception
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the driver -------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        self._polls, self._poll_at = [], float("inf")
        self._last = float("-inf")
        stopped = self._stopped = loop.create_future()
        for comp in self.components.values():
            for runner in comp.runners:
                # Spread first checks so a fleet's probes do not fire in lock-step.
                self._schedule(runner, now + random.uniform(0, min(runner.spec.interval, 0.1)))  # noqa: S311  spreading load, not secrets
        self._arm()
        try:
            await stopped  # only a failing driver ends this; otherwise the run is cancelled
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")
            self._loop = self._stopped = None
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:  # let awaited checks clean up (an exec probe kills its process group)
                await asyncio.gather(*tasks, return_exceptions=True)
            for comp in self.components.values():
                for runner in comp.runners:
                    with contextlib.suppress(Exception):
                        _abandon(runner.probe)

    def _arm(self) -> None:
        """(Re)set the driver's timer: when the earliest check or poll is due, a tick after the
        last batch at the earliest."""
        loop = self._loop
        if loop is None:
            return
        due = self._heap[0][0] if self._heap else float("inf")
        at = max(min(due, self._poll_at), self._last + self.tick)
        if at >= self._timer_at or at == float("inf"):
            return  # the timer set goes off first (and re-arms), or there is nothing to run
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        loop = self._loop
        if loop is None:
            return
        now = self._last = loop.time()
        self._in_batch = True
        try:
            self._run_due(now)
        except Exception as exc:  # a bug: end run() with it rather than stop checking silently
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_exception(exc)
            return
        finally:
            self._in_batch = False
        self._arm()

    def _schedule(self, runner: ProbeRunner, at: float) -> None:
        self._seq += 1
        runner.token = self._seq
        runner.due = at
        heapq.heappush(self._heap, (at, self._seq, runner))
        if at < self._timer_at and not self._in_batch:
            self._arm()  # earlier than the driver's timer (a batch re-arms when it ends)

    def _run_due(self, now: float) -> None:
        polls: list[ProbeRunner] = []
        if now >= self._poll_at:
            polls, self._polls, self._poll_at = self._polls, [], float("inf")
        heap = self._heap
        pop = heapq.heappop
        due: list[ProbeRunner] = []
        while heap and heap[0][0] <= now:
            _, token, runner = pop(heap)
            if token == runner.token:
                due.append(runner)
        # Taken first, run after: whatever a check schedules waits for the next round.
        for runner in polls:
            self._poll(runner, now)
        start = self._start
        for runner in due:
            if runner.started is None:
                start(runner, now)
            else:
                self._poll(runner, now)

    def _start(self, runner: ProbeRunner, now: float) -> None:
        runner.rerun = False
        nowait = runner.nowait
        if nowait is None:
            runner.started = now
            self._await(runner, runner.spec.timeout)
            return
        status, errored = runner.status, runner.errored
        try:
            result = nowait()
        except Exception as exc:
            self._finish(runner, status, errored, self._raised(runner, exc), now)
            return
        if result is not None:
            runner.errored = False
            self._finish(runner, status, errored, result, now)
            return
        # Not answered yet (a connect in flight): look again a tick later, then wait for it.
        runner.started = now
        self._polls.append(runner)
        at = now + min(self.tick, runner.timeout / 2)
        self._poll_at = min(self._poll_at, at)

    def _poll(self, runner: ProbeRunner, now: float) -> None:
        assert runner.nowait is not None and runner.started is not None
        status, errored = runner.status, runner.errored
        try:
            result = runner.nowait()
        except Exception as exc:
            _abandon(runner.probe)  # whatever it had in flight is in an unknown state
            self._finish(runner, status, errored, self._raised(runner, exc), now)
            return
        if result is not None:
            runner.errored = False
            self._finish(runner, status, errored, result, now)
            return
        remaining = runner.started + runner.timeout - now
        if remaining <= 0:
            _abandon(runner.probe)
            self._finish(runner, status, errored, self._timed_out(runner), now)
        else:
            self._await(runner, remaining)

    def _await(self, runner: ProbeRunner, timeout: float) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._awaited(runner, timeout), name=f"probe:{runner.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _awaited(self, runner: ProbeRunner, timeout: float) -> None:
        failure: Exception | None = None
        try:
            async with asyncio.timeout(timeout):
                result = await runner.probe.check()
        except Exception as exc:  # TimeoutError included
            failure = exc
        # A push may have changed the probe while it was awaited: compare with now, not with then.
        status, errored = runner.status, runner.errored
        if failure is None:
            runner.errored = False
        elif isinstance(failure, TimeoutError):
            runner.errored = False
            if runner.nowait is not None:
                _abandon(runner.probe)  # its check may span calls: end it here
            result = self._timed_out(runner)
        else:
            if runner.nowait is not None:
                _abandon(runner.probe)
            result = self._raised(runner, failure)
        self._finish(runner, status, errored, result, None)

    @staticmethod
    def _timed_out(runner: ProbeRunner) -> ProbeResult:
        timeout = runner.spec.timeout
        return ProbeResult(False, f"timed out after {timeout:g}s", {"timeout_s": timeout})

    @staticmethod
    def _raised(runner: ProbeRunner, exc: Exception) -> ProbeResult:
        # A broken probe plugin says nothing about the target: unknown, never healthy.
        if not runner.errored:
            log.warning("probe %s raised %s: %s", runner.name, type(exc).__name__, exc)
        runner.status, runner.passes, runner.failures = "unknown", 0, 0
        runner.errored = True
        detail = f"probe error: {type(exc).__name__}: {exc}"[:200]
        return ProbeResult(None, detail, {"error": type(exc).__name__})

    def _finish(
        self, runner: ProbeRunner, status: str, errored: bool, result: ProbeResult, now: float | None
    ) -> None:
        """``status``/``errored``: the probe's before the check; ``now``: the batch's time, or
        None for a check that ended on its own (an awaited one)."""
        runner.started = None
        runner.record(result)
        # Only a change of a probe's status can change its component's: most checks stop here.
        if runner.status != status or runner.errored != errored:
            comp = runner.component
            if comp is not None:
                self._update(comp)
        loop = self._loop
        if loop is None:
            return  # the monitor is stopping
        if now is None:
            now = loop.time()
        if runner.rerun:
            runner.rerun = False
            self._schedule(runner, now)
            return
        if runner.phased and runner.status != "unknown":
            delay = runner.interval
        elif runner.status == "unknown":
            delay = min(runner.interval, STARTUP_INTERVAL)
        else:
            # Probes that started together would stay in lock-step and hit the loop as one
            # burst every interval (delaying a last will behind a thousand checks): the first
            # steady-state wait gives each probe its own phase, never a longer wait.
            delay = _random() * runner.interval
            runner.phased = True
        if runner.jitter:
            delay += _random() * runner.jitter
        # From when this check was due, not from when it ran: a batch running up to a tick late
        # must not stretch every interval by that much. After a stall, from now.
        at = runner.due + delay
        self._schedule(runner, at if at > now else now + delay)

    def wake(self, runner: ProbeRunner) -> None:
        """Check ``runner`` now instead of at its next turn (after the check in flight, if any)."""
        if runner.started is not None:
            runner.rerun = True
        elif self._loop is not None:
            self._schedule(runner, self._loop.time())

    def wake_component(self, component: str) -> None:
        """Check every probe of ``component`` now: Analyze holds a dependent for its verdict."""
        comp = self.components.get(component)
        if comp is not None:
            for runner in comp.runners:
                self.wake(runner)

    def push(self, component: str, runner: ProbeRunner, result: ProbeResult) -> None:
        """A result that arrived outside the schedule; a failure is recorded at once."""
        comp = self.components.get(component)
        if comp is None:
            return
        if result.ok is False:
            runner.force_failing(result)
        else:
            runner.record(result)
            self.wake(runner)
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
            process = self._process_state(comp.name)
            if process is not None:
                data["process"] = process
        self._emit(Event(kind, self._clock.wall(), component=comp.name, data=data))
        self._probes_recorded(comp)

    def _process_state(self, component: str) -> dict[str, Any] | None:
        """The OS state of a supervised process, sampled when its component fails.

        Analyze tells a hang (alive but stopped) from a partition (alive, running, unreachable)
        by this; without it, a component with only network probes would be judged by whether
        its peers had failed yet, a race. One ``/proc`` read, only on a failure transition.
        """
        pid = self._supervisor.pid(component)
        if pid is None:
            return None
        try:
            return {"pid": pid, "status": psutil.Process(pid).status()}
        except psutil.Error:
            return None  # exited between the two reads: its pidfd reports the exit

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
            self.wake(runner)

    def process_exited(self, component: str, data: dict[str, Any]) -> None:
        comp = self.components.get(component)
        if comp is None or data.get("expected"):
            return
        for runner in comp.runners:
            if runner.spec.type == "process" and getattr(runner.probe, "supervised", True):
                runner.force_failing(ProbeResult(False, "process exited", data))
        self._update(comp)


def _abandon(probe: Probe) -> None:
    """A check in flight ran out of time: the probe lets go of it (its connection, say)."""
    close = getattr(probe, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:
            log.warning("probe close() raised %s: %s", type(exc).__name__, exc)


_random = random.random  # spreading load and jitter, not secrets
