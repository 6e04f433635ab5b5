"""Processes healer starts itself: spawn without a shell, watch exits through pidfd.

The kernel makes a pidfd readable the moment its process exits, so exit detection costs
no polling and takes well under a millisecond. The supervisor sits below the stages: Monitor
learns of exits from it, and Execute's ``process`` actuator starts and stops through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from healer.config import CommandConfig
from healer.errors import ActuatorError

log = logging.getLogger(__name__)

# (kind, component, data): kind is "started", "adopted" or "exited"
ProcessListener = Callable[[str, str, dict[str, Any]], None]


@dataclass
class _Proc:
    component: str
    pid: int
    create_time: float
    pidfd: int
    popen: subprocess.Popen[bytes] | None  # None for a process adopted after a daemon restart
    exited: asyncio.Future[dict[str, Any]]
    started_mono: float  # psutil's create_time is only as exact as the boot time: measure ourselves
    stopping: bool = False


ENV_COMPONENT = "HEALER_SUPERVISED_COMPONENT"
ENV_INSTANCE = "HEALER_SUPERVISOR_INSTANCE"
ENV_ACTION_KEY = "HEALER_ACTION_KEY"


@dataclass
class Supervisor:
    commands: Mapping[str, CommandConfig]
    log_dir: Path
    listener: ProcessListener
    instance: str = ""  # identifies this daemon's fleet (its state directory) in children's env
    _procs: dict[str, _Proc] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def supervises(self, component: str) -> bool:
        return component in self.commands

    def pid(self, component: str) -> int | None:
        proc = self._procs.get(component)
        return proc.pid if proc is not None and not proc.exited.done() else None

    def uptime(self, component: str) -> float | None:
        proc = self._procs.get(component)
        if proc is None or proc.exited.done():
            return None
        return time.monotonic() - proc.started_mono

    def lock(self, component: str) -> asyncio.Lock:
        return self._locks.setdefault(component, asyncio.Lock())

    # -- starting ---------------------------------------------------------------------------
    def start(
        self, component: str, *, restart: bool = False, action_key: str | None = None
    ) -> dict[str, Any]:
        cmd = self.commands.get(component)
        if cmd is None:
            raise ActuatorError(f"component {component!r} has no command: healer does not supervise it")
        if self.pid(component) is not None:
            raise ActuatorError(f"component {component!r} is already running (pid {self.pid(component)})")
        env = dict(os.environ) if cmd.inherit_env else {}
        env.update(cmd.env)
        # Marks the process as ours, so a daemon restarted after dying between spawning it and
        # recording the spawn can still find and adopt it instead of starting a second copy.
        env[ENV_COMPONENT] = component
        env[ENV_INSTANCE] = self.instance
        if action_key is not None:
            env[ENV_ACTION_KEY] = action_key  # which recorded action started it: for audits
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        logfd = os.open(self.log_dir / f"{component}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            popen = subprocess.Popen(  # argv list, never a shell
                cmd.argv,
                cwd=cmd.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logfd,
                stderr=logfd,
                start_new_session=True,  # its own process group: stop reaches its children too
                close_fds=True,
            )
        except OSError as exc:
            raise ActuatorError(f"cannot start {component!r} ({cmd.argv[0]}): {exc.strerror or exc}") from exc
        finally:
            os.close(logfd)
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = 0.0
        data = {"pid": popen.pid, "create_time": create_time, "argv": list(cmd.argv), "restart": restart}
        if action_key is not None:
            data["action_key"] = action_key
        self._watch(component, popen.pid, create_time, popen, time.monotonic())
        self.listener("started", component, data)
        return data

    def adopt(self, component: str, pid: int, create_time: float) -> bool:
        """Take over a process a previous daemon started (and that outlived it)."""
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - create_time) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.Error:
            return False
        try:
            # Adopted: its age is only known from the kernel's start time.
            self._watch(component, pid, create_time, None, time.monotonic() - (time.time() - create_time))
        except OSError:
            return False
        self.listener("adopted", component, {"pid": pid, "create_time": create_time})
        return True

    def find_unrecorded(self, component: str) -> list[tuple[int, float]]:
        """Live processes this fleet started for ``component`` (newest first), found by their env."""
        found = []
        for proc in psutil.process_iter(["pid", "create_time", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                env = proc.environ()
            except psutil.Error:
                continue
            if env.get(ENV_COMPONENT) == component and env.get(ENV_INSTANCE) == self.instance:
                # Only the group leader is the component's process; its children share the env.
                with contextlib.suppress(psutil.Error):
                    if os.getpgid(proc.info["pid"]) == proc.info["pid"]:
                        found.append((proc.info["pid"], proc.info["create_time"]))
        return sorted(found, key=lambda pc: -pc[1])

    def kill_stray(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def _watch(
        self, component: str, pid: int, create_time: float, popen: subprocess.Popen[bytes] | None, mono: float
    ) -> None:
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(pid)
        proc = _Proc(component, pid, create_time, pidfd, popen, loop.create_future(), mono)
        self._procs[component] = proc
        loop.add_reader(pidfd, self._on_exit, proc)

    def _on_exit(self, proc: _Proc) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(proc.pidfd)
        os.close(proc.pidfd)
        code: int | None = None
        if proc.popen is not None:
            code = proc.popen.wait()  # already exited: reaps without blocking
        data: dict[str, Any] = {"pid": proc.pid, "expected": proc.stopping}
        if code is not None:
            if code < 0:
                data["signal"] = signal.Signals(-code).name
            else:
                data["exit_code"] = code
        if not proc.exited.done():
            proc.exited.set_result(data)
        self.listener("exited", proc.component, data)

    # -- stopping ---------------------------------------------------------------------------
    async def stop(self, component: str, grace_cap: float | None = None) -> dict[str, Any]:
        """SIGTERM (and SIGCONT), then SIGKILL after the component's stop_timeout (or ``grace_cap``,
        if shorter: shutdown must fit in the daemon's own stop budget)."""
        proc = self._procs.get(component)
        if proc is None or proc.exited.done():
            return {"already_stopped": True}
        cmd = self.commands.get(component)
        grace = cmd.stop_timeout if cmd else 5.0
        if grace_cap is not None:
            grace = min(grace, grace_cap)
        proc.stopping = True
        self._signal(proc, signal.SIGTERM)
        # A stopped (SIGSTOP) process cannot act on SIGTERM until it is continued.
        self._signal(proc, signal.SIGCONT)
        try:
            async with asyncio.timeout(grace):
                info = await asyncio.shield(proc.exited)
            return {"signal": "SIGTERM", **info}
        except TimeoutError:
            pass
        self._signal(proc, signal.SIGKILL)
        async with asyncio.timeout(10):
            info = await asyncio.shield(proc.exited)
        return {"signal": "SIGKILL", "grace_expired": grace, **info}

    def _signal(self, proc: _Proc, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if proc.popen is not None:
                os.killpg(proc.pid, sig)  # the group leader's pgid is its pid (start_new_session)
            else:
                signal.pidfd_send_signal(proc.pidfd, sig)

    async def restart(self, component: str, action_key: str | None = None) -> dict[str, Any]:
        stopped = await self.stop(component)
        started = self.start(component, restart=True, action_key=action_key)
        return {"stopped": stopped, "pid": started["pid"]}

    async def stop_all(self, grace_cap: float | None = None) -> None:
        names = [c for c, p in self._procs.items() if not p.exited.done()]
        await asyncio.gather(*(self.stop(c, grace_cap) for c in names), return_exceptions=True)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for proc in self._procs.values():
            if not proc.exited.done():
                loop.remove_reader(proc.pidfd)
                with contextlib.suppress(OSError):
                    os.close(proc.pidfd)
