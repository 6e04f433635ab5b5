"""``healer drill FILE -c CONFIG``: run a drill against a live daemon and grade the recovery.

Checks the steady state, asks the daemon to record the drill's start (with its blast radius),
injects the faults, follows the daemon's decision log by position until every fault is
recovered (or the timeout, or an abort), reverts every fault it injected — whatever happened,
SIGINT included — checks the steady state again, records the verdict and writes the report.

The runner never writes the event store: it reads it read-only and speaks to the daemon over the
control socket, like ``healer approve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healer.config import HealerConfig
from healer.control import ControlError, request, socket_path
from healer.drill.faults import FaultContext, fault_kinds
from healer.drill.report import write_report
from healer.drill.spec import Drill, expects_recovery, load_drill
from healer.errors import HealerError
from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore, rebuild_state

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_ABORTED = 3
EXIT_NOT_STEADY = 4
EXIT_INTERRUPTED = 130
POLL = 0.1
# incident.objectives_measured follows incident.resolved at once; a run waits this long for it.
OBJECTIVES_GRACE = 1.0


@dataclass
class FaultRun:
    index: int
    kind: str
    target: str | None
    recovers: bool
    fault: Any
    description: str
    status: str = "pending"  # pending | skipped | injected | settled | failed
    skipped_reason: str | None = None
    injected_at: float | None = None
    injected_mono: float | None = None
    position: int = 0  # the log position just before injection
    inject_detail: str = ""
    revert_detail: str | None = None
    reverted_at: float | None = None
    incident: int | None = None
    detected_at: float | None = None
    resolved_at: float | None = None
    resolved_mono: float | None = None
    objectives: dict[str, Any] | None = None  # the daemon's incident.objectives_measured
    escalated: str | None = None
    actions: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self, rto: float | None) -> dict[str, Any]:
        def since(ts: float | None) -> float | None:
            return None if ts is None or self.injected_at is None else round(ts - self.injected_at, 3)

        return {
            "index": self.index,
            "kind": self.kind,
            "target": self.target,
            "description": self.description,
            "status": self.status,
            "skipped_reason": self.skipped_reason,
            "expect_recovery": self.recovers,
            "injected": self.inject_detail or None,
            "reverted": self.revert_detail,
            "incident": self.incident,
            "detection_s": since(self.detected_at),
            "recovery_s": since(self.resolved_at),
            "rto_s": rto,
            # The daemon's own measure: detection -> verified healthy (at most recovery_s).
            "daemon_rto_s": None if self.objectives is None else self.objectives.get("rto_achieved"),
            "rpo_s": None if self.objectives is None else self.objectives.get("rpo_achieved"),
            "escalated": self.escalated,
            "actions": self.actions,
            "error": self.error,
        }


class Runner:
    def __init__(self, config: HealerConfig, drill: Drill, out: Callable[[str], None]) -> None:
        self.config = config
        self.drill = drill
        self.out = out
        self.kinds = fault_kinds()
        self.state = FleetState()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"healer-drill-{drill.name}-"))
        ctx = FaultContext(config, lambda: self.state, self.workdir)
        self.runs: list[FaultRun] = []
        for i, (spec, params) in enumerate(zip(drill.spec.faults, drill.params, strict=True)):
            fault = self.kinds[spec.kind](spec, params, ctx)
            self.runs.append(
                FaultRun(
                    i, spec.kind, spec.target, expects_recovery(self.kinds, spec), fault, fault.describe()
                )
            )
        self.radius = set(drill.spec.blast_radius.components)
        self.drill_id: int | None = None
        self.start_position = 0
        self.started_at = 0.0
        self.abort_reason: str | None = None
        self.interrupted = False
        self.outside_failures: list[str] = []
        self.step_keys: dict[str, int] = {}
        self.escalations: list[tuple[str, int | None, str]] = []
        self.objectives: dict[int, tuple[str, dict[str, Any]]] = {}  # incident -> (component, data)
        self.incidents: set[int] = set()
        self._abort = asyncio.Event()
        self.store: SQLiteEventStore | None = None

    # -- helpers -------------------------------------------------------------------------------
    def rto(self, component: str | None) -> float | None:
        if component is None:
            return None
        override = self.drill.spec.criteria.rto.get(component)
        if override is not None:
            return override
        comp = self.config.components.get(component)
        return comp.rto if comp is not None else None

    def rpo(self, component: str, measured: dict[str, Any]) -> tuple[float | None, str]:
        """The RPO target a measurement is graded against, and where it comes from."""
        override = self.drill.spec.criteria.rpo.get(component)
        if override is not None:
            return override, "the drill's criteria.rpo"
        target = measured.get("rpo_target")
        if isinstance(target, int | float):
            return float(target), "the component's rpo"
        comp = self.config.components.get(component)
        return (comp.rpo, "the component's rpo") if comp is not None else (None, "")

    async def ask(self, payload: dict[str, Any]) -> dict[str, Any]:
        answer = await asyncio.to_thread(request, socket_path(self.config.state_dir), payload)
        if not answer.get("ok"):
            raise ControlError(f"the daemon refused {payload['op']}: {answer.get('error')}")
        return answer

    def interrupt(self, signum: int) -> None:
        if self.abort_reason is None:
            self.interrupted = True
            self.abort_reason = f"interrupted by {signal.Signals(signum).name}"
            self.out(f"» {self.abort_reason}: reverting every injected fault")
        self._abort.set()

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
            self.out(f"» ABORT: {reason}; reverting every injected fault")
        self._abort.set()

    # -- following the log ---------------------------------------------------------------------------
    async def poll(self) -> None:
        assert self.store is not None
        for rec in await self.store.read(after=self.state.position):
            self.state.apply(rec)
            if self.drill_id is not None and rec.position > self.start_position:
                self.observe(rec)

    def observe(self, rec: RecordedEvent) -> None:
        comp = rec.component
        outside = comp is not None and comp not in self.radius and comp in self.config.components
        unhealthy = rec.type in (T.COMPONENT_FAILED, T.INCIDENT_DETECTED) or (
            rec.type == T.PROCESS_EXITED and not rec.data.get("expected")
        )
        if outside and unhealthy and comp is not None:
            self.outside_failures.append(comp)
            if self.drill.spec.blast_radius.abort_on_outside_failure:
                self.abort(f"{comp}, outside the blast radius, turned unhealthy (event #{rec.position})")
        elif rec.type == T.STEP_STARTED:
            key = str(rec.data.get("idempotency_key"))
            self.step_keys[key] = self.step_keys.get(key, 0) + 1
        elif rec.type == T.INCIDENT_ESCALATED and comp is not None:
            self.escalations.append((comp, rec.incident, str(rec.data.get("reason"))))
        if rec.type == T.OBJECTIVES_MEASURED and rec.incident is not None and comp in self.radius:
            self.objectives[rec.incident] = (str(comp), dict(rec.data))
            for run in self.runs:
                if run.incident == rec.incident:
                    run.objectives = dict(rec.data)
        if rec.incident is not None and rec.type == T.INCIDENT_DETECTED:
            self.incidents.add(rec.incident)
        for run in self.runs:
            if run.status != "injected" or run.target != comp or rec.position <= run.position:
                continue
            if rec.type == T.INCIDENT_DETECTED and run.incident is None:
                run.incident = rec.incident
                run.detected_at = rec.ts
                self.out(f"  detected: incident {rec.incident} on {comp} (event #{rec.position})")
            elif rec.incident is not None and rec.incident == run.incident:
                if rec.type == T.STEP_STARTED:
                    run.actions.append(f"{rec.data.get('actuator')}.{rec.data.get('action')}")
                elif rec.type == T.INCIDENT_RESOLVED:
                    run.resolved_at = rec.ts
                    run.resolved_mono = time.monotonic()
                    self.out(f"  recovered: {comp} (incident {rec.incident}, event #{rec.position})")
                elif rec.type == T.INCIDENT_ESCALATED:
                    run.escalated = str(rec.data.get("reason"))

    # -- steady state -----------------------------------------------------------------------------
    def steady_problems(self) -> list[str]:
        st = self.drill.spec.steady_state
        names = sorted(self.config.components) if "*" in st.healthy else st.healthy
        problems = [
            f"{n} is {self.state.component(n).health}"
            for n in names
            if self.state.component(n).health != "healthy"
        ]
        link = self.state.mqtt
        if self.config.mqtt is not None and link is not None and link.get("state") != "connected":
            # The daemon's telemetry link is part of the fleet's steady state (a broker outage ends
            # when healer is connected again, not when the broker merely listens).
            problems.append(f"the daemon's MQTT link is {link.get('state')}")
        for check in st.http:
            try:
                with urllib.request.urlopen(check.url, timeout=2) as resp:  # noqa: S310  http(s) only, validated
                    status = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError as exc:
                problems.append(f"{check.url}: {exc}")
                continue
            if status != check.status:
                problems.append(f"{check.url}: status {status}, expected {check.status}")
        return problems

    async def wait_steady(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            await self.poll()
            problems = await asyncio.to_thread(self.steady_problems)
            if not problems or time.monotonic() >= deadline or self._abort.is_set():
                return problems
            await asyncio.sleep(0.2)

    # -- the drill ------------------------------------------------------------------------------------
    async def run(self, report_dir: Path) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.interrupt, sig)
        try:
            return await self._run(report_dir)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if self.store is not None:
                await self.store.close()
            with contextlib.suppress(OSError):
                if not any(self.workdir.iterdir()):
                    self.workdir.rmdir()

    async def _run(self, report_dir: Path) -> int:
        spec = self.drill.spec
        self.out(
            f"» drill {spec.name!r}: {len(self.runs)} fault(s), blast radius {', '.join(sorted(self.radius))}"
        )
        await self.ask({"op": "ping"})
        self.store = await SQLiteEventStore.open(self.config.state_dir, readonly=True)
        self.state = await rebuild_state(self.store)
        before = await self.wait_steady(spec.steady_state.timeout)
        if before or self.interrupted:
            reason = "; ".join(before) if before else self.abort_reason
            self.out(f"» steady state does not hold, nothing injected: {reason}")
            return EXIT_INTERRUPTED if self.interrupted else EXIT_NOT_STEADY
        self.out("» steady state holds")
        await self._platform_checks()
        budget = spec.timeout + 2 * spec.steady_state.timeout + 60
        answer = await self.ask(
            {
                "op": "drill.start",
                "name": spec.name,
                "radius": sorted(self.radius),
                "duration": budget,
                "file": str(self.drill.path),
            }
        )
        self.drill_id = int(answer["drill"])
        self.start_position = int(answer["position"])
        self.started_at = time.time()
        self.out(f"» drill {self.drill_id} recorded at event #{self.start_position}")
        after: list[str] = []
        try:
            await self._inject_and_watch()
        except (HealerError, OSError) as exc:
            self.abort(f"drill machinery failed: {exc}")
        finally:
            await self._revert_all()
        if self.abort_reason is None:
            self.out("» checking the steady state again")
            after = await self.wait_steady(spec.steady_state.timeout)
        await self.poll()
        return await self._finish(after, report_dir)

    async def _inject_and_watch(self) -> None:
        spec = self.drill.spec
        t0 = time.monotonic()
        deadline = t0 + spec.timeout
        pending = [r for r in self.runs if r.status == "pending"]
        while not self._abort.is_set():
            await self.poll()
            if self._abort.is_set():
                break
            now = time.monotonic()
            self._settle(now)
            await self._revert_all(settled_only=True)
            active = sum(1 for r in self.runs if r.status == "injected")
            while pending and now >= t0 + spec.faults[pending[0].index].after:
                if active >= spec.blast_radius.max_concurrent:
                    break
                run = pending.pop(0)
                await self._inject(run)
                if run.status == "injected":
                    active += 1
            if not pending and all(r.status != "injected" for r in self.runs):
                return
            if now >= deadline:
                for r in self.runs:
                    if r.status == "injected":
                        r.status = "failed"
                        r.error = f"not recovered within the drill's timeout ({spec.timeout:g}s)"
                for r in pending:
                    r.status = "skipped"
                    r.skipped_reason = "the drill timed out before its turn"
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._abort.wait(), POLL)

    def _settle(self, now: float) -> None:
        for run in self.runs:
            if run.status != "injected":
                continue
            duration = self.drill.spec.faults[run.index].duration
            if run.recovers:
                if run.resolved_at is not None:
                    # Graded on the daemon's RPO/RTO measurement: wait for it (it follows at once,
                    # when the component has targets or a checkpoint was restored).
                    waited = now - (run.resolved_mono or now)
                    if run.objectives is not None or waited >= OBJECTIVES_GRACE:
                        run.status = "settled"
                elif run.escalated is not None:
                    run.status = "failed"
                    run.error = f"escalated: {run.escalated}"
            elif (
                duration is not None and run.injected_mono is not None and now >= run.injected_mono + duration
            ):
                run.status = "settled"  # held for its duration; reverted below, now

    async def _platform_checks(self) -> None:
        # Known before anything is injected: a fault this platform cannot do is skipped up front.
        for run in self.runs:
            reason = await asyncio.to_thread(platform_reason, run.fault)
            if reason is not None:
                run.status = "skipped"
                run.skipped_reason = reason
                self.out(f"» fault {run.index} ({run.kind} on {run.target}) will be SKIPPED: {reason}")

    async def _inject(self, run: FaultRun) -> None:
        reason = await asyncio.to_thread(run.fault.unavailable)
        if reason is not None:
            run.status = "skipped"
            run.skipped_reason = reason
            self.out(f"» fault {run.index} ({run.kind} on {run.target}) SKIPPED: {reason}")
            return
        ping = await self.ask({"op": "ping"})
        run.position = int(ping["position"])
        # The fault takes effect somewhere inside inject(): time it from just before, so detection
        # and recovery are measured conservatively and never before the fault (the daemon may
        # see a kill before inject() has even returned).
        before_wall, before_mono = time.time(), time.monotonic()
        try:
            run.inject_detail = await asyncio.to_thread(run.fault.inject)
        except Exception as exc:  # any failure to inject aborts the drill (and reverts the rest)
            run.status = "failed"
            run.error = f"could not inject: {exc}"
            self.abort(f"fault {run.index} ({run.kind} on {run.target}) could not be injected: {exc}")
            return
        run.status = "injected"
        run.injected_at = before_wall
        run.injected_mono = before_mono
        self.out(f"» fault {run.index}: {run.kind} on {run.target}: {run.inject_detail}")
        await self._record_fault(run, "injected", run.inject_detail)

    async def _record_fault(self, run: FaultRun, phase: str, detail: str) -> None:
        fault = {"index": run.index, "kind": run.kind, "target": run.target, "detail": detail}
        try:
            await self.ask({"op": "drill.fault", "drill": self.drill_id, "phase": phase, "fault": fault})
        except HealerError as exc:
            self.out(f"  (could not record fault {run.index} {phase}: {exc})")

    async def _revert_all(self, settled_only: bool = False) -> None:
        # A fault held for its duration is reverted as soon as it settles (the outage ends);
        # at the end everything still in place is reverted, newest first.
        for run in reversed(self.runs):
            if run.injected_at is None or run.reverted_at is not None:
                continue
            if settled_only and not (run.status == "settled" and not run.recovers):
                continue
            try:
                run.revert_detail = await asyncio.to_thread(run.fault.revert)
            except Exception as exc:  # one failed revert must not stop the others
                run.revert_detail = f"REVERT FAILED: {exc}"
            run.reverted_at = time.time()
            self.out(f"» reverted fault {run.index} ({run.kind} on {run.target}): {run.revert_detail}")
            await self._record_fault(run, "reverted", run.revert_detail or "")

    # -- grading --------------------------------------------------------------------------------
    def grade(self, after: list[str]) -> tuple[str, list[str], list[dict[str, Any]]]:
        crit = self.drill.spec.criteria
        reasons: list[str] = []
        checks: list[dict[str, Any]] = []

        def check(name: str, ok: bool, detail: str) -> None:
            checks.append({"criterion": name, "passed": ok, "detail": detail})
            if not ok:
                reasons.append(f"{name}: {detail}")

        for run in self.runs:
            label = f"fault {run.index} ({run.kind} on {run.target})"
            if run.status == "skipped":
                checks.append(
                    {"criterion": label, "passed": None, "detail": f"skipped: {run.skipped_reason}"}
                )
                continue
            if run.error is not None:
                check(label, False, run.error)
                continue
            if run.injected_at is None:
                check(label, False, "never injected")
                continue
            if not run.recovers:
                check(label, True, "held for its duration and reverted")
                continue
            if run.resolved_at is None:
                check(f"{label} recovered", False, "healer did not resolve an incident for it")
                continue
            # Graded from the injection (the daemon's own RTO starts at detection: reported too).
            took = run.resolved_at - run.injected_at
            daemon = (run.objectives or {}).get("rto_achieved")
            theirs = (
                f"; the daemon measured {daemon:.2f}s from detection"
                if isinstance(daemon, int | float)
                else ""
            )
            rto = self.rto(run.target)
            if rto is None:
                check(f"{label} RTO", True, f"recovered in {took:.2f}s (no RTO configured){theirs}")
            else:
                ok = took <= rto
                verdict = "within" if ok else "exceeds"
                check(f"{label} RTO", ok, f"recovered in {took:.2f}s, {verdict} the RTO of {rto:g}s{theirs}")
        self._grade_rpo(check, checks)
        dupes = sorted(k for k, n in self.step_keys.items() if n > 1)
        if crit.duplicate_side_effects == "fail" or not dupes:
            check(
                "no duplicated side effects",
                not dupes,
                f"idempotency key(s) started more than once: {', '.join(dupes)}"
                if dupes
                else f"{len(self.step_keys)} action(s), each started once",
            )
        else:
            checks.append({"criterion": "no duplicated side effects", "passed": None, "detail": f"{dupes}"})
        unexpected = [e for e in self.escalations if e[0] not in crit.expect_escalations]
        check(
            "no unexpected escalations",
            not unexpected,
            "; ".join(f"{c} (incident {i}): {r}" for c, i, r in unexpected) or "none",
        )
        if self.abort_reason is None:
            check("steady state after", not after, "; ".join(after) or "holds")
        if self.runs and all(r.status == "skipped" for r in self.runs):
            # Skipped faults are n/a, not passed: a drill that injected nothing graded nothing.
            check("something was drilled", False, "every fault was skipped on this machine")
        if self.abort_reason is not None:
            reasons.insert(0, f"aborted: {self.abort_reason}")
            return "aborted", reasons, checks
        return ("failed" if reasons else "passed"), reasons, checks

    def _grade_rpo(self, check: Callable[[str, bool, str], None], checks: list[dict[str, Any]]) -> None:
        """RPO from the daemon's incident.objectives_measured: the age of the restored checkpoint."""
        measured: set[str] = set()
        for incident, (comp, data) in sorted(self.objectives.items()):
            achieved = data.get("rpo_achieved")
            if not isinstance(achieved, int | float):
                continue  # no checkpoint was restored in this incident: no state was lost to measure
            measured.add(comp)
            target, source = self.rpo(comp, data)
            name = f"{comp} RPO (incident {incident})"
            lost = f"restored a checkpoint {achieved:.2f}s older than the failure"
            if target is None:
                checks.append({"criterion": name, "passed": None, "detail": f"{lost}; no RPO target"})
            else:
                verdict = "within" if achieved <= target else "exceeds"
                check(name, achieved <= target, f"{lost}, {verdict} {source} of {target:g}s")
        for comp in sorted(set(self.drill.spec.criteria.rpo) - measured):
            check(f"{comp} RPO", False, "the drill sets an RPO target but no checkpoint was restored for it")
        if not measured and not self.drill.spec.criteria.rpo:
            checks.append(
                {"criterion": "RPO", "passed": None, "detail": "not measured: no checkpoint was restored"}
            )

    async def _finish(self, after: list[str], report_dir: Path) -> int:
        verdict, reasons, checks = self.grade(after)
        spec = self.drill.spec
        doc = {
            "drill": self.drill_id,
            "name": spec.name,
            "description": spec.description,
            "file": str(self.drill.path),
            "state_dir": str(self.config.state_dir),
            "started_at": self.started_at,
            "finished_at": time.time(),
            "verdict": verdict,
            "reasons": reasons,
            "blast_radius": sorted(self.radius),
            "faults": [r.as_dict(self.rto(r.target)) for r in self.runs],
            "criteria": checks,
            "incidents": sorted(self.incidents),
            "log_positions": [self.start_position, self.state.position],
        }
        paths = write_report(doc, report_dir)
        try:
            await self.ask(
                {
                    "op": "drill.finish",
                    "drill": self.drill_id,
                    "verdict": verdict,
                    "reasons": reasons,
                    "report": str(paths[1]),
                }
            )
        except HealerError as exc:
            self.out(f"» could not record the verdict in the daemon's log: {exc}")
        self.out(f"» drill {spec.name!r} {verdict.upper()}")
        for r in reasons:
            self.out(f"  - {r}")
        self.out(f"» report: {paths[0]} and {paths[1]}")
        if verdict == "passed":
            return EXIT_PASSED
        if verdict == "aborted":
            return EXIT_INTERRUPTED if self.interrupted else EXIT_ABORTED
        return EXIT_FAILED


