"""Faults a drill injects. Each is reversible and undone when the drill ends, aborts or is
interrupted; the runner calls ``revert`` for every fault it injected, whatever happened.

A fault class (built-in here, or a plugin in the ``healer.faults`` entry-point group) has:

- ``kind``: its name in drill files (the entry point's name);
- ``recovers``: whether healer is expected to open an incident on the target and resolve it
  (a fault that is not needs a ``duration`` in the drill file);
- ``Params``: a pydantic model of its own parameters (validated with file:line positions);
- ``__init__(spec, params, ctx)``; ``describe()`` (the dry-run line); ``unavailable()`` (a reason
  to skip on this platform, or None); ``inject()`` and ``revert()``, which return what they did.
  ``check(spec, params, config)`` (a classmethod, optional) adds validation against the config.

Processes are identified by pid *and* start time from the daemon's log, so a fault never
signals a process that merely reused a pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import psutil
from pydantic import BaseModel, ConfigDict, Field

from healer.config import HealerConfig
from healer.errors import HealerError
from healer.knowledge.projections import FleetState

log = logging.getLogger(__name__)

GROUP = "healer.faults"
Problems = list[tuple[tuple[str | int, ...], str]]


class FaultError(HealerError):
    """A fault could not be injected or reverted."""


@dataclass
class FaultContext:
    config: HealerConfig
    state: Callable[[], FleetState]  # the latest snapshot the runner folded from the log
    workdir: Path  # private (0700) directory for backups the drill restores


class Fault(Protocol):
    kind: ClassVar[str]
    recovers: ClassVar[bool]
    Params: ClassVar[type[BaseModel]]

    def describe(self) -> str: ...

    def unavailable(self) -> str | None: ...

    def inject(self) -> str: ...

    def revert(self) -> str: ...


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def target_process(ctx: FaultContext, component: str) -> psutil.Process:
    """The component's current process as the daemon recorded it (pid + start time)."""
    comp = ctx.state().components.get(component)
    if comp is None or not comp.process_running or comp.pid is None:
        raise FaultError(f"{component}: the daemon's log shows no running process for it")
    try:
        proc = psutil.Process(comp.pid)
        created = proc.create_time()
    except psutil.Error as exc:
        raise FaultError(f"{component}: process {comp.pid} is gone ({exc})") from exc
    if comp.pid_create_time is not None and abs(created - comp.pid_create_time) > 0.05:
        raise FaultError(f"{component}: pid {comp.pid} now belongs to another process; not touching it")
    return proc


def _same(pid: int, created: float) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) <= 0.05 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except psutil.Error:
        pass
    return None


class _Base:
    kind: ClassVar[str] = ""
    recovers: ClassVar[bool] = True
    needs_target: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, spec: Any, params: Any, ctx: FaultContext) -> None:
        self.spec = spec
        self.params = params
        self.ctx = ctx

    @property
    def target(self) -> str:
        return str(self.spec.target or "the fleet")

    def unavailable(self) -> str | None:
        return None


class KillFault(_Base):
    """SIGKILL the target's process. Nothing to undo: bringing it back is healer's job."""

    kind = "kill"

    def describe(self) -> str:
        return f"send SIGKILL to {self.target}'s process"

    def inject(self) -> str:
        proc = target_process(self.ctx, self.target)
        proc.send_signal(signal.SIGKILL)
        return f"SIGKILL to pid {proc.pid}"

    def revert(self) -> str:
        return "nothing to undo (healer restarts the process)"


class _Freeze(_Base):
    """SIGSTOP the target's process, SIGCONT it on revert if that same process still exists."""

    def __init__(self, spec: Any, params: Any, ctx: FaultContext) -> None:
        super().__init__(spec, params, ctx)
        self._frozen: tuple[int, float] | None = None

    def inject(self) -> str:
        proc = target_process(self.ctx, self.target)
        self._frozen = (proc.pid, proc.create_time())
        proc.send_signal(signal.SIGSTOP)
        return f"SIGSTOP to pid {proc.pid}"

    def revert(self) -> str:
        if self._frozen is None:
            return "nothing was frozen"
        pid, created = self._frozen
        proc = _same(pid, created)
        if proc is None:
            return f"pid {pid} is gone (healer replaced it); nothing to resume"
        proc.send_signal(signal.SIGCONT)
        return f"SIGCONT to pid {pid}"


class HangFault(_Freeze):
    """Freeze the target (SIGSTOP): it stops answering but does not exit, like a hang."""

    kind = "hang"

    def describe(self) -> str:
        return f"send SIGSTOP to {self.target}'s process (SIGCONT on revert)"


