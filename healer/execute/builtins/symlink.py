"""``symlink_swap``: atomically repoint a ``current`` link between versions, keeping ``previous``.

Layout under a root (the state directory or one of ``execute.allowed_roots``)::

    ROOT/v1/  ROOT/v2/  ROOT/current -> v2  ROOT/previous -> v1

``swap`` points ``current`` at a named version (relative link, one ``rename``: a reader sees the
old or the new version, never none) and ``previous`` at what ``current`` was; ``rollback`` swaps
back to ``previous``. Names are single path segments and every path is checked to stay under
the root, so ``../`` in a parameter or a component name cannot reach anything else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import field_validator

from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext
from healer.execute.builtins import Base, Params
from healer.execute.safety import (
    atomic_symlink,
    check_templates,
    fsync_dir,
    inside,
    render,
    safe_name,
    template_values,
)


class _Link(Params):
    root: str  # absolute directory holding the versions and the links
    link: str = "current"
    previous_link: str = "previous"

    @field_validator("root")
    @classmethod
    def _absolute(cls, v: str) -> str:
        check_templates(v, "root")
        if not os.path.isabs(v):
            raise ValueError(f"root must be an absolute path, got {v!r}")
        return v

    @field_validator("link", "previous_link")
    @classmethod
    def _segment(cls, v: str) -> str:
        return safe_name(v, "link name")


class _Swap(_Link):
    to: str  # the version to point at: a name inside root (may use {component})

    @field_validator("to")
    @classmethod
    def _template(cls, v: str) -> str:
        check_templates(v, "to")
        return v


class SymlinkSwapActuator(Base):
    name: ClassVar[str] = "symlink_swap"
    idempotent: ClassVar[bool] = True  # the target is fixed before the intent (see prepare)
    default_timeout: ClassVar[float] = 10.0
    PARAMS: ClassVar[Mapping[str, type[Params]]] = {"swap": _Swap, "rollback": _Link}
    actions: ClassVar[frozenset[str]] = frozenset(PARAMS)
    compensation_idempotent: ClassVar[bool] = True

    def target(self, action: str, params: Mapping[str, Any], component: str) -> str:
        return f"{params.get('root')}/{params.get('link', 'current')}"

    def _roots(self) -> list[Path]:
        roots = list(self.services.settings.allowed_roots)
        if self.services.state_dir is not None:
            roots.append(self.services.state_dir)
        return roots

    def _paths(self, ctx: ActionContext) -> tuple[Path, Path, Path, str | None]:
        p = self.parse(ctx.action, ctx.params)
        values = template_values(ctx.component, ctx.incident, ctx.idempotency_key)
        root = inside(Path(render(p.root, values)), self._roots())
        if not root.is_dir():
            raise ActuatorError(f"{root} is not a directory")
        to = safe_name(render(p.to, values), "version name") if isinstance(p, _Swap) else None
        return root, root / p.link, root / p.previous_link, to

    @staticmethod
    def _read(link: Path) -> str | None:
        if not os.path.lexists(link):
            return None
        if not link.is_symlink():
            raise ActuatorError(f"{link} exists and is not a symlink: refusing to replace it")
        return os.readlink(link)

    def _version(self, root: Path, name: str) -> str:
        safe_name(name, "version name")
        path = inside(root / name, [root])
        if not path.exists():
            raise ActuatorError(f"version {name!r} does not exist in {root}")
        return name

    @staticmethod
    def _point(link: Path, target: str | None) -> None:
        if target is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            fsync_dir(link.parent)
        else:
            atomic_symlink(link, target)

    async def prepare(self, ctx: ActionContext) -> dict[str, Any]:
        _, link, prev, _ = self._paths(ctx)
        return {"current_before": self._read(link), "previous_before": self._read(prev)}

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        root, link, prev, to = self._paths(ctx)
        before = dict(ctx.before) if "current_before" in ctx.before else await self.prepare(ctx)
        if ctx.action == "rollback":
            # Back to what previous named when the intent was recorded: a re-run after a crash
            # finds current already there and changes nothing (a rollback must not toggle).
            back = before.get("previous_before")
            if back is None:
                raise ActuatorError(f"no {prev.name} link in {root}: nothing to roll back to")
            to = back
        assert to is not None
        self._version(root, to)
        current = self._read(link)
        if current != to:
            # previous first: at every instant, at least one link names the old version.
            self._point(prev, current)
            self._point(link, to)
        return {"root": str(root), "link": str(link), "current": to, **before}

    async def compensate(self, ctx: ActionContext) -> dict[str, Any]:
        _, link, prev, _ = self._paths(ctx)
        self._point(link, ctx.result.get("current_before"))
        self._point(prev, ctx.result.get("previous_before"))
        return {"current": ctx.result.get("current_before"), "previous": ctx.result.get("previous_before")}

    async def verify(self, ctx: ActionContext) -> bool | None:
        _, link, _, to = self._paths(ctx)
        if ctx.compensating:
            return self._read(link) == ctx.result.get("current_before")
        if ctx.action == "rollback":
            if "previous_before" not in ctx.before:
                return None
            return self._read(link) == ctx.before.get("previous_before")
        return self._read(link) == to
