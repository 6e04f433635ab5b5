"""``feature_flag``: set flags in a flag set, atomically: graceful degradation with safe defaults.

A flag set is a JSON object, kept either in a file under ``STATE_DIR/flags/NAME.json`` (``set``;
or ``file``: an absolute path under ``execute.allowed_roots``) (written
to a temp file, fsynced, renamed over the old one, mode 0600) or as the retained payload of an
MQTT topic. Agents read it; healer only ever replaces the whole set in one step. The values the
action replaced are recorded, so ``compensate`` restores them exactly (and removes flags that
did not exist before). With ``restore: true`` (the default) the daemon does the same once the
incident resolves (``flags.restored``; see healer.dr.aftercare).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from healer.config import NAME_RE
from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext
from healer.execute.builtins import Base, Params
from healer.execute.builtins.mqtt import check_topic, encode, publish, read_retained
from healer.execute.safety import (
    atomic_write,
    check_templates,
    ensure_private_dir,
    inside,
    render,
    safe_name,
    template_values,
)

FlagValue = bool | int | float | str | None


class _Set(Params):
    flags: dict[str, FlagValue] = Field(min_length=1)
    set: str | None = None  # file mode: the flag set's name (default: the component's name)
    file: str | None = None  # file mode, elsewhere: an absolute path under execute.allowed_roots
    topic: str | None = None  # MQTT mode: a retained topic holding the set
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    # Put the replaced values back once the incident resolves (healer.dr.aftercare); false: the
    # degraded values stay until someone changes them.
    restore: bool = True

    @field_validator("flags")
    @classmethod
    def _names(cls, v: dict[str, FlagValue]) -> dict[str, FlagValue]:
        for k in v:
            if not NAME_RE.match(k):
                raise ValueError(f"invalid flag name {k!r}")
        return v

    @model_validator(mode="after")
    def _one_place(self) -> _Set:
        if sum(x is not None for x in (self.set, self.file, self.topic)) > 1:
            raise ValueError("give one place: 'set' or 'file' (a file), or 'topic' (MQTT), not both")
        if self.file is not None and not os.path.isabs(self.file):
            raise ValueError(f"file must be an absolute path, got {self.file!r}")
        check_templates(self.file or "", "file")
        check_templates(self.set or "", "set")
        check_templates(self.topic or "", "topic")
        return self


class FeatureFlagActuator(Base):
    name: ClassVar[str] = "feature_flag"
    idempotent: ClassVar[bool] = True  # setting flags to values twice leaves the same values
    default_timeout: ClassVar[float] = 10.0
    PARAMS: ClassVar[Mapping[str, type[Params]]] = {"set": _Set}
    actions: ClassVar[frozenset[str]] = frozenset(PARAMS)
    compensation_idempotent: ClassVar[bool] = True

    def target(self, action: str, params: Mapping[str, Any], component: str) -> str:
        return str(params.get("topic") or "flags")

    # -- where the set lives ---------------------------------------------------------------------
    def _file(self, ctx: ActionContext, p: _Set) -> Path:
        if self.services.state_dir is None:
            raise ActuatorError("feature_flag needs the daemon's state directory")
        values = template_values(ctx.component, ctx.incident, ctx.idempotency_key)
        if p.file is not None:
            roots = [*self.services.settings.allowed_roots, self.services.state_dir]
            path = inside(Path(render(p.file, values)), roots)
            ensure_private_dir(path.parent)
            return path
        name = safe_name(render(p.set or "{component}", values), "flag set name")
        d = self.services.state_dir / "flags"
        ensure_private_dir(d)
        return d / f"{name}.json"

    def _mqtt(self, ctx: ActionContext, p: _Set) -> tuple[str, int, str]:
        values = template_values(ctx.component, ctx.incident, ctx.idempotency_key)
        s = self.services.settings
        return p.host or s.mqtt_host, p.port or s.mqtt_port, check_topic(render(p.topic or "", values))

    async def _read(self, ctx: ActionContext, p: _Set) -> dict[str, Any]:
        if p.topic is not None:
            host, port, topic = self._mqtt(ctx, p)
            raw = await read_retained(host, port, topic)
            where = f"topic {topic}"
        else:
            path = self._file(ctx, p)
            raw = path.read_bytes() if path.exists() else None
            where = str(path)
        if not raw:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ActuatorError(f"flag set at {where} is not JSON ({exc}): refusing to overwrite it") from exc
        if not isinstance(doc, dict):
            raise ActuatorError(f"flag set at {where} is not a JSON object: refusing to overwrite it")
        return doc

    async def _write(self, ctx: ActionContext, p: _Set, flags: Mapping[str, Any]) -> str:
        data = encode(dict(sorted(flags.items())))
        if p.topic is not None:
            host, port, topic = self._mqtt(ctx, p)
            await publish(host, port, topic, data, 1, True)
            return f"mqtt:{topic}"
        path = self._file(ctx, p)
        atomic_write(path, data + b"\n")
        return str(path)

    # -- the actuator ------------------------------------------------------------------------------
    async def prepare(self, ctx: ActionContext) -> dict[str, Any]:
        p: _Set = self.parse(ctx.action, ctx.params)
        current = await self._read(ctx, p)
        return {
            "previous": {k: current[k] for k in p.flags if k in current},
            "absent": sorted(k for k in p.flags if k not in current),
        }

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        p: _Set = self.parse(ctx.action, ctx.params)
        # What this replaces comes from the intent when there is one: after a crash the set may
        # already hold the new values, and undoing to those would undo nothing.
        before = dict(ctx.before) if "previous" in ctx.before else await self.prepare(ctx)
        current = await self._read(ctx, p)
        where = await self._write(ctx, p, {**current, **p.flags})
        # The parameters travel with the result: restoring after the incident resolves needs
        # them, and the step events carry results, not parameters.
        return {"where": where, "set": dict(p.flags), "params": p.model_dump(exclude_none=True), **before}

    async def compensate(self, ctx: ActionContext) -> dict[str, Any]:
        p: _Set = self.parse(ctx.action, ctx.params)
        current = await self._read(ctx, p)
        restored = {**current, **dict(ctx.result.get("previous") or {})}
        for k in ctx.result.get("absent") or []:
            restored.pop(k, None)
        where = await self._write(ctx, p, restored)
        return {"where": where, "restored": dict(ctx.result.get("previous") or {})}

    async def verify(self, ctx: ActionContext) -> bool | None:
        p: _Set = self.parse(ctx.action, ctx.params)
        current = await self._read(ctx, p)
        if not ctx.compensating:
            return all(k in current and current[k] == v for k, v in p.flags.items())
        previous = dict(ctx.result.get("previous") or {})
        absent = ctx.result.get("absent") or []
        return all(current.get(k) == v for k, v in previous.items()) and not any(k in current for k in absent)
