"""Probes: one small Protocol, one class per kind, discovered through the ``healer.probes``
entry-point group (the built-ins register there too, so plugins are first-class).

A probe answers one question per call: is the target healthy right now? Scheduling,
timeouts, jitter and hysteresis live in :mod:`healer.monitor.scheduler`, not in probes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

import httpx
import psutil
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from healer.config import Duration, HealerConfig


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``ok`` is None when the check was inconclusive (for example, a process still starting)."""

    ok: bool | None
    detail: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)


class ProbeContext(Protocol):
    """What a probe may ask of the daemon about its component."""

    @property
    def component(self) -> str: ...

    def supervised_pid(self) -> int | None: ...

    def supervised_uptime(self) -> float | None: ...

    @property
    def http(self) -> httpx.AsyncClient: ...


@runtime_checkable
class Probe(Protocol):
    async def check(self) -> ProbeResult: ...


class ProbeFactory(Protocol):
    """A probe class: ``Params`` validates the probe's own settings from the config file."""

    Params: ClassVar[type[BaseModel]]

    def __call__(self, params: Any, ctx: ProbeContext) -> Probe: ...


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpProbe:
    """GET a URL; healthy when the status is expected (and the body contains a marker, if set)."""

    class Params(_Params):
        url: str
        expect_status: list[int] = Field(default_factory=lambda: [200])
        body_contains: str | None = None
        headers: dict[str, str] = Field(default_factory=dict)

        @field_validator("url")
        @classmethod
        def _http_only(cls, v: str) -> str:
            if not v.startswith(("http://", "https://")):
                raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
            return v

        @field_validator("expect_status", mode="before")
        @classmethod
        def _one_or_many(cls, v: Any) -> Any:
            return [v] if isinstance(v, int) else v

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        self.params = params
        self.ctx = ctx

    async def check(self) -> ProbeResult:
        p = self.params
        try:
            resp = await self.ctx.http.get(p.url, headers=p.headers)
        except httpx.HTTPError as exc:
            return ProbeResult(False, f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__)
        values = {"status": resp.status_code, "elapsed_ms": round(resp.elapsed.total_seconds() * 1000, 2)}
        if resp.status_code not in p.expect_status:
            return ProbeResult(False, f"HTTP {resp.status_code}: {resp.text[:120]}", values)
        if p.body_contains is not None and p.body_contains not in resp.text:
            return ProbeResult(False, f"body lacks {p.body_contains!r}", values)
        return ProbeResult(True, f"HTTP {resp.status_code}", values)


class ProcessProbe:
    """A supervised process is alive (not a zombie) and has been up for ``min_uptime``.

    Exits are not found by this check: the supervisor's pidfd reports them at once. The
    periodic check covers what a pidfd cannot see (a zombie) and gives a restarted process
    its minimum uptime before it counts as healthy, so a crash loop cannot look recovered.
    """

    class Params(_Params):
        min_uptime: Duration = 1.0

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        self.params = params
        self.ctx = ctx

    async def check(self) -> ProbeResult:
        pid = self.ctx.supervised_pid()
        if pid is None:
            return ProbeResult(False, "process not running")
        try:
            status = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            return ProbeResult(False, f"pid {pid} is gone")
        uptime = self.ctx.supervised_uptime() or 0.0
        values = {"pid": pid, "status": status, "uptime_s": round(uptime, 3)}
        if status == psutil.STATUS_ZOMBIE:
            return ProbeResult(False, f"pid {pid} is a zombie", values)
        if uptime < self.params.min_uptime:
            return ProbeResult(None, f"pid {pid} up {uptime:.2f}s < min_uptime", values)
        return ProbeResult(True, f"pid {pid} {status}", values)


class ProbeRegistry:
    """Probe kinds by name, loaded from entry points and validated at load."""

    GROUP = "healer.probes"

    def __init__(self, kinds: Mapping[str, Any]) -> None:
        self.kinds = dict(kinds)
        self.refused: dict[str, str] = {}

    @classmethod
    def discover(cls) -> ProbeRegistry:
        kinds: dict[str, Any] = {}
        refused: dict[str, str] = {}
        for ep in entry_points(group=cls.GROUP):
            origin = f"{ep.dist.name if ep.dist else '?'}:{ep.name} ({ep.value})"
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not take the daemon down
                refused[ep.name] = f"probe plugin {origin} failed to import: {exc}"
                continue
            params = getattr(obj, "Params", None)
            if not (isinstance(params, type) and issubclass(params, BaseModel)) or not callable(obj):
                refused[ep.name] = f"probe plugin {origin} has no pydantic Params model"
                continue
            kinds[ep.name] = obj
        # The built-ins are always present, even when the package metadata is stale.
        kinds.setdefault("http", HttpProbe)
        kinds.setdefault("process", ProcessProbe)
        reg = cls(kinds)
        reg.refused = refused
        return reg

    def validate(self, kind: str, params: Mapping[str, Any]) -> BaseModel:
        factory = self.kinds.get(kind)
        if factory is None:
            import difflib

            near = difflib.get_close_matches(kind, self.kinds, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(sorted(self.kinds))})"
            raise ValueError(f"unknown probe type {kind!r}{hint}")
        model: type[BaseModel] = factory.Params
        return model.model_validate(dict(params))

    def create(self, kind: str, params: BaseModel, ctx: ProbeContext) -> Probe:
        probe: Probe = self.kinds[kind](params, ctx)
        return probe

    def config_problems(self, cfg: HealerConfig) -> list[tuple[tuple[str | int, ...], str]]:
        """Validate every probe's parameters; positions point into the config file."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        for name, comp in cfg.components.items():
            for i, spec in enumerate(comp.probes):
                base: tuple[str | int, ...] = ("components", name, "probes", i)
                try:
                    self.validate(spec.type, spec.params)
                except ValueError as exc:
                    if isinstance(exc, ValidationError):
                        for err in exc.errors(include_url=False):
                            msg = err["msg"].removeprefix("Value error, ")
                            found.append(((*base, *err["loc"]), msg))
                    else:
                        found.append(((*base, "type"), str(exc)))
                if spec.type == "process" and comp.command is None:
                    found.append(((*base, "type"), "a process probe needs the component's command"))
        return found
