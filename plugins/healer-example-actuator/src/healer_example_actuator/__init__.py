"""The ``note`` actuator: an operator note per incident, written atomically under the state dir.

Everything healer needs is on the class: its name (the entry point's name too), whether a
second run with the same idempotency key is safe, a default timeout, the actions it takes, a
parameter check, and the coroutines that act, undo and check.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext, ActuatorServices
from healer.execute.safety import atomic_write, ensure_private_dir, render, safe_name, template_values


class NoteActuator:
    name: ClassVar[str] = "note"
    idempotent: ClassVar[bool] = True  # the note's file is named by the key: a re-run rewrites it
    default_timeout: ClassVar[float] = 5.0
    actions: ClassVar[frozenset[str]] = frozenset({"write"})

    def __init__(self, services: ActuatorServices) -> None:
        if services.state_dir is None:
            raise ActuatorError("the note actuator needs the daemon's state directory")
        self.root = services.state_dir / "notes"

    def validate(self, action: str, params: Mapping[str, Any]) -> None:
        if action not in self.actions:
            raise ValueError(f"note cannot {action!r} (it can: write)")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("note needs a non-empty 'text'")
        if set(params) - {"text"}:
            raise ValueError(f"unknown parameter(s) {sorted(set(params) - {'text'})}")

    def _path(self, ctx: ActionContext) -> Path:
        # The component name is untrusted here: a single safe path segment, or nothing happens.
        folder = self.root / safe_name(ctx.component, "component name")
        key = ctx.undoes or ctx.idempotency_key  # a compensation finds the note of the action it undoes
        return folder / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        values = template_values(ctx.component, ctx.incident, ctx.idempotency_key)
        text = render(str(ctx.params["text"]), values)
        path = self._path(ctx)
        ensure_private_dir(path.parent)
        note = {"incident": ctx.incident, "component": ctx.component, "key": ctx.idempotency_key}
        note["text"] = text
        atomic_write(path, json.dumps(note, sort_keys=True).encode() + b"\n")
        return {"path": str(path)}

    async def compensate(self, ctx: ActionContext) -> dict[str, Any]:
        path = self._path(ctx)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return {"path": str(path), "already_gone": True}
        return {"path": str(path), "removed": True}

    async def verify(self, ctx: ActionContext) -> bool | None:
        exists = self._path(ctx).exists()
        return not exists if ctx.compensating else exists
