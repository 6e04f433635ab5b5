"""The daemon: wires the stages around the control loop and owns their lifetime.

One TaskGroup holds the named loops (control, monitor, watchdog, deadline ticker). Start-up
rebuilds the snapshot from the log and resolves whatever the previous run left open;
shutdown lets an in-flight action finish (or records it as interrupted), stops supervised
processes, and records the final snapshot digest so the next start can prove it rebuilt the
same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx

from healer import __version__
from healer.analyze.taxonomy import Taxonomy, load_taxonomy
from healer.clock import Clock, SystemClock
from healer.config import HealerConfig
from healer.errors import PolicyError
from healer.execute.actuators import ActuatorRegistry, ActuatorServices
from healer.execute.executor import Executor
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore, rebuild_state
from healer.loop import ControlLoop, Decider
from healer.monitor.probes import ProbeRegistry
from healer.monitor.scheduler import Monitor
from healer.plan.policy import PolicySet, load_policies
from healer.sdnotify import Notifier
from healer.supervisor import Supervisor

log = logging.getLogger("healer")


class Daemon:
    def __init__(
        self,
        config: HealerConfig,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        taxonomy: Taxonomy | None = None,
        on_event: Any = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier()
        self.taxonomy = taxonomy or load_taxonomy()
        self._on_event = on_event
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self.state: FleetState | None = None
        self.loop: ControlLoop | None = None
        self.exit_code = 0
        self.metrics: Any = None  # healer.metrics.Metrics when the endpoint is enabled
        self._metrics_server: Any = None

    # -- control from outside -------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def load_policies(self) -> PolicySet:
        return load_policies([self.config.policies_dir])

    def reload_policies(self) -> bool:
        """SIGHUP: swap in the new set only if every file is valid; otherwise keep the old one."""
        assert self.loop is not None
        try:
            new = self.load_policies()
        except PolicyError as exc:
            log.error("policy reload rejected, previous policies stay in force:\n%s", exc)
            self.loop.submit(
                Event(T.POLICIES_REJECTED, self.clock.wall(), data={"problems": exc.problems[:50]})
            )
            return False
        self.loop.decider.policies = new
        self.loop.submit(Event(T.POLICIES_LOADED, self.clock.wall(), data=_policies_data(new, reload=True)))
        log.info("policies reloaded: %d policies, hash %s", len(new.policies), new.hash)
        return True

    # -- lifetime ------------------------------------------------------------------------------------
    async def run(self) -> int:
        cfg = self.config
        policies = self.load_policies()  # invalid policies at start: nothing to fall back on
        store = await SQLiteEventStore.open(
            cfg.state_dir, synchronous=cfg.store.synchronous, batch_max=cfg.store.batch_max, exclusive=True
        )
        http = httpx.AsyncClient(
            timeout=None,  # noqa: S113  each probe's own asyncio.timeout bounds every request
            limits=httpx.Limits(max_connections=256),
            trust_env=False,
        )
        supervisor: Supervisor | None = None
        try:
            state = await rebuild_state(store)
            self.state = state
            rebuilt = state.digest()
            commands = {n: c.command for n, c in cfg.components.items() if c.command is not None}
            decider = Decider(
                self.taxonomy,
                policies,
                {n: c.labels for n, c in cfg.components.items()},
                frozenset(commands),
            )
            executor: Executor | None = None
            metrics = self._start_metrics(state)

            def on_recorded(rec: RecordedEvent) -> None:
                _log_event(rec)
                if metrics is not None:
                    metrics.on_recorded(rec)
                if rec.type == T.INCIDENT_PLANNED and executor is not None:
                    executor.dispatch(rec)
                elif rec.type == T.STEP_SUCCEEDED:
                    inc = state.incidents.get(rec.incident or 0)
                    timeout = float(((inc.plan if inc else None) or {}).get("verify_timeout", 30))
                    asyncio.get_running_loop().call_later(timeout + 0.01, loop.tick)
                if self._on_event is not None:
                    self._on_event(rec)

            loop = ControlLoop(store, state, decider, self.clock, on_recorded)
            if metrics is not None:
                loop.store = metrics.timed(store)  # append latency, measured at the one writer
            self.loop = loop
            registry = ProbeRegistry.discover()

            def on_process(kind: str, component: str, data: dict[str, Any]) -> None:
                # The process event goes first: the failure it causes must be judged knowing
                # the process is gone (crash), not still running (hang).
                etype = {"started": T.PROCESS_STARTED, "adopted": T.PROCESS_ADOPTED}.get(
                    kind, T.PROCESS_EXITED
                )
                loop.submit(Event(etype, self.clock.wall(), component=component, data=data))
                if kind in ("started", "adopted"):
                    monitor.process_started(component)
                else:
                    monitor.process_exited(component, data)

            supervisor = Supervisor(commands, cfg.state_dir / "logs", on_process)
            monitor = Monitor(cfg, registry, supervisor, loop.submit, self.clock, http)
            actuators = ActuatorRegistry.discover(ActuatorServices(supervisor))
            executor = Executor(actuators, loop.record, self.clock)

            async with asyncio.TaskGroup() as tg:
                loop_task = tg.create_task(loop.run(), name="control-loop")
                await loop.record(
                    Event(
                        T.DAEMON_STARTED,
                        self.clock.wall(),
                        data={
                            "pid": os.getpid(),
                            "version": __version__,
                            "rebuilt_digest": rebuilt,
                            "rebuilt_position": state.position,
                        },
                    )
                )
                await loop.record(Event(T.POLICIES_LOADED, self.clock.wall(), data=_policies_data(policies)))
                await self._recover(state, supervisor, loop, executor)
                monitor_task = tg.create_task(monitor.run(), name="monitor")
                aux = [
                    tg.create_task(self._watchdog(), name="watchdog"),
                    tg.create_task(self._ticker(loop), name="deadline-ticker"),
                ]
                self._install_signals()
                self.notifier.ready(f"healing {len(cfg.components)} components")
                self._ready.set()
                log.info(
                    "healer %s ready: %d components, state %s",
                    __version__,
                    len(cfg.components),
                    cfg.state_dir,
                )

                await self._stop.wait()

                self.notifier.stopping("stopping")
                log.info("stopping: letting in-flight actions finish (up to %ss)", cfg.shutdown_timeout)
                monitor_task.cancel()
                await executor.drain(cfg.shutdown_timeout)
                if cfg.stop_components_on_exit:
                    await supervisor.stop_all()
                await loop.flush()
                await loop.record(
                    Event(
                        T.DAEMON_STOPPED,
                        self.clock.wall(),
                        data={"pid": os.getpid(), "digest": state.digest()},
                    )
                )
                for task in (loop_task, *aux):
                    task.cancel()
        finally:
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
            self._remove_signals()
            if supervisor is not None:
                supervisor.close()
            await http.aclose()
            await store.close()
        return self.exit_code

    def _start_metrics(self, state: FleetState) -> Any:
        cfg = self.config.metrics
        if not cfg.enabled:
            return None
        from healer.errors import HealerError
        from healer.metrics import Metrics

        metrics = Metrics(self.config.state_dir)
        metrics.prime(state)
        try:
            self._metrics_server = metrics.serve(cfg.address, cfg.port)
        except OSError as exc:
            raise HealerError(f"cannot serve metrics on {cfg.address}:{cfg.port}: {exc}") from exc
        self.metrics = metrics
        return metrics

    async def _recover(
        self, state: FleetState, supervisor: Supervisor, loop: ControlLoop, executor: Executor
    ) -> None:
        """Resolve what the previous run left: processes, open steps, pending plans."""
        now = self.clock.wall
        for name in self.config.components:
            inc = state.active_for(name)
            comp = state.components.get(name)
            if supervisor.supervises(name):
                adopted = (
                    comp is not None
                    and comp.process_running
                    and comp.pid is not None
                    and comp.pid_create_time is not None
                    and supervisor.adopt(name, comp.pid, comp.pid_create_time)
                )
                if not adopted:
                    if comp is not None and comp.process_running and comp.pid is not None:
                        # It died while no daemon was watching: that is an observation too.
                        loop.submit(
                            Event(
                                T.PROCESS_EXITED,
                                now(),
                                name,
                                data={
                                    "pid": comp.pid,
                                    "expected": False,
                                    "note": "gone while healer was down",
                                },
                            )
                        )
                    elif inc is None:
                        supervisor.start(name)
            if inc is None or not inc.is_open:
                continue
            step = inc.open_step()
            if step is not None:
                # Intent without outcome: the action may or may not have happened. The process
                # actuator is idempotent, so the planner may safely run it again.
                loop.submit(
                    Event(
                        T.STEP_INTERRUPTED,
                        now(),
                        name,
                        inc.id,
                        {
                            "idempotency_key": step.key,
                            "step": step.step,
                            "attempt": step.attempt,
                            "reason": "daemon restarted before the step's outcome was recorded",
                        },
                    )
                )
            elif inc.phase == "verifying":
                loop.submit(
                    Event(
                        T.VERIFICATION_FAILED,
                        now(),
                        name,
                        inc.id,
                        {"reason": "daemon restarted during verification"},
                    )
                )
            elif inc.phase == "planned" and inc.plan is not None:
                planned = RecordedEvent(state.position, T.INCIDENT_PLANNED, now(), name, inc.id, inc.plan)
                executor.dispatch(planned)
            elif inc.phase in ("detected", "diagnosed"):
                loop.submit(
                    Event(
                        T.VERIFICATION_FAILED,
                        now(),
                        name,
                        inc.id,
                        {"reason": "daemon restarted before a step was planned"},
                    )
                )
        await loop.flush()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await self.clock.sleep(interval)

    async def _ticker(self, loop: ControlLoop) -> None:
        # Deadlines are also armed precisely when set; this catches any that slipped past.
        while True:
            await self.clock.sleep(1.0)
            loop.tick()

    def _install_signals(self) -> None:
        ev_loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(RuntimeError, ValueError):
                ev_loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(RuntimeError, ValueError):
            ev_loop.add_signal_handler(signal.SIGHUP, self.reload_policies)

    def _remove_signals(self) -> None:
        ev_loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(RuntimeError, ValueError):
                ev_loop.remove_signal_handler(sig)


def _policies_data(policies: PolicySet, reload: bool = False) -> dict[str, Any]:
    return {
        "hash": policies.hash,
        "files": dict(policies.files),
        "policies": [p.name for p in policies.policies],
        "reload": reload,
    }


def _log_event(rec: RecordedEvent) -> None:
    if log.isEnabledFor(logging.INFO):
        from healer.render import describe

        log.info("#%d %s", rec.position, describe(rec))


def state_dir_of(config: HealerConfig) -> Path:
    return config.state_dir
