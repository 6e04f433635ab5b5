"""Checkpoints, the side-effect ledger and fencing, for agent processes.

    state = AgentState("booker", state_dir, validator=json.loads, role="booking")
    restored = state.load()               # HEAD, verified; a corrupt one falls back to the previous
    state.save(json.dumps(memory).encode(), label="after-plan")
    with state.effect(f"book-{order}", "book order", compensation={
            "actuator": "http", "action": "request",
            "params": {"method": "POST", "url": f"http://svc/cancel/{order}", "idempotent": True}}):
        book(order)                      # intent recorded before, outcome after

Agents write straight into the daemon's state directory (given its path), through the same
:class:`healer.dr.store.CheckpointStore` the daemon restores from: no daemon round trip on the
hot path, and a checkpoint exists as soon as ``save`` returns (fsynced). The agent must run as
the daemon's user (the store is 0700).

Fencing: with ``role`` set, the agent remembers the fencing token it started under; once healer
fails the role over to a standby (a higher token), :meth:`AgentState.effect` raises
:class:`Fenced` before anything is done, so a partitioned old primary can no longer act.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from healer.dr.ledger import KINDS, ledger_path
from healer.dr.store import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    CorruptCheckpoint,
    Validator,
    append_line,
    check_name,
)


class Fenced(CheckpointError):
    """This agent's fencing token is stale: another instance took over; it must not act."""


def fence_path(state_dir: Path, role: str) -> Path:
    return Path(state_dir) / "fencing" / f"{check_name(role, 'role')}.json"


def read_fence(state_dir: Path, role: str) -> dict[str, Any]:
    try:
        doc = json.loads(fence_path(state_dir, role).read_text())
        return doc if isinstance(doc, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}


class AgentState:
    def __init__(
        self,
        agent: str,
        state_dir: str | Path,
        *,
        validator: Validator | None = None,
        schema: int = 1,
        role: str | None = None,
    ) -> None:
        self.agent = check_name(agent)
        self.state_dir = Path(state_dir)
        self.store = CheckpointStore.in_state_dir(self.state_dir)
        self.validator = validator
        self.schema = schema
        self.role = role
        self.token: int | None = None
        self.skipped: list[tuple[int, str]] = []  # corrupt checkpoints load() passed over
        if role is not None:
            fence = read_fence(self.state_dir, role)
            self.token = int(fence.get("token", 0))

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, data: bytes, label: str | None = None) -> Checkpoint:
        return self.store.save(self.agent, data, label=label, schema=self.schema)

    def save_file(self, path: str | Path, label: str | None = None) -> Checkpoint:
        """A checkpoint of the state file at ``path`` (copied in the kernel, then hashed)."""
        return self.store.save_file(self.agent, Path(path), label=label, schema=self.schema)

    def load_into(self, path: str | Path) -> Checkpoint | None:
        """Like :meth:`load`, restoring into the file ``path`` (atomically replaced) instead of
        memory: the copy is re-hashed before it replaces ``path``. ``validator`` is not used."""
        head = self.store.head(self.agent)
        cps = [c for c in self.store.list(self.agent) if head is None or c.seq <= head]
        for cp in reversed(cps):
            try:
                self.store.export(cp, Path(path))
            except CorruptCheckpoint as exc:
                if self.store.corrupt_reason(cp) is None:
                    self.store.mark_corrupt(cp, exc.reason)
                self.skipped.append((cp.seq, exc.reason))
                continue
            if cp.seq != head:
                self.store.set_head(self.agent, cp)
            return cp
        return None

    def load(self) -> tuple[Checkpoint, bytes] | None:
        """The checkpoint to resume from: HEAD (where a rollback put it), re-hashed and validated;
        a corrupt one is marked and the previous good one is used (and becomes HEAD)."""
        head = self.store.head(self.agent)
        cps = [c for c in self.store.list(self.agent) if head is None or c.seq <= head]
        for cp in reversed(cps):
            try:
                data = self.store.read(cp, self.validator)
            except CorruptCheckpoint as exc:
                if self.store.corrupt_reason(cp) is None:
                    self.store.mark_corrupt(cp, exc.reason)
                self.skipped.append((cp.seq, exc.reason))
                continue
            if cp.seq != head:
                self.store.set_head(self.agent, cp)
            return cp, data
        return None

    @property
    def head(self) -> int:
        return self.store.head(self.agent) or 0

    # -- fencing ---------------------------------------------------------------------------------
    def check_fence(self) -> None:
        if self.role is None:
            return
        fence = read_fence(self.state_dir, self.role)
        token = int(fence.get("token", 0))
        holder = fence.get("holder")
        if holder == self.agent and token >= (self.token or 0):
            self.token = token  # a standby promoted to holder takes the new token
        if token != self.token or (holder is not None and holder != self.agent):
            raise Fenced(
                f"{self.agent} holds fencing token {self.token} for {self.role!r}, but "
                f"{holder or '?'} holds {token}: refusing to act"
            )

    # -- the side-effect ledger ------------------------------------------------------------------
    @contextmanager
    def effect(
        self,
        key: str,
        what: str = "",
        *,
        kind: str = "compensatable",
        compensation: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Record the intent (durable) before the body runs and its outcome after. The body may
        put details into the yielded dict; they are recorded with the outcome."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "compensatable" and compensation is None:
            raise ValueError("a compensatable effect needs its compensation {actuator, action, params}")
        self.check_fence()
        path = ledger_path(self.store, self.agent)
        intent = {
            "type": "intent",
            "key": key,
            "after_seq": self.head,
            "kind": kind,
            "what": what,
            "compensation": compensation,
            "ts": time.time(),
        }
        if self.token is not None:
            intent["token"] = self.token
        append_line(path, intent)
        result: dict[str, Any] = {}
        try:
            yield result
        except BaseException as exc:
            append_line(
                path,
                {"type": "outcome", "key": key, "ok": False, "error": repr(exc), "ts": time.time()},
            )
            raise
        append_line(path, {"type": "outcome", "key": key, "ok": True, "result": result, "ts": time.time()})