def dry_run(config: HealerConfig, drill: Drill, out: Callable[[str], None]) -> int:
    """Say what the drill would do; touch nothing (no socket, no store, no process, no file)."""
    spec = drill.spec
    kinds = fault_kinds()
    ctx = FaultContext(config, FleetState, Path(os.devnull))
    out(f"drill {spec.name!r} (dry run: nothing is touched)")
    if spec.description:
        out(f"  {spec.description.strip()}")
    healthy = sorted(config.components) if "*" in spec.steady_state.healthy else spec.steady_state.healthy
    out(
        f"steady state (before and after, waiting up to {spec.steady_state.timeout:g}s): "
        f"healthy {', '.join(healthy)}"
    )
    for c in spec.steady_state.http:
        out(f"  and {c.url} answers {c.status}")
    br = spec.blast_radius
    out(
        f"blast radius: {', '.join(br.components)}; at most {br.max_concurrent} fault(s) at once; "
        + (
            "a failure outside it aborts the drill"
            if br.abort_on_outside_failure
            else "no abort on outside failure"
        )
    )
    for i, (fs, params) in enumerate(zip(spec.faults, drill.params, strict=True)):
        fault = kinds[fs.kind](fs, params, ctx)
        recovers = expects_recovery(kinds, fs)
        rto = spec.criteria.rto.get(fs.target or "") or (
            config.components[fs.target].rto if fs.target in config.components else None
        )
        then = (
            f"expect healer to recover it within {rto:g}s (RTO)"
            if recovers and rto is not None
            else "expect healer to recover it"
            if recovers
            else f"hold {fs.duration:g}s, then revert"
        )
        out(f"fault {i} at +{fs.after:g}s: {fault.describe()}; {then}")
        reason = platform_reason(fault)
        if reason is not None:
            out(f"  would be SKIPPED on this machine: {reason}")
    out(
        f"timeout {spec.timeout:g}s; escalations expected: "
        f"{', '.join(spec.criteria.expect_escalations) or 'none'}"
    )
    out(
        f"would record the drill in {config.state_dir} through the daemon's control socket and write a report"
    )
    return EXIT_PASSED


def platform_reason(fault: Any) -> str | None:
    hook = getattr(type(fault), "platform_unavailable", None)
    if not callable(hook):
        return None
    try:
        reason = hook(fault.params)
    except Exception as exc:  # a plugin's broken check must not take the drill down with it
        return f"its platform check failed: {type(exc).__name__}: {exc}"
    return None if reason is None else str(reason)


def run(config_path: Path, drill_path: Path, *, dry: bool, report_dir: Path | None) -> int:
    from healer.cli import load_checked_config

    config = load_checked_config(config_path)
    drill = load_drill(drill_path, config)
    out = _printer()
    if dry:
        return dry_run(config, drill, out)
    runner = Runner(config, drill, out)
    return asyncio.run(runner.run(report_dir or Path("drill-reports")))


def _printer() -> Callable[[str], None]:
    def out(line: str) -> None:
        print(line, flush=True)

    return out
