"""``systemd``: start, stop, restart or reload a unit through ``systemctl`` (an argv, never a shell)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import field_validator

from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext
from healer.execute.builtins import Base, Params
from healer.execute.safety import check_templates, render, run_argv, template_values

UNIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_.@-]{0,200}\.(service|socket|target|timer|mount|path|slice)$")


class _Unit(Params):
    unit: str = "{component}.service"
    user: bool = False  # systemctl --user

    @field_validator("unit")
    @classmethod
    def _template(cls, v: str) -> str:
        check_templates(v, "unit")
        return v


class SystemdActuator(Base):
    name: ClassVar[str] = "systemd"
    idempotent: ClassVar[bool] = True  # systemd itself makes start/stop/restart of a unit repeatable
    default_timeout: ClassVar[float] = 90.0
    PARAMS: ClassVar[Mapping[str, type[Params]]] = {
        "start": _Unit,
        "stop": _Unit,
        "restart": _Unit,
        "reload": _Unit,
    }
    actions: ClassVar[frozenset[str]] = frozenset(PARAMS)
    compensation_idempotent: ClassVar[bool] = True
    _UNDO: ClassVar[dict[str, str]] = {"start": "stop", "stop": "start"}

    def compensates(self, action: str, params: Mapping[str, Any]) -> bool:
        return action in self._UNDO

    def target(self, action: str, params: Mapping[str, Any], component: str) -> str:
        return str(params.get("unit", "{component}.service")).replace("{component}", component)

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        return await self._run(ctx, ctx.action)

    async def compensate(self, ctx: ActionContext) -> dict[str, Any]:
        undo = self._UNDO.get(ctx.action)
        if undo is None:
            raise ActuatorError(f"systemd {ctx.action} cannot be undone")
        return await self._run(ctx, undo)

    async def verify(self, ctx: ActionContext) -> bool | None:
        want = self._UNDO.get(ctx.action, ctx.action) if ctx.compensating else ctx.action
        unit, base = self._unit(ctx)
        _, out, _ = await run_argv([*base, "is-active", "--", unit], self._env())
        state = out.strip().splitlines()[0] if out.strip() else ""
        if state in ("active", "reloading", "activating"):
            return want != "stop"
        if state in ("inactive", "failed", "deactivating"):
            return want == "stop"
        return None

    def _unit(self, ctx: ActionContext) -> tuple[str, list[str]]:
        p = self.parse(ctx.action, ctx.params)
        unit = render(p.unit, template_values(ctx.component, ctx.incident, ctx.idempotency_key))
        if not UNIT_RE.match(unit):
            raise ActuatorError(f"invalid systemd unit name {unit!r}")
        exe = shutil.which(self.services.settings.systemctl, path=os.environ.get("PATH"))
        if exe is None:
            raise ActuatorError(f"{self.services.settings.systemctl!r} not found on PATH")
        return unit, [exe, "--no-ask-password", *(["--user"] if p.user else [])]

    async def _run(self, ctx: ActionContext, action: str) -> dict[str, Any]:
        unit, base = self._unit(ctx)
        argv = [*base, action, "--", unit]
        code, out, err = await run_argv(argv, self._env())
        if code != 0:
            raise ActuatorError(f"systemctl {action} {unit} exited {code}: {(err or out).strip()[-300:]}")
        return {"unit": unit, "action": action, "argv": argv}

    @staticmethod
    def _env() -> dict[str, str]:
        keep = ("PATH", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "SYSTEMD_LOG_LEVEL")
        return {k: os.environ[k] for k in keep if k in os.environ} | {"SYSTEMD_PAGER": "", "LANG": "C.UTF-8"}
