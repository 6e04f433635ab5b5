"""Actuators: the only code that changes the world. One small Protocol, entry-point discovery.

An actuator is a class registered under the ``healer.actuators`` entry-point group (the
built-ins in :mod:`healer.execute.builtins` register there like any plugin). The registry
(:mod:`healer.execute.registry`) validates each class at load and instantiates it with the
:class:`ActuatorServices` the daemon lends.

Required: ``name``, ``idempotent``, ``default_timeout``, ``actions``, ``validate`` and an async
``perform``. Optional, found by name:

- ``async prepare(ctx) -> dict``: read (never change) what ``perform`` is about to replace. It
  runs before the intent is recorded and its answer is recorded *in* the intent, so undo
  information survives a crash and a re-run cannot overwrite it with the already-changed state;
  ``perform`` and ``compensate`` find it in ``ctx.before``.
- ``async compensate(ctx) -> dict``: undo what ``perform`` did; ``ctx.result`` is what it returned
  (as recorded in the log, so this works after a daemon restart too).
- ``async verify(ctx) -> bool | None``: does the intended state of ``ctx`` hold right now (``None``:
  cannot tell)? Crash recovery asks this before deciding about a non-idempotent action.
- ``is_idempotent(action, params) -> bool``: per-action answer when ``idempotent`` is too coarse.
- ``target(action, params, component) -> str``: what the circuit breaker is keyed on (default:
  the component).
- ``compensation_idempotent: bool``: may ``compensate`` run twice (default: ``idempotent``).
- ``compensates(action, params) -> bool``: whether ``compensate`` can undo this action (default:
  yes when ``compensate`` exists); a restart, for one, cannot be undone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from healer.config import ExecuteConfig

if TYPE_CHECKING:
    import httpx

    from healer.knowledge.events import Event
    from healer.supervisor import Supervisor


@dataclass(frozen=True)
class ActionContext:
    """One call of an actuator. ``params`` were validated by the actuator's ``validate``."""

    component: str
    action: str
    params: Mapping[str, Any]
    idempotency_key: str
    incident: int
    timeout: float = 30.0
    compensating: bool = False  # compensate()/verify() of an undo: ``result`` is what perform returned
    result: Mapping[str, Any] = field(default_factory=dict)
    resumed: bool = False  # crash recovery re-runs this with the same key
    before: Mapping[str, Any] = field(default_factory=dict)  # what prepare() saw, from the intent
    undoes: str = ""  # in a compensation: the idempotency key of the action it undoes


@dataclass(frozen=True)
class ActuatorServices:
    """What the daemon lends actuators (passed in, never looked up globally)."""

    supervisor: Supervisor | None = None
    state_dir: Path | None = None
    settings: ExecuteConfig = field(default_factory=ExecuteConfig)
    http: httpx.AsyncClient | None = None
    # Record an event (fire and forget) for what an actuator finds on the way (healer.dr).
    emit: Callable[[Event], None] | None = None
    # When an incident was detected (read from the daemon's snapshot): dr.restore's
    # ``before-incident`` target needs it. None for an unknown incident.
    incident_opened_at: Callable[[int], float | None] | None = None


@runtime_checkable
class Actuator(Protocol):
    name: ClassVar[str]
    idempotent: ClassVar[bool]  # safe to run again with the same idempotency key
    default_timeout: ClassVar[float]
    actions: ClassVar[frozenset[str]]

    def validate(self, action: str, params: Mapping[str, Any]) -> None:
        """Raise ValueError when this actuator cannot take ``action`` with ``params``."""

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Do it; return details worth recording (JSON). Raise ActuatorError on failure."""


def is_idempotent(actuator: Actuator, action: str, params: Mapping[str, Any]) -> bool:
    fn = getattr(actuator, "is_idempotent", None)
    if callable(fn):
        return bool(fn(action, params))
    return bool(actuator.idempotent)


def compensation_is_idempotent(actuator: Actuator) -> bool:
    return bool(getattr(actuator, "compensation_idempotent", actuator.idempotent))


def target_of(actuator: Actuator, action: str, params: Mapping[str, Any], component: str) -> str:
    fn = getattr(actuator, "target", None)
    if callable(fn):
        return str(fn(action, params, component))
    return component


def can_compensate(actuator: Actuator) -> bool:
    return callable(getattr(actuator, "compensate", None))


def compensates(actuator: Actuator, action: str, params: Mapping[str, Any]) -> bool:
    if not can_compensate(actuator):
        return False
    fn = getattr(actuator, "compensates", None)
    return bool(fn(action, params)) if callable(fn) else True


def can_verify(actuator: Actuator) -> bool:
    return callable(getattr(actuator, "verify", None))


def __getattr__(name: str) -> Any:
    # Older imports: ``from healer.execute.actuators import ActuatorRegistry / ProcessActuator``.
    if name == "ActuatorRegistry":
        from healer.execute.registry import ActuatorRegistry

        return ActuatorRegistry
    if name == "ProcessActuator":
        from healer.execute.builtins.process import ProcessActuator

        return ProcessActuator
    raise AttributeError(name)