class DependencyOutageFault(_Freeze):
    """Take a dependency down for ``duration`` (SIGSTOP), then bring it back (SIGCONT).

    Graded on its dependents: they must be judged symptoms and be healthy again afterwards.
    """

    kind = "dependency_outage"
    recovers = False

    def describe(self) -> str:
        return f"stop dependency {self.target} (SIGSTOP) for {self.spec.duration:g}s, then SIGCONT"

    @classmethod
    def check(cls, spec: Any, params: Any, config: HealerConfig) -> Problems:
        users = [n for n, c in config.components.items() if spec.target in c.depends_on]
        if not users:
            return [(("target",), f"{spec.target!r} is no component's dependency (no depends_on names it)")]
        return []


class CpuParams(NoParams):
    workers: int = Field(default=1, ge=1, le=256)


class MemoryParams(NoParams):
    megabytes: int = Field(ge=1, le=65536)


class _Pressure(_Base):
    """A separate process beside the target, on the target's CPUs, burning CPU or holding memory."""

    recovers = False

    def __init__(self, spec: Any, params: Any, ctx: FaultContext) -> None:
        super().__init__(spec, params, ctx)
        self._proc: subprocess.Popen[bytes] | None = None

    def _args(self) -> list[str]:
        raise NotImplementedError

    def inject(self) -> str:
        target = target_process(self.ctx, self.target)
        limit = (self.spec.duration or 3600.0) + 60.0
        argv = [
            sys.executable,
            "-m",
            "healer.drill.hog",
            *self._args(),
            "--parent",
            str(os.getpid()),
            "--max-seconds",
            str(limit),
        ]
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._proc = proc
        with contextlib.suppress(psutil.Error, OSError):
            os.sched_setaffinity(proc.pid, target.cpu_affinity() or [])
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready": the memory is resident, the workers run
        return f"pressure process pid {proc.pid} beside pid {target.pid}"

    def revert(self) -> str:
        proc = self._proc
        if proc is None:
            return "nothing was started"
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        return f"pressure process pid {proc.pid} stopped"


class CpuPressureFault(_Pressure):
    kind = "cpu_pressure"
    Params = CpuParams

    def describe(self) -> str:
        return f"burn {self.params.workers} CPU(s) beside {self.target} for {self.spec.duration:g}s"

    def _args(self) -> list[str]:
        return ["--cpu", str(self.params.workers)]


class MemoryPressureFault(_Pressure):
    kind = "memory_pressure"
    Params = MemoryParams

    def describe(self) -> str:
        return f"hold {self.params.megabytes} MB beside {self.target} for {self.spec.duration:g}s"

    def _args(self) -> list[str]:
        return ["--memory-mb", str(self.params.megabytes)]


class BrokerParams(NoParams):
    match: str = Field(default="mosquitto", min_length=1)  # the broker's cmdline must contain this
    restart_timeout: float = Field(default=10.0, gt=0, le=120)


class BrokerOutageFault(_Base):
    """Stop the MQTT broker the daemon uses (on loopback, run by this user), start it again on revert.

    The broker is found by the port in the config's ``mqtt`` section; it must be a process of
    the drill's own user whose command line contains ``match`` — a drill never stops a broker
    it could not start again with the same command.
    """

    kind = "broker_outage"
    recovers = False
    needs_target = False  # the whole fleet's telemetry link
    Params = BrokerParams

    def __init__(self, spec: Any, params: Any, ctx: FaultContext) -> None:
        super().__init__(spec, params, ctx)
        self._restart: tuple[list[str], str] | None = None

    @classmethod
    def check(cls, spec: Any, params: Any, config: HealerConfig) -> Problems:
        if config.mqtt is None:
            return [(("kind",), "broker_outage needs the config's mqtt section (which broker to stop)")]
        if config.mqtt.host not in ("127.0.0.1", "localhost", "::1"):
            return [(("kind",), f"broker_outage only stops a local broker, not {config.mqtt.host}")]
        return []

    def describe(self) -> str:
        port = self.ctx.config.mqtt.port if self.ctx.config.mqtt else "?"
        return f"stop the MQTT broker on port {port} for {self.spec.duration:g}s, then start it again"

    def _broker(self) -> psutil.Process:
        assert self.ctx.config.mqtt is not None
        port = self.ctx.config.mqtt.port
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                proc = psutil.Process(conn.pid)
                if proc.uids().real != os.getuid():
                    raise FaultError(f"the broker on port {port} is not this user's process")
                if not any(self.params.match in part for part in proc.cmdline()):
                    raise FaultError(f"the process on port {port} is not a {self.params.match} broker")
                return proc
        raise FaultError(f"no broker listens on port {port}")

    def inject(self) -> str:
        proc = self._broker()
        self._restart = (proc.cmdline(), proc.cwd())
        proc.terminate()
        try:
            proc.wait(5)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        return f"broker pid {proc.pid} stopped"

    def revert(self) -> str:
        if self._restart is None:
            return "nothing was stopped"
        argv, cwd = self._restart
        assert self.ctx.config.mqtt is not None
        port = self.ctx.config.mqtt.port
        new = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + self.params.restart_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return f"broker started again, pid {new.pid}"
            if new.poll() is not None:
                raise FaultError(f"the broker did not start again (exit status {new.returncode})")
            time.sleep(0.05)
        raise FaultError(f"the broker did not listen on port {port} within {self.params.restart_timeout:g}s")


