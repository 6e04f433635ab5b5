"""``process``: signal, stop, start or restart a process, supervised by healer or by pid."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
from collections.abc import Mapping
from typing import Any, ClassVar

import psutil
from pydantic import Field, field_validator

from healer.config import Duration
from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext, ActuatorServices
from healer.execute.builtins import Base, Params
from healer.supervisor import Supervisor


def _signal_of(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return signal.Signals(v).name
    if isinstance(v, str):
        name = v.upper() if v.upper().startswith("SIG") else f"SIG{v.upper()}"
        if name in signal.Signals.__members__:
            return name
    raise ValueError(f"unknown signal {v!r} (use a name such as SIGHUP or TERM)")


ACTION_KEY_ENV = "HEALER_ACTION_KEY"  # set by the supervisor on a process an action started


def _started_by(pid: int) -> str | None:
    try:
        return psutil.Process(pid).environ().get(ACTION_KEY_ENV)
    except psutil.Error:
        return None


class _Target(Params):
    # None: the component's supervised process. A pid: any process (never healer, init or pid 0).
    pid: int | None = Field(default=None, gt=1)
    grace: Duration | None = None  # SIGTERM -> SIGKILL; default: the component's stop_timeout


class _Signal(_Target):
    signal: str = "SIGHUP"

    @field_validator("signal", mode="before")
    @classmethod
    def _known(cls, v: Any) -> str:
        return _signal_of(v)


class ProcessActuator(Base):
    """Stop (SIGTERM, SIGKILL after the grace period), start or restart a supervised process, or
    signal / stop one by pid."""

    name: ClassVar[str] = "process"
    idempotent: ClassVar[bool] = True  # restart twice leaves one fresh process: safe to repeat
    default_timeout: ClassVar[float] = 30.0
    PARAMS: ClassVar[Mapping[str, type[Params]]] = {
        "restart": _Target,
        "stop": _Target,
        "start": _Target,
        "signal": _Signal,
    }
    actions: ClassVar[frozenset[str]] = frozenset(PARAMS)
    compensation_idempotent: ClassVar[bool] = True

    def is_idempotent(self, action: str, params: Mapping[str, Any]) -> bool:
        return action != "signal"  # a second SIGHUP is a second reload

    def target(self, action: str, params: Mapping[str, Any], component: str) -> str:
        pid = params.get("pid")
        return f"pid:{pid}" if pid else component

    def compensates(self, action: str, params: Mapping[str, Any]) -> bool:
        return action in ("stop", "start") and params.get("pid") is None

    def __init__(self, services: ActuatorServices) -> None:
        super().__init__(services)
        self._labels: bool | None = None

    @property
    def supervisor(self) -> Supervisor:
        if self.services.supervisor is None:
            raise ActuatorError("the process actuator needs the daemon's supervisor")
        return self.services.supervisor

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        p = self.parse(ctx.action, ctx.params)
        if p.pid is not None:
            return await self._by_pid(ctx.action, p)
        if ctx.resumed and ctx.action in ("start", "restart"):
            # Re-run after a crash with the same key: if the process this key started is the one
            # running, the restart already happened; doing it again would be a second restart.
            pid = self.supervisor.pid(ctx.component)
            if pid is not None and _started_by(pid) == ctx.idempotency_key:
                return {"pid": pid, "already_done": True}
        return await self._supervised(ctx.component, ctx.action, p, ctx.idempotency_key)

    async def compensate(self, ctx: ActionContext) -> dict[str, Any]:
        undo = {"stop": "start", "start": "stop"}.get(ctx.action)
        if undo is None or ctx.params.get("pid") is not None:
            raise ActuatorError(f"process {ctx.action} cannot be undone")
        if ctx.action == "start" and ctx.result.get("already_running"):
            return {"unchanged": "it was already running before the saga"}
        return await self._supervised(ctx.component, undo, self.parse(undo, {}))

    async def verify(self, ctx: ActionContext) -> bool | None:
        want = (
            {"stop": "start", "start": "stop"}.get(ctx.action, ctx.action) if ctx.compensating else ctx.action
        )
        pid = ctx.params.get("pid")
        if want == "signal":
            return None  # a signal leaves no state to look at
        if pid is not None:
            running = psutil.pid_exists(int(pid))
        else:
            sup = self.services.supervisor
            if sup is None or not sup.supervises(ctx.component):
                return None
            running = sup.pid(ctx.component) is not None
        return not running if want == "stop" else running

    def _spawn_args(self, key: str | None) -> dict[str, Any]:
        # Supervisors that label a spawned process with the action that started it take the key.
        if key is not None and self._labels is None:
            self._labels = "action_key" in inspect.signature(self.supervisor.start).parameters
        return {"action_key": key} if key is not None and self._labels else {}

    async def _supervised(self, comp: str, action: str, p: Any, key: str | None = None) -> dict[str, Any]:
        sup = self.supervisor
        if not sup.supervises(comp):
            raise ActuatorError(f"{comp!r} has no command in the config: healer cannot {action} it")
        async with sup.lock(comp):
            if action == "stop":
                return await sup.stop(comp)
            if action == "start":
                running = sup.pid(comp)
                if running is not None:
                    return {"already_running": running}
                return sup.start(comp, restart=True, **self._spawn_args(key))
            if action == "signal":
                pid = sup.pid(comp)
                if pid is None:
                    raise ActuatorError(f"{comp!r} is not running: nothing to signal")
                os.kill(pid, signal.Signals[p.signal])
                return {"pid": pid, "signal": p.signal}
            return await sup.restart(comp, **self._spawn_args(key))

    async def _by_pid(self, action: str, p: Any) -> dict[str, Any]:
        pid = int(p.pid)
        if pid == os.getpid():
            raise ActuatorError("refusing to signal healer itself")
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            if action == "stop":
                return {"pid": pid, "already_stopped": True}
            raise ActuatorError(f"no process with pid {pid}") from None
        if action == "signal":
            proc.send_signal(signal.Signals[p.signal])
            return {"pid": pid, "signal": p.signal}
        if action != "stop":
            raise ActuatorError(
                f"process {action} needs a supervised component: healer does not know pid {pid}'s command"
            )
        grace = p.grace if p.grace is not None else 5.0
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, grace)
            return {"pid": pid, "signal": "SIGTERM"}
        except psutil.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
            return {"pid": pid, "signal": "SIGKILL", "grace_expired": grace}
