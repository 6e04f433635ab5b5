"""Actuator discovery through the ``healer.actuators`` entry-point group.

Every entry point is checked at load, in the manner of pluggy's plugin manager: the class
must carry the declared properties with the right types, ``perform`` must be a coroutine
function, the optional hooks (``prepare``, ``compensate``, ``verify``) too, and its ``name`` must
be the entry point's name. A plugin that fails is *refused* with a message naming its
distribution, version and entry point; the others load. Names in the config's
``execute.blocked_actuators`` are never imported at all.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from healer.errors import ActuatorError
from healer.execute.actuators import Actuator, ActuatorServices, can_compensate, can_verify

log = logging.getLogger(__name__)

GROUP = "healer.actuators"
ASYNC_HOOKS = ("perform", "prepare", "compensate", "verify")
SYNC_HOOKS = ("validate", "is_idempotent", "target", "compensates")


@dataclass
class ActuatorInfo:
    """One entry point as ``healer plugins`` shows it."""

    name: str
    status: str  # loaded | refused | blocked
    distribution: str
    version: str
    entry_point: str
    reason: str | None = None
    idempotent: bool | None = None
    default_timeout: float | None = None
    actions: list[str] = field(default_factory=list)
    compensates: bool = False
    verifies: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _origin(ep: EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "?", "?"
    return str(dist.metadata["Name"] or dist.name), str(dist.version)


def check_actuator_class(obj: Any, ep_name: str) -> list[str]:
    """What is wrong with ``obj`` as an actuator registered as ``ep_name`` (empty: nothing)."""
    problems: list[str] = []
    if not callable(obj):
        return [f"{obj!r} is not a class or factory"]
    name = getattr(obj, "name", None)
    if not isinstance(name, str):
        problems.append("has no 'name' string")
    elif name != ep_name:
        problems.append(f"declares name {name!r} but is registered as {ep_name!r}")
    if not isinstance(getattr(obj, "idempotent", None), bool):
        problems.append("has no 'idempotent' boolean (is it safe to run twice with one key?)")
    timeout = getattr(obj, "default_timeout", None)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        problems.append("has no positive 'default_timeout' (seconds)")
    actions = getattr(obj, "actions", None)
    if (
        not isinstance(actions, Iterable)
        or isinstance(actions, str)
        or not list(actions)
        or not all(isinstance(a, str) for a in actions)
    ):
        problems.append("has no 'actions' (a non-empty set of action names)")
    for hook in ASYNC_HOOKS:
        fn = getattr(obj, hook, None)
        if fn is None:
            if hook == "perform":
                problems.append("has no 'perform' method")
            continue
        if not inspect.iscoroutinefunction(fn):
            problems.append(f"'{hook}' must be an async def")
    for hook in SYNC_HOOKS:
        fn = getattr(obj, hook, None)
        if fn is None:
            if hook == "validate":
                problems.append("has no 'validate' method")
            continue
        if not callable(fn) or inspect.iscoroutinefunction(fn):
            problems.append(f"'{hook}' must be a plain (not async) method")
    return problems


def _describe(info: ActuatorInfo, obj: Any) -> None:
    info.idempotent = bool(getattr(obj, "idempotent", False))
    info.default_timeout = float(getattr(obj, "default_timeout", 0))
    info.actions = sorted(getattr(obj, "actions", ()))
    info.compensates = can_compensate(obj)
    info.verifies = can_verify(obj)


def _builtin_fallbacks() -> dict[str, str]:
    # Present even when the package metadata is stale (an old install): the daemon can always
    # restart what it supervises. Registered through pyproject.toml's entry points normally.
    return {"process": "healer.execute.builtins.process:ProcessActuator"}


def inspect_entry_points(
    blocked: Iterable[str] = (), eps: Iterable[EntryPoint] | None = None
) -> tuple[list[ActuatorInfo], dict[str, Any]]:
    """Load and check every entry point (instantiating nothing): their infos, and the classes
    that passed, by name."""
    blocked = set(blocked)
    infos: list[ActuatorInfo] = []
    classes: dict[str, Any] = {}
    origin_of: dict[str, str] = {}
    found = list(eps if eps is not None else entry_points(group=GROUP))
    names = {ep.name for ep in found}
    for name, value in _builtin_fallbacks().items():
        if name not in names:
            found.append(EntryPoint(name, value, GROUP))
    # healer's own actuators first: a plugin earlier on sys.path cannot take a built-in's name.
    found.sort(key=lambda ep: _origin(ep)[0] not in ("healer", "?"))
    for ep in found:
        dist, version = _origin(ep)
        where = f"entry point {ep.name!r} ({ep.value}) of distribution {dist} {version}"
        info = ActuatorInfo(ep.name, "loaded", dist, version, ep.value)
        infos.append(info)
        if ep.name in blocked:
            info.status, info.reason = "blocked", "listed in execute.blocked_actuators"
            continue
        if ep.name in classes:
            info.status = "refused"
            info.reason = (
                f"actuator plugin refused: {where}: the name {ep.name!r} is taken by {origin_of[ep.name]}"
            )
            log.error("%s", info.reason)
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # one bad plugin must not stop the others or the daemon
            info.status = "refused"
            info.reason = f"actuator plugin refused: {where} failed to import: {type(exc).__name__}: {exc}"
            log.error("%s", info.reason)
            continue
        problems = check_actuator_class(obj, ep.name)
        if problems:
            info.status = "refused"
            info.reason = f"actuator plugin refused: {where}: " + "; ".join(problems)
            log.error("%s", info.reason)
            continue
        _describe(info, obj)
        classes[ep.name] = obj
        origin_of[ep.name] = f"{dist} {version}"
    return infos, classes


class ActuatorRegistry:
    GROUP = GROUP

    def __init__(
        self,
        actuators: Mapping[str, Actuator],
        refused: Mapping[str, str],
        infos: list[ActuatorInfo] | None = None,
    ) -> None:
        self.actuators = dict(actuators)
        self.refused = dict(refused)
        self.infos = list(infos or [])

    @classmethod
    def discover(
        cls,
        services: ActuatorServices,
        blocked: Iterable[str] | None = None,
        eps: Iterable[EntryPoint] | None = None,
    ) -> ActuatorRegistry:
        if blocked is None:
            blocked = services.settings.blocked_actuators
        infos, classes = inspect_entry_points(blocked, eps)
        found: dict[str, Actuator] = {}
        by_name = {i.name: i for i in infos if i.status == "loaded"}
        for name, factory in classes.items():
            info = by_name[name]
            try:
                obj = factory(services)
            except Exception as exc:
                info.status = "refused"
                info.reason = (
                    f"actuator plugin refused: entry point {name!r} ({info.entry_point}) of distribution "
                    f"{info.distribution} {info.version} failed to start: {type(exc).__name__}: {exc}"
                )
                log.error("%s", info.reason)
                continue
            if not isinstance(obj, Actuator):
                info.status = "refused"
                info.reason = f"actuator plugin refused: {name!r} ({info.entry_point}) is not an Actuator"
                continue
            found[name] = obj
        refused = {i.name: i.reason or "" for i in infos if i.status == "refused"}
        return cls(found, refused, infos)

    @classmethod
    def of(cls, *actuators: Actuator) -> ActuatorRegistry:
        """A registry of given instances (tests, embedding)."""
        return cls({a.name: a for a in actuators}, {})

    def get(self, name: str) -> Actuator:
        try:
            return self.actuators[name]
        except KeyError:
            why = self.refused.get(name) or next(
                (
                    "blocked by execute.blocked_actuators"
                    for i in self.infos
                    if i.name == name and i.status == "blocked"
                ),
                None,
            )
            raise ActuatorError(
                f"no actuator named {name!r} is installed" + (f" ({why})" if why else "")
            ) from None

    def summary(self) -> dict[str, Any]:
        return {
            "loaded": {i.name: f"{i.distribution} {i.version}" for i in self.infos if i.status == "loaded"},
            "refused": {i.name: i.reason for i in self.infos if i.status == "refused"},
            "blocked": sorted(i.name for i in self.infos if i.status == "blocked"),
        }


Factory = Callable[[ActuatorServices], Actuator]
