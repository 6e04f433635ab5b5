"""Actuators: the only code that changes the world. One small Protocol, entry-point discovery.

Built-ins register under the ``healer.actuators`` entry-point group like any plugin.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from healer.errors import ActuatorError
from healer.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionContext:
    component: str
    action: str
    params: Mapping[str, Any]
    idempotency_key: str
    incident: int


@dataclass(frozen=True)
class ActuatorServices:
    """What the daemon lends actuators (passed in, never looked up globally)."""

    supervisor: Supervisor


@runtime_checkable
class Actuator(Protocol):
    name: ClassVar[str]
    idempotent: ClassVar[bool]  # safe to run again with the same idempotency key
    default_timeout: ClassVar[float]

    def validate(self, action: str, params: Mapping[str, Any]) -> None:
        """Raise ValueError when this actuator cannot take ``action`` with ``params``."""

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Do it; return details worth recording. Raise ActuatorError on failure."""


class ProcessActuator:
    """Stop (SIGTERM, SIGKILL after the grace period), start or restart a supervised process."""

    name: ClassVar[str] = "process"
    idempotent: ClassVar[bool] = True  # restart twice leaves one fresh process: safe to repeat
    default_timeout: ClassVar[float] = 30.0
    ACTIONS = frozenset({"restart", "stop", "start"})

    def __init__(self, services: ActuatorServices) -> None:
        self.supervisor = services.supervisor

    def validate(self, action: str, params: Mapping[str, Any]) -> None:
        if action not in self.ACTIONS:
            raise ValueError(
                f"process actuator cannot {action!r} (it can: {', '.join(sorted(self.ACTIONS))})"
            )

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        self.validate(ctx.action, ctx.params)
        comp = ctx.component
        if not self.supervisor.supervises(comp):
            raise ActuatorError(f"{comp!r} has no command in the config: healer cannot restart it")
        async with self.supervisor.lock(comp):
            if ctx.action == "stop":
                return await self.supervisor.stop(comp)
            if ctx.action == "start":
                if self.supervisor.pid(comp) is not None:
                    return {"already_running": self.supervisor.pid(comp)}
                return self.supervisor.start(comp, restart=True, action_key=ctx.idempotency_key)
            return await self.supervisor.restart(comp, action_key=ctx.idempotency_key)


class ActuatorRegistry:
    GROUP = "healer.actuators"

    def __init__(self, actuators: Mapping[str, Actuator], refused: Mapping[str, str]) -> None:
        self.actuators = dict(actuators)
        self.refused = dict(refused)

    @classmethod
    def discover(cls, services: ActuatorServices) -> ActuatorRegistry:
        found: dict[str, Actuator] = {}
        refused: dict[str, str] = {}
        for ep in entry_points(group=cls.GROUP):
            origin = f"{ep.dist.name if ep.dist else '?'}:{ep.name} ({ep.value})"
            try:
                obj = ep.load()(services)
            except Exception as exc:  # one bad plugin must not stop the others or the daemon
                refused[ep.name] = f"actuator plugin {origin} failed to load: {type(exc).__name__}: {exc}"
                log.error("%s", refused[ep.name])
                continue
            if not isinstance(obj, Actuator):
                refused[ep.name] = f"actuator plugin {origin} does not implement the Actuator protocol"
                log.error("%s", refused[ep.name])
                continue
            found[ep.name] = obj
        found.setdefault("process", ProcessActuator(services))
        return cls(found, refused)

    def get(self, name: str) -> Actuator:
        try:
            return self.actuators[name]
        except KeyError:
            raise ActuatorError(f"no actuator named {name!r} is installed") from None