class CheckpointParams(NoParams):
    checkpoint: str = Field(default="latest", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    mode: Literal["flip", "truncate"] = "flip"


class CorruptCheckpointFault(_Base):
    """Corrupt the target's latest (or named) checkpoint; restore the original bytes on revert.

    Works on the checkpoint layout of the ``checkpoint_restore`` actuator
    (``STATE_DIR/checkpoints/AGENT/NAME/{manifest.json,data}``). The original is copied into
    the drill's private directory first; revert puts it back atomically, unless something else
    replaced the file meanwhile (then that newer file is left alone and the report says so).
    """

    kind = "corrupt_checkpoint"
    recovers = False
    Params = CheckpointParams

    def __init__(self, spec: Any, params: Any, ctx: FaultContext) -> None:
        super().__init__(spec, params, ctx)
        self._saved: tuple[Path, Path, str] | None = None  # data file, backup, corrupted sha256

    def describe(self) -> str:
        p = self.params
        return f"{p.mode} the {p.checkpoint} checkpoint of {self.target} (a copy is restored)"

    def _resolve(self) -> Path:
        base: Path = self.ctx.config.state_dir / "checkpoints" / self.target
        if self.params.checkpoint != "latest":
            found: Path = base / str(self.params.checkpoint) / "data"
            if not found.is_file():
                raise FaultError(f"{self.target}: no checkpoint {self.params.checkpoint!r} in {base}")
            return found
        newest: tuple[float, Path] | None = None
        for manifest in base.glob("*/manifest.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                created = float(json.loads(manifest.read_text())["created_at"])
                if newest is None or created > newest[0]:
                    newest = (created, manifest.parent / "data")
        if newest is None or not newest[1].is_file():
            raise FaultError(f"{self.target}: no checkpoint in {base}")
        return newest[1]

    def inject(self) -> str:
        data = self._resolve()
        original = data.read_bytes()
        backup = self.ctx.workdir / f"checkpoint-{self.target}-{data.parent.name}"
        _write_private(backup, original)
        if self.params.mode == "truncate" or not original:
            damaged = original[: len(original) // 2]
        else:
            mid = len(original) // 2
            damaged = original[:mid] + bytes([original[mid] ^ 0xFF]) + original[mid + 1 :]
        _write_private(data, damaged)
        self._saved = (data, backup, hashlib.sha256(damaged).hexdigest())
        return f"{self.params.mode} {data} (original kept at {backup})"

    def revert(self) -> str:
        if self._saved is None:
            return "nothing was corrupted"
        data, backup, damaged_sha = self._saved
        try:
            current = hashlib.sha256(data.read_bytes()).hexdigest()
        except OSError:
            current = None
        if current not in (damaged_sha, None):
            return f"{data} was replaced meanwhile; left as it is (original at {backup})"
        _write_private(data, backup.read_bytes())
        backup.unlink()
        return f"{data} restored"


def _write_private(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.drill-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class DelayParams(NoParams):
    delay_ms: int = Field(ge=1, le=60_000)
    jitter_ms: int = Field(default=0, ge=0, le=60_000)
    interface: str = Field(default="lo", pattern=r"^[A-Za-z0-9_.-]{1,15}$")


class DropParams(NoParams):
    percent: float = Field(gt=0, le=100)
    interface: str = Field(default="lo", pattern=r"^[A-Za-z0-9_.-]{1,15}$")


class _Netem(_Base):
    """``tc netem`` inside the target's own network namespace, so nothing else is shaped.

    Only possible when the component runs in a network namespace of its own (not the host's)
    and the drill may administer it (CAP_NET_ADMIN, ``nsenter`` and ``tc`` installed);
    otherwise the fault is skipped with the reason, never applied to the host's interfaces.
    """

    recovers = False

    def __init__(self, spec: Any, params: Any, ctx: FaultContext) -> None:
        super().__init__(spec, params, ctx)
        self._pid: int | None = None

    def _netem(self) -> list[str]:
        raise NotImplementedError

    def unavailable(self) -> str | None:
        missing = [tool for tool in ("tc", "nsenter") if shutil.which(tool) is None]
        if missing:
            return f"{' and '.join(missing)} not installed"
        if not _has_net_admin():
            return "this user lacks CAP_NET_ADMIN"
        try:
            proc = target_process(self.ctx, self.target)
            theirs = os.readlink(f"/proc/{proc.pid}/ns/net")
            ours = os.readlink("/proc/self/ns/net")
        except (FaultError, OSError) as exc:
            return f"cannot inspect {self.target}'s network namespace: {exc}"
        if theirs == ours:
            return (
                f"{self.target} shares the host's network namespace: shaping its traffic would "
                "shape everyone's (run it in its own namespace, e.g. under `unshare -n`)"
            )
        return None

    def _tc(self, pid: int, *args: str) -> None:
        argv = ["nsenter", "-t", str(pid), "-n", "tc", "qdisc", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            raise FaultError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")

    def inject(self) -> str:
        proc = target_process(self.ctx, self.target)
        self._tc(proc.pid, "add", "dev", self.params.interface, "root", "netem", *self._netem())
        self._pid = proc.pid
        return f"netem {' '.join(self._netem())} on {self.params.interface} in pid {proc.pid}'s namespace"

    def revert(self) -> str:
        if self._pid is None:
            return "nothing was shaped"
        try:
            self._tc(self._pid, "del", "dev", self.params.interface, "root")
        except (FaultError, OSError) as exc:
            return f"netem not removed ({exc}); the namespace may be gone with its process"
        return "netem removed"


class NetworkDelayFault(_Netem):
    kind = "network_delay"
    Params = DelayParams

    def describe(self) -> str:
        return f"delay {self.target}'s traffic by {self.params.delay_ms} ms for {self.spec.duration:g}s"

    def _netem(self) -> list[str]:
        jitter = [f"{self.params.jitter_ms}ms"] if self.params.jitter_ms else []
        return ["delay", f"{self.params.delay_ms}ms", *jitter]


class NetworkDropFault(_Netem):
    kind = "network_drop"
    Params = DropParams

    def describe(self) -> str:
        return f"drop {self.params.percent:g}% of {self.target}'s packets for {self.spec.duration:g}s"

    def _netem(self) -> list[str]:
        return ["loss", f"{self.params.percent:g}%"]


def _has_net_admin() -> bool:
    cap_net_admin = 12
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap_net_admin & 1)
    return False


BUILTINS: dict[str, type[Any]] = {
    cls.kind: cls
    for cls in (
        KillFault,
        HangFault,
        CpuPressureFault,
        MemoryPressureFault,
        DependencyOutageFault,
        BrokerOutageFault,
        CorruptCheckpointFault,
        NetworkDelayFault,
        NetworkDropFault,
    )
}


def check_fault_class(obj: Any, name: str) -> list[str]:
    problems = []
    if getattr(obj, "kind", None) != name:
        problems.append(f"declares kind {getattr(obj, 'kind', None)!r} but is registered as {name!r}")
    if not isinstance(getattr(obj, "recovers", None), bool):
        problems.append("has no 'recovers' boolean")
    params = getattr(obj, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        problems.append("has no 'Params' pydantic model")
    for hook in ("describe", "unavailable", "inject", "revert"):
        if not callable(getattr(obj, hook, None)):
            problems.append(f"has no {hook}()")
    return problems


def fault_kinds() -> dict[str, type[Any]]:
    """Built-in faults plus every valid ``healer.faults`` plugin (a broken one is logged, skipped)."""
    kinds = dict(BUILTINS)
    for ep in entry_points(group=GROUP):
        if ep.name in BUILTINS and ep.value.startswith("healer.drill.faults:"):
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break every drill
            log.warning("fault plugin %s (%s) refused: cannot import: %s", ep.name, ep.value, exc)
            continue
        problems = check_fault_class(obj, ep.name)
        if ep.name in BUILTINS:
            problems.append("shadows a built-in fault")
        if problems:
            log.warning("fault plugin %s (%s) refused: %s", ep.name, ep.value, "; ".join(problems))
            continue
        kinds[ep.name] = obj
    return kinds
