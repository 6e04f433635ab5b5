"""``exec``: run a program with an argv list and a small environment. Never a shell.

Arguments and environment values may hold ``{component}``, ``{incident}`` and ``{key}``; the
program itself may not. The substituted values are checked against a strict pattern
(:mod:`healer.execute.safety`), so a hostile component name cannot smuggle an argument or a
path out of where the policy put it. Not idempotent unless the policy says the command is
(typically because it takes ``{key}`` or ``$HEALER_IDEMPOTENCY_KEY`` and deduplicates).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext
from healer.execute.builtins import Base, Params
from healer.execute.safety import check_argv0, check_templates, render, run_argv, template_values


class _Run(Params):
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    inherit_env: bool = False  # otherwise only PATH and LANG, plus what ``env`` sets
    expect_exit: list[int] = Field(default_factory=lambda: [0])
    idempotent: bool = False  # the policy vouches that running it twice with one key is safe
    # A read-only check of the intended state: exit 0 = holds, 1 = does not, anything else = unknown.
    verify: list[str] | None = None

    @field_validator("cwd")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not os.path.isabs(v):
            raise ValueError(f"cwd must be an absolute path, got {v!r}")
        return v

    @model_validator(mode="after")
    def _templates(self) -> _Run:
        check_argv0(self.argv[0])
        check_templates(self.argv[1:], "argv")
        check_templates(self.env, "env")
        if self.verify is not None:
            if not self.verify:
                raise ValueError("verify: an empty argv")
            check_argv0(self.verify[0])
            check_templates(self.verify[1:], "verify")
        for k in self.env:
            if not k.replace("_", "").isalnum() or k[0].isdigit():
                raise ValueError(f"env: invalid variable name {k!r}")
        return self


class ExecActuator(Base):
    name: ClassVar[str] = "exec"
    idempotent: ClassVar[bool] = False
    default_timeout: ClassVar[float] = 60.0
    PARAMS: ClassVar[Mapping[str, type[Params]]] = {"run": _Run}
    actions: ClassVar[frozenset[str]] = frozenset(PARAMS)

    def is_idempotent(self, action: str, params: Mapping[str, Any]) -> bool:
        return bool(params.get("idempotent", False))

    def target(self, action: str, params: Mapping[str, Any], component: str) -> str:
        argv = params.get("argv") or ["?"]
        return os.path.basename(str(argv[0]))

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        p: _Run = self.parse(ctx.action, ctx.params)
        argv, env = self._prepare(ctx, p, p.argv)
        code, out, err = await run_argv(argv, env, p.cwd)
        result = {"argv": argv, "exit_code": code, "stdout": out[-500:], "stderr": err[-500:]}
        if code not in p.expect_exit:
            raise ActuatorError(f"{os.path.basename(argv[0])} exited {code}: {(err or out).strip()[-300:]}")
        return result

    async def verify(self, ctx: ActionContext) -> bool | None:
        p: _Run = self.parse(ctx.action, ctx.params)
        if p.verify is None:
            return None
        argv, env = self._prepare(ctx, p, p.verify)
        code, _, _ = await run_argv(argv, env, p.cwd)
        return {0: True, 1: False}.get(code)

    def _prepare(self, ctx: ActionContext, p: _Run, raw: list[str]) -> tuple[list[str], dict[str, str]]:
        values = template_values(ctx.component, ctx.incident, ctx.idempotency_key)
        argv = [raw[0], *(render(a, values) for a in raw[1:])]
        env = dict(os.environ) if p.inherit_env else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env.setdefault("LANG", "C.UTF-8")
        env.update({k: render(v, values) for k, v in p.env.items()})
        env.update(
            {
                "HEALER_COMPONENT": values["component"],
                "HEALER_INCIDENT": values["incident"],
                "HEALER_IDEMPOTENCY_KEY": values["key"],
                "HEALER_COMPENSATING": "1" if ctx.compensating else "0",
            }
        )
        return argv, env
