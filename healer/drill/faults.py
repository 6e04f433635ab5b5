"""Faults a drill injects. Each is reversible and undone when the drill ends, aborts or is
interrupted; the runner calls ``revert`` for every fault it injected, whatever happened.

A fault class (built-in here, or a plugin in the ``healer.faults`` entry-point group) has:

- ``kind``: its name in drill files (the entry point's name);
- ``recovers``: whether healer is expected to open an incident on the target and resolve it
  (a fault that is not needs a ``duration`` in the drill file);
- ``Params``: a pydantic model of its own parameters (validated with file:line positions);
- ``__init__(spec, params, ctx)``; ``describe()`` (the dry-run line); ``unavailable()`` (a reason
  to skip on this platform, or None); ``inject()`` and ``revert()``, which return what they did.
  ``check(spec, params, config)`` (a classmethod, optional) adds validation against the config;
  ``platform_unavailable(params)`` (a classmethod, optional) is the part of ``unavailable`` that
  does not depend on the target: checked up front, and by ``--dry-run``, without side effects.

Processes are identified by pid *and* start time from the daemon's log, so a fault never
signals a process that merely reused a pid.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
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

from healer.config import HealerConfig, Name
from healer.dr.store import Checkpoint, CheckpointError, CheckpointStore
from healer.errors import HealerError
from healer.fsutil import atomic_write
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
    # crash: SIGKILL, the broker vanishes. graceful: SIGTERM, and the broker publishes every
    # connected client's last will as it closes their connections (agents look offline).
    stop: Literal["crash", "graceful"] = "crash"


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
        how = "kill (SIGKILL)" if self.params.stop == "crash" else "stop (SIGTERM)"
        return f"{how} the MQTT broker on port {port} for {self.spec.duration:g}s, then start it again"

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
        if self.params.stop == "crash":
            proc.kill()
        else:
            proc.terminate()
        if not _gone(proc, 5):
            proc.kill()
            if not _gone(proc, 5):
                raise FaultError(f"broker pid {proc.pid} did not stop")
        return f"broker pid {proc.pid} {'killed' if self.params.stop == 'crash' else 'stopped'}"

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


def _gone(proc: psutil.Process, timeout: float) -> bool:
    """Exited (a zombie counts: its parent, not the drill, reaps it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


class CheckpointParams(NoParams):
    # latest: the checkpoint the agent resumes from (HEAD; the newest when there is no HEAD).
    checkpoint: str = Field(
        default="latest", pattern=r"^(latest|seq:[0-9]{1,12}|label:[A-Za-z0-9][A-Za-z0-9._-]{0,63})$"
    )
    agent: Name | None = None  # the agent whose checkpoint it is (default: the target component)
    mode: Literal["flip", "truncate"] = "flip"


@dataclass
class _SavedBlob:
    cp: Checkpoint
    blob: Path
    backup: Path
    mode: int
    times: tuple[int, int]  # atime, mtime (ns)
    damaged_sha: str
    clean: list[tuple[str, int]]  # checkpoints sharing the blob that were not marked corrupt before


class CorruptCheckpointFault(_Base):
    """Damage one checkpoint of the DR store (:mod:`healer.dr.store`); put the exact bytes back on revert.

    The store is content-addressed: the fault flips a byte in (or truncates) the checkpoint's
    blob, after copying it into the drill's private directory. Revert writes the copy back
    atomically with its mode and times, checks it hashes to the manifest's sha256 again, and
    removes the corrupt marks the damage caused (``healer checkpoint verify``, or the daemon's
    restore, marks a checkpoint that fails its re-hash), so the checkpoint verifies as before
    the drill. A blob something else replaced meanwhile is left alone (the report says so).
    """

    kind = "corrupt_checkpoint"
    recovers = False
    Params = CheckpointParams

    def __init__(self, spec: Any, params: Any, ctx: FaultContext) -> None:
        super().__init__(spec, params, ctx)
        self._saved: _SavedBlob | None = None

    @property
    def agent(self) -> str:
        return str(self.params.agent or self.target)

    def describe(self) -> str:
        p = self.params
        return f"{p.mode} the {p.checkpoint} checkpoint of agent {self.agent} (the exact bytes are restored)"

    def store(self) -> CheckpointStore:
        return CheckpointStore.in_state_dir(self.ctx.config.state_dir)

    def _resolve(self, store: CheckpointStore) -> Checkpoint:
        cps = store.list(self.agent)
        if not cps:
            raise FaultError(f"agent {self.agent} has no checkpoint in {store.root}")
        want = str(self.params.checkpoint)
        if want == "latest":
            head = store.head(self.agent)
            return store.get(self.agent, head) if head is not None else cps[-1]
        if want.startswith("seq:"):
            return store.get(self.agent, int(want[4:]))
        named = [c for c in cps if c.label == want[6:]]
        if not named:
            raise FaultError(f"agent {self.agent} has no checkpoint labelled {want[6:]!r}")
        return named[-1]

    def inject(self) -> str:
        store = self.store()
        try:
            cp = self._resolve(store)
            reason = store.corrupt_reason(cp)
            blob = store.blob_path(cp.sha256)
            original = blob.read_bytes()
        except (CheckpointError, OSError) as exc:
            raise FaultError(f"{self.agent}: {exc}") from exc
        if reason is not None or hashlib.sha256(original).hexdigest() != cp.sha256:
            # Damaging what is already damaged grades nothing, and "restoring" it would be a lie.
            raise FaultError(f"{self.agent}#{cp.seq} is already corrupt ({reason or 'hash mismatch'})")
        clean = [
            (c.agent, c.seq)
            for a in store.agents()
            for c in store.list(a)
            if c.sha256 == cp.sha256 and store.corrupt_reason(c) is None
        ]
        st = blob.stat()
        backup = self.ctx.workdir / f"checkpoint-{self.agent}-{cp.seq}-{cp.sha256[:16]}"
        atomic_write(backup, original)
        if self.params.mode == "truncate" or not original:
            damaged = original[: len(original) // 2]
        else:
            mid = len(original) // 2
            damaged = original[:mid] + bytes([original[mid] ^ 0xFF]) + original[mid + 1 :]
        self._saved = _SavedBlob(
            cp,
            blob,
            backup,
            stat.S_IMODE(st.st_mode),
            (st.st_atime_ns, st.st_mtime_ns),
            hashlib.sha256(damaged).hexdigest(),
            clean,
        )
        atomic_write(blob, damaged, mode=stat.S_IMODE(st.st_mode))
        return f"{self.params.mode} {self.agent}#{cp.seq} (blob {blob}; original kept at {backup})"

    def revert(self) -> str:
        s = self._saved
        if s is None:
            return "nothing was corrupted"
        store = self.store()
        name = f"{s.cp.agent}#{s.cp.seq}"
        try:
            current: str | None = hashlib.sha256(s.blob.read_bytes()).hexdigest()
        except FileNotFoundError:
            current = None
        if current is None and not any(
            c.sha256 == s.cp.sha256 for a in store.agents() for c in store.list(a)
        ):
            s.backup.unlink()
            return f"{name} was removed meanwhile (retention): nothing to restore"
        if current not in (s.damaged_sha, s.cp.sha256, None):
            return f"the blob of {name} was replaced meanwhile; left as it is (original at {s.backup})"
        original = s.backup.read_bytes()
        if hashlib.sha256(original).hexdigest() != s.cp.sha256:
            raise FaultError(f"the drill's copy of {name} at {s.backup} no longer matches its sha256")
        atomic_write(s.blob, original, mode=s.mode)
        os.utime(s.blob, ns=s.times)
        cleared = []
        for agent, seq in s.clean:
            with contextlib.suppress(CheckpointError):
                if store.clear_corrupt(store.get(agent, seq)):
                    cleared.append(f"{agent}#{seq}")
        s.backup.unlink()
        self._saved = None
        marks = f"; corrupt marks it caused removed: {', '.join(cleared)}" if cleared else ""
        return f"{name} restored (sha256 {s.cp.sha256[:12]}... verified){marks}"


class DelayParams(NoParams):
    delay_ms: int = Field(ge=1, le=60_000)
    jitter_ms: int = Field(default=0, ge=0, le=60_000)
    interface: str = Field(default="lo", pattern=r"^[A-Za-z0-9_.-]{1,15}$")


class DropParams(NoParams):
    percent: float = Field(gt=0, le=100)
    # Only this interface of the target's namespace (default: all of them, loopback included).
    interface: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,15}$")


class _NetFault(_Base):
    """Shape the traffic of a component that runs in a network namespace of its own.

    Applied inside that namespace only (never to the host's interfaces): the drill opens the
    namespace (``/proc/PID/ns/net``) at injection and keeps it open until revert, so the revert
    reaches the same namespace even if healer replaced the process meanwhile. Whether the
    platform can do it at all (tools, CAP_NET_ADMIN/CAP_SYS_ADMIN, the kernel feature) is probed
    up front in a throwaway namespace (``unshare -n``), which ``--dry-run`` reports too.
    """

    recovers = False
    tools: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: Any, params: Any, ctx: FaultContext) -> None:
        super().__init__(spec, params, ctx)
        self._ns: int | None = None  # an open fd on the target's network namespace
        self._where = ""

    @classmethod
    def probe_argv(cls) -> list[str]:
        """A command that works only if the kernel can do this fault (run in a fresh namespace)."""
        raise NotImplementedError

    @classmethod
    def platform_unavailable(cls, params: Any = None) -> str | None:
        return _platform_reason(cls.kind, cls.tools, tuple(cls.probe_argv()))

    def unavailable(self) -> str | None:
        reason = self.platform_unavailable(self.params)
        if reason is not None:
            return reason
        try:
            proc = target_process(self.ctx, self.target)
            theirs = os.readlink(f"/proc/{proc.pid}/ns/net")
            ours = os.readlink("/proc/self/ns/net")
        except (FaultError, OSError) as exc:
            return f"cannot inspect {self.target}'s network namespace: {exc}"
        if theirs == ours:
            return (
                f"{self.target} shares the host's network namespace: shaping its traffic would "
                "shape everyone's (run it in its own, e.g. `ip netns exec NS ...` or `unshare -n`)"
            )
        return None

    def _in_ns(self, *argv: str, stdin: str | None = None) -> None:
        assert self._ns is not None
        cmd = ["nsenter", f"--net=/proc/{os.getpid()}/fd/{self._ns}", *argv]
        done = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=10, check=False, pass_fds=(self._ns,)
        )
        if done.returncode != 0:
            raise FaultError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")

    def _apply(self) -> str:
        raise NotImplementedError

    def _remove(self) -> None:
        raise NotImplementedError

    def inject(self) -> str:
        proc = target_process(self.ctx, self.target)
        theirs = os.readlink(f"/proc/{proc.pid}/ns/net")
        if theirs == os.readlink("/proc/self/ns/net"):
            raise FaultError(f"{self.target} shares the host's network namespace; not shaping it")
        self._ns = os.open(f"/proc/{proc.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._where = f"pid {proc.pid}'s network namespace ({theirs})"
        try:
            what = self._apply()
        except BaseException:
            os.close(self._ns)
            self._ns = None
            raise
        return f"{what} in {self._where}"

    def revert(self) -> str:
        if self._ns is None:
            return "nothing was shaped"
        try:
            self._remove()
        finally:
            os.close(self._ns)
            self._ns = None
        return f"removed from {self._where}"


class NetworkDelayFault(_NetFault):
    """``tc qdisc ... netem delay`` on an interface of the target's namespace."""

    kind = "network_delay"
    Params = DelayParams
    tools = ("tc", "nsenter", "unshare")

    @classmethod
    def probe_argv(cls) -> list[str]:
        return ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]

    def describe(self) -> str:
        return f"delay {self.target}'s traffic by {self.params.delay_ms} ms for {self.spec.duration:g}s"

    def _netem(self) -> list[str]:
        jitter = [f"{self.params.jitter_ms}ms"] if self.params.jitter_ms else []
        return ["delay", f"{self.params.delay_ms}ms", *jitter]

    def _apply(self) -> str:
        dev = self.params.interface
        self._in_ns("tc", "qdisc", "add", "dev", dev, "root", "netem", *self._netem())
        return f"netem {' '.join(self._netem())} on {dev}"

    def _remove(self) -> None:
        self._in_ns("tc", "qdisc", "del", "dev", self.params.interface, "root")


