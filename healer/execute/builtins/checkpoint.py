"""``checkpoint_restore``: put an agent's named (or latest) checkpoint back in place, verified.

This is the actuator the rollback protocol uses (halt -> restore -> compensate -> restart ->
verify). It reads checkpoints through the small :class:`CheckpointStore` interface. The store
here is a deliberately minimal file layout, so the actuator is real and testable now::

    STATE_DIR/checkpoints/AGENT/NAME/manifest.json   {"name", "created_at", "sha256", "size"}
    STATE_DIR/checkpoints/AGENT/NAME/data            the checkpoint's bytes

The disaster-recovery work owns the real checkpoint catalogue (content addressing, retention,
the agent library that writes them) and plugs it in behind the same interface.

A restore checks the checksum before touching anything, keeps the file it replaces (so
``compensate`` can put it back) and writes the destination atomically (temp, fsync, rename,
0600). "latest" is resolved before the intent is recorded, so a re-run after a crash restores
the same checkpoint even if a newer one appeared meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import field_validator

from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext
from healer.execute.builtins import Base, Params
from healer.execute.safety import (
    atomic_write,
    check_templates,
    ensure_private_dir,
    fsync_dir,
    inside,
    render,
    safe_name,
    template_values,
)


@dataclass(frozen=True)
class Checkpoint:
    agent: str
    name: str
    created_at: float
    sha256: str
    size: int


class CheckpointStore(Protocol):
    def resolve(self, agent: str, name: str) -> Checkpoint:
        """The checkpoint called ``name`` (or the newest for ``"latest"``); ActuatorError if none."""

    def read_verified(self, cp: Checkpoint) -> bytes:
        """Its bytes, after checking them against the recorded checksum (ActuatorError if not)."""


class FileCheckpointStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _manifest(self, agent: str, name: str) -> Checkpoint:
        path = (
            self.root / safe_name(agent, "agent name") / safe_name(name, "checkpoint name") / "manifest.json"
        )
        try:
            doc = json.loads(path.read_text())
            return Checkpoint(agent, name, float(doc["created_at"]), str(doc["sha256"]), int(doc["size"]))
        except FileNotFoundError:
            raise ActuatorError(f"no checkpoint {name!r} for {agent!r}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ActuatorError(f"checkpoint {agent}/{name} has a broken manifest: {exc}") from exc

    def resolve(self, agent: str, name: str) -> Checkpoint:
        if name != "latest":
            return self._manifest(agent, name)
        d = self.root / safe_name(agent, "agent name")
        found = []
        for entry in sorted(d.iterdir()) if d.is_dir() else []:
            if (entry / "manifest.json").is_file():
                with contextlib.suppress(ActuatorError):
                    found.append(self._manifest(agent, entry.name))
        if not found:
            raise ActuatorError(f"no checkpoint for {agent!r} in {self.root}")
        return max(found, key=lambda c: (c.created_at, c.name))

    def read_verified(self, cp: Checkpoint) -> bytes:
        data = (self.root / cp.agent / cp.name / "data").read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != cp.sha256 or len(data) != cp.size:
            raise ActuatorError(
                f"checkpoint {cp.agent}/{cp.name} is corrupt (sha256 {digest[:12]}..., "
                f"expected {cp.sha256[:12]}...): not restored"
            )
        return data


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _copy_back(backup: Path, dest: Path) -> bool:
    try:
        data = backup.read_bytes()
    except FileNotFoundError:
        return False
    atomic_write(dest, data)
    return True


class _Restore(Params):
    dest: str  # absolute path of the file to restore into (under the state dir or allowed_roots)
    checkpoint: str = "latest"
    agent: str = "{component}"

    @field_validator("dest", "agent", "checkpoint")
    @classmethod
    def _templates(cls, v: str) -> str:
        check_templates(v)
        return v

    @field_validator("dest")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not os.path.isabs(v):
            raise ValueError(f"dest must be an absolute path, got {v!r}")
        return v


class CheckpointRestoreActuator(Base):
    name: ClassVar[str] = "checkpoint_restore"
    idempotent: ClassVar[bool] = True  # restoring the same bytes twice leaves the same bytes
    default_timeout: ClassVar[float] = 120.0
    PARAMS: ClassVar[Mapping[str, type[Params]]] = {"restore": _Restore}
    actions: ClassVar[frozenset[str]] = frozenset(PARAMS)
    compensation_idempotent: ClassVar[bool] = True

    @property
    def _state(self) -> Path:
        if self.services.state_dir is None:
            raise ActuatorError("checkpoint_restore needs the daemon's state directory")
        return self.services.state_dir

    def store(self) -> CheckpointStore:
        return FileCheckpointStore(self._state / "checkpoints")

    def target(self, action: str, params: Mapping[str, Any], component: str) -> str:
        return "checkpoints"

    def _resolve(self, ctx: ActionContext) -> tuple[str, str, Path]:
        p: _Restore = self.parse(ctx.action, ctx.params)
        values = template_values(ctx.component, ctx.incident, ctx.idempotency_key)
        agent = safe_name(render(p.agent, values), "agent name")
        name = render(p.checkpoint, values)
        if name != "latest":
            safe_name(name, "checkpoint name")
        dest = inside(Path(render(p.dest, values)), [*self.services.settings.allowed_roots, self._state])
        return agent, name, dest

    def _backup(self, key: str) -> Path:
        d = self._state / "checkpoints" / ".restore-backups"
        ensure_private_dir(d)
        return d / hashlib.sha256(key.encode()).hexdigest()[:32]

    async def prepare(self, ctx: ActionContext) -> dict[str, Any]:
        agent, name, dest = self._resolve(ctx)
        cp = self.store().resolve(agent, name)
        return {"agent": agent, "checkpoint": cp.name, "sha256": cp.sha256, "dest_sha256_before": _sha(dest)}

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        _, _, dest = self._resolve(ctx)
        before = dict(ctx.before) if "checkpoint" in ctx.before else await self.prepare(ctx)
        cp = self.store().resolve(str(before["agent"]), str(before["checkpoint"]))
        data = self.store().read_verified(cp)
        backup = self._backup(ctx.idempotency_key)
        # A re-run must not overwrite the saved original with what the first run restored.
        if dest.exists() and not backup.exists() and _sha(dest) != cp.sha256:
            atomic_write(backup, dest.read_bytes())
        ensure_private_dir(dest.parent)
        atomic_write(dest, data)
        return {**before, "dest": str(dest), "backup": str(backup) if backup.exists() else None}

    async def compensate(self, ctx: ActionContext) -> dict[str, Any]:
        _, _, dest = self._resolve(ctx)
        backup = ctx.result.get("backup")
        if backup and _copy_back(Path(str(backup)), dest):
            return {"dest": str(dest), "restored_from": backup}
        if ctx.result.get("dest_sha256_before") is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
            fsync_dir(dest.parent)
            return {"dest": str(dest), "removed": True}
        if _sha(dest) == ctx.result.get("dest_sha256_before"):
            return {"dest": str(dest), "unchanged": True}
        raise ActuatorError(f"the file {dest} replaced by the restore was not kept: cannot undo")

    async def verify(self, ctx: ActionContext) -> bool | None:
        _, _, dest = self._resolve(ctx)
        if ctx.compensating:
            return bool(_sha(dest) == ctx.result.get("dest_sha256_before"))
        want = ctx.before.get("sha256")
        if want is None:
            return None
        return bool(_sha(dest) == want)
