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
import gc
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
from healer.control import DaemonControl
from healer.dr.aftercare import Aftercare, lineage_event
from healer.dr.objectives import objectives_event
from healer.dr.retention import Retention
from healer.dr.store import CheckpointStore
from healer.errors import HealerError, PolicyError, StoreError
from healer.execute.actuators import ActuatorServices
from healer.execute.executor import Executor
from healer.execute.registry import ActuatorRegistry
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore, rebuild_state
from healer.loop import ControlLoop, decider_for
from healer.monitor.mqtt import MqttLink
from healer.monitor.probes import ProbeRegistry
from healer.monitor.scheduler import Monitor
from healer.plan.planner import WAKE_ON, next_wakeup
from healer.plan.policy import PolicySet, fleet_of, load_policies
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
        early_signals: list[int] | None = None,
    ) -> None:
        # Signals that arrived before the event loop could handle them (see cli.cmd_run).
        self.early_signals = early_signals if early_signals is not None else []
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
        self._task: asyncio.Task[int]
        self.last_reload_problems: list[str] = []
        self.metrics: Any = None  # healer.metrics.Metrics when the endpoint is enabled
        self._metrics_server: Any = None

    # -- control from outside -------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # -- as an async context manager: `async with Daemon(cfg) as d:` runs it in the background ------
    async def __aenter__(self) -> Daemon:
        """Start every stage and return once the daemon is ready (or raise why it could not start)."""
        self._task = asyncio.create_task(self.run(), name="healer-daemon")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            ready.cancel()
            self._task.result()  # raises what stopped start-up
            raise HealerError("the daemon stopped during start-up")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop cleanly: in-flight actions finish or are recorded as interrupted."""
        self.request_stop()
        await self._task

    async def wait_stopped(self) -> int:
        """Until the daemon stops by itself (a signal): its exit code."""
        return await asyncio.shield(self._task)

    def load_policies(self) -> PolicySet:
        # Checked against the configured components too (the probes a step's verification names).
        return load_policies([self.config.policies_dir], fleet=fleet_of(self.config))

    def reload_policies(self) -> bool:
        """SIGHUP: swap in the new set only if every file is valid; otherwise keep the old one."""
        if self.loop is None:
            log.warning("SIGHUP during start-up ignored: the policies are being loaded anyway")
            return False
        try:
            new = self.load_policies()
        except PolicyError as exc:
            self.last_reload_problems = list(exc.problems)
            log.error("policy reload rejected, previous policies stay in force:\n%s", exc)
            self.loop.submit(
                Event(T.POLICIES_REJECTED, self.clock.wall(), data={"problems": exc.problems[:50]})
            )
            return False
        self.last_reload_problems = []
        self.loop.decider.policies = new
        self.loop.submit(Event(T.POLICIES_LOADED, self.clock.wall(), data=_policies_data(new, reload=True)))
        log.info("policies reloaded: %d policies, hash %s", len(new.policies), new.hash)
        return True

    # -- lifetime ------------------------------------------------------------------------------------
    async def run(self) -> int:
        cfg = self.config
        # Handlers first: a SIGTERM during start-up must mean "stop once started", not death.
        self._install_signals()
        if self.early_signals:
            self.request_stop()
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
        control: DaemonControl | None = None
        try:
            state = await rebuild_state(store)
            self.state = state
            rebuilt = state.digest()
            commands = {n: c.command for n, c in cfg.components.items() if c.command is not None}
            decider = decider_for(cfg, policies, self.taxonomy)  # the same one replay builds
            executor: Executor | None = None
            aftercare: Aftercare | None = None
            link: MqttLink | None = None
            metrics = self._start_metrics(state)

            def on_recorded(rec: RecordedEvent) -> None:
                _log_event(rec)
                if metrics is not None:
                    metrics.on_recorded(rec)
                if link is not None:
                    link.publish_event(rec)
                if rec.type == T.INCIDENT_PLANNED and executor is not None:
                    executor.dispatch(rec)
                elif rec.type == T.STEP_SUCCEEDED:
                    inc = state.incidents.get(rec.incident or 0)
                    timeout = float(((inc.plan if inc else None) or {}).get("verify_timeout", 30))
                    asyncio.get_running_loop().call_later(timeout + 0.01, loop.tick)
                elif rec.type == T.SYMPTOM_SETTLING or (
                    rec.type == T.SYMPTOM_SUPPRESSED and rec.data.get("settle_until") is not None
                ):
                    # A settling or late symptom (a hold-down) is decided again at its deadline.
                    wait = float(rec.data.get("settle_until", 0)) - self.clock.wall()
                    asyncio.get_running_loop().call_later(max(wait, 0) + 0.01, loop.tick)
                self._arm_waits(rec, state, loop)
                if rec.type == T.INCIDENT_RESOLVED:
                    measured = objectives_event(state, rec, cfg, self.clock.wall())
                    if measured is not None:
                        loop.submit(measured)
                    if aftercare is not None:
                        aftercare.incident_resolved(rec.incident)
                elif rec.type == T.STEP_SUCCEEDED:
                    lineage = lineage_event(state, rec, self.clock.wall())
                    if lineage is not None:
                        loop.submit(lineage)
                if self._on_event is not None:
                    self._on_event(rec)

            def on_store_health(exc: Exception | None) -> None:
                if exc is not None:
                    self.notifier.status(f"DEGRADED: event store unwritable ({exc}); not acting")
                    return
                self.notifier.status(f"healing {len(cfg.components)} components")
                if executor is None:
                    return
                # Sagas whose outcomes could not be recorded resume as after a restart...
                executor.recover(state)
                # ...and plans recorded before the failure whose intent could not be are dispatched again.
                for inc in state.incidents.values():
                    key = (inc.plan or {}).get("idempotency_key")
                    if inc.phase == "planned" and inc.plan is not None and not executor.dispatched(str(key)):
                        executor.dispatch(
                            RecordedEvent(
                                state.position,
                                T.INCIDENT_PLANNED,
                                self.clock.wall(),
                                inc.component,
                                inc.id,
                                inc.plan,
                            )
                        )

            loop = ControlLoop(store, state, decider, self.clock, on_recorded, on_store_health)
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

            supervisor = Supervisor(commands, cfg.state_dir / "logs", on_process, instance=str(cfg.state_dir))
            if cfg.mqtt is not None:
                link = MqttLink.from_config(cfg, loop.submit, self.clock)
            telemetry = link.book if link is not None else None
            monitor = Monitor(cfg, registry, supervisor, loop.submit, self.clock, http, telemetry)
            loop.wake_probes = monitor.wake_component
            services = ActuatorServices(
                supervisor,
                cfg.state_dir,
                cfg.execute,
                http,
                emit=loop.submit,
                incident_opened_at=lambda i: inc.opened_at if (inc := state.incidents.get(i)) else None,
            )
            actuators = ActuatorRegistry.discover(services)
            # resume_first: the first batches below may already plan an incident whose cooldown
            # ran out while no daemon ran; that plan must wait behind the recovery of a saga or
            # compensation the previous run left in flight (see _recover).
            executor = Executor(
                actuators,
                loop.record,
                self.clock,
                submit=loop.submit,
                settings=cfg.execute,
                resume_first=True,
            )
            executor.breakers.restore(state.actuator_breakers)
            aftercare = Aftercare(state, actuators.get, loop.submit)

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
                await loop.record(Event(T.ACTUATORS_LOADED, self.clock.wall(), data=actuators.summary()))
                await self._recover(state, supervisor, loop, executor)
                aftercare.incident_resolved()  # flags a previous run resolved but did not restore
                control = DaemonControl(self, loop, state, self.clock, cfg.components)
                await control.start(cfg.state_dir, cfg.control_group)
                wake = next_wakeup(state)
                if wake is not None:
                    self._wake_at(wake, loop)
                monitor_task = tg.create_task(monitor.run(), name="monitor")
                aux = [
                    tg.create_task(self._watchdog(), name="watchdog"),
                    tg.create_task(self._ticker(loop), name="deadline-ticker"),
                ]
                if link is not None:
                    aux.append(tg.create_task(link.run(), name="mqtt"))
                retention = Retention(
                    CheckpointStore.in_state_dir(cfg.state_dir),
                    state,
                    loop.submit,
                    cfg.dr.keep_checkpoints,
                    cfg.dr.retention_interval,
                )
                aux.append(tg.create_task(retention.run(self.clock.sleep), name="checkpoint-retention"))
                # What start-up built (config, models, probes) lives as long as the daemon: keep it
                # out of every full GC pass, which otherwise stalls the loop ~0.1 s on big fleets.
                gc.collect()
                gc.freeze()
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
                await aftercare.drain()
                if cfg.stop_components_on_exit:
                    await supervisor.stop_all(grace_cap=cfg.shutdown_timeout)
                if link is not None:  # publish what was recorded so far, then say offline
                    await loop.flush()
                    await link.stop(timeout=min(cfg.shutdown_timeout, 5.0))
                await loop.flush()
                try:
                    await loop.record(
                        Event(
                            T.DAEMON_STOPPED,
                            self.clock.wall(),
                            data={"pid": os.getpid(), "digest": state.digest()},
                        )
                    )
                except StoreError as exc:
                    log.error(
                        "stopping with the event store unwritable (%s): %d observation(s) lost",
                        exc,
                        loop.held,
                    )
                    self.exit_code = 1
                for task in (loop_task, *aux):
                    task.cancel()
        finally:
            if control is not None:
                await control.close()
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
        # Sagas and compensations in flight resume first (re-run if idempotent, else verify or
        # escalate); per incident they run before any plan dispatched below.
        resuming = executor.recover(state)
        if resuming:
            log.info("resuming sagas in flight for incident(s) %s", ", ".join(map(str, resuming)))
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
                strays = [pc for pc in supervisor.find_unrecorded(name) if comp is None or pc[0] != comp.pid]
                if not adopted and strays:
                    # Spawned by a daemon killed before it could record the spawn: adopt the
                    # newest, never run two copies.
                    pid, created = strays.pop(0)
                    adopted = supervisor.adopt(name, pid, created)
                for pid, _ in strays:
                    log.warning("%s: killing stray copy pid %d left by a previous run", name, pid)
                    supervisor.kill_stray(pid)
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
            if inc.open_step() is not None or inc.phase == "acting":
                continue  # being resumed by executor.recover (above)
            if inc.phase == "verifying":
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
                if executor.dispatched(str(inc.plan.get("idempotency_key"))):
                    continue  # decided by this run's first batches, already released by recover()
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

    def _wake_at(self, when: float, loop: ControlLoop) -> None:
        delay = max(0.0, when - self.clock.wall()) + 0.01
        asyncio.get_running_loop().call_later(delay, loop.tick)

    def _arm_waits(self, rec: RecordedEvent, state: FleetState, loop: ControlLoop) -> None:
        """Tick the loop when something a waiting incident waits for may have changed or expire."""
        if rec.type in WAKE_ON:
            loop.tick()
        d = rec.data
        if rec.type == T.INCIDENT_DEFERRED and d.get("next_allowed_at") is not None:
            self._wake_at(float(d["next_allowed_at"]), loop)
        elif rec.type == T.APPROVAL_REQUESTED and d.get("deadline") is not None:
            self._wake_at(float(d["deadline"]), loop)
        elif rec.type in (T.COMPONENT_RECOVERED, T.PROBE_TRANSITIONED) and rec.component is not None:
            inc = state.active_for(rec.component)
            stable = float(((inc.plan if inc else None) or {}).get("verify_stable_for") or 0)
            if inc is not None and inc.phase == "verifying" and stable > 0:
                self._wake_at(rec.ts + stable, loop)

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