class NetworkDropFault(_NetFault):
    """Drop a share of the target's packets, both ways, with an nftables table of the drill's own.

    The table lives in the target's namespace and holds nothing but the drill's two rules; revert
    deletes that table, which leaves every other rule of the namespace exactly as it was.
    """

    kind = "network_drop"
    Params = DropParams
    tools = ("nft", "nsenter", "unshare")

    def __init__(self, spec: Any, params: Any, ctx: FaultContext) -> None:
        super().__init__(spec, params, ctx)
        self.table = f"healer_drill_{os.getpid()}_{secrets.token_hex(4)}"

    @classmethod
    def probe_argv(cls) -> list[str]:
        return ["nft", "add", "table", "inet", "healer_drill_probe"]

    def describe(self) -> str:
        where = f" on {self.params.interface}" if self.params.interface else ""
        return f"drop {self.params.percent:g}% of {self.target}'s packets{where} for {self.spec.duration:g}s"

    def ruleset(self) -> str:
        # numgen picks per packet: percent in hundredths, so 0.5% and 100% are both exact.
        share = round(float(self.params.percent) * 100)
        sample = f"numgen random mod 10000 < {share} " if share < 10000 else ""
        dev = self.params.interface
        chains = []
        for chain, hook, match in (("in", "input", "iifname"), ("out", "output", "oifname")):
            only = f'{match} "{dev}" ' if dev else ""
            chains.append(
                f"  chain {chain} {{ type filter hook {hook} priority -300; policy accept; "
                f"{only}{sample}drop; }}"
            )
        return f"table inet {self.table} {{\n" + "\n".join(chains) + "\n}\n"

    def _apply(self) -> str:
        self._in_ns("nft", "-f", "-", stdin=self.ruleset())  # one transaction: all of it or nothing
        return f"nftables table inet {self.table} dropping {self.params.percent:g}%"

    def _remove(self) -> None:
        self._in_ns("nft", "delete", "table", "inet", self.table)


@functools.cache
def _platform_reason(kind: str, tools: tuple[str, ...], probe: tuple[str, ...]) -> str | None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed"
    if not (_has_cap(12) and _has_cap(21)):
        return "this user lacks CAP_NET_ADMIN and CAP_SYS_ADMIN (to enter a component's network namespace)"
    argv = [shutil.which("unshare") or "unshare", "--net", *probe]  # a namespace gone when it exits
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot probe the kernel: {exc}"
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        return f"the kernel cannot do {kind} here: `{' '.join(probe)}` fails in a fresh namespace ({why})"
    return None


def _has_cap(bit: int) -> bool:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
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
