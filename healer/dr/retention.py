"""Checkpoint retention: which checkpoints may go (pure), and removing them (I/O, events).

The decision is a pure function of the snapshot (:class:`FleetState`) and a listing of the
catalogue taken just before, so it can be tested and replayed without files. An agent keeps its
newest ``keep`` checkpoints, its HEAD, and every checkpoint an open (or escalated, still owning)
incident or a pending approval refers to:

- a ``dr.restore`` in the incident's plan, in the approval's actions, or already started (the
  sequence recorded in its intent): ``seq:N``, ``label:NAME``, ``before-incident``;
- for any incident open on the agent, the last checkpoint created before it opened (what a
  ``before-incident`` rollback would restore, even if no step names it yet).

Retention runs periodically in the daemon (``dr.retention_interval``): checkpoints are written by
agents straight into the state directory, so there is no event to hang it on. Each removal is a
``checkpoint.removed`` event, recorded after the files are gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from healer.dr.store import Checkpoint, CheckpointError, CheckpointStore
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState, IncidentView

log = logging.getLogger(__name__)

BEFORE_INCIDENT = "before-incident"


@dataclass(frozen=True)
class Removal:
    checkpoint: Checkpoint
    reason: str


def target_seq(cps: Sequence[Checkpoint], target: str, opened_at: float | None) -> int | None:
    """The checkpoint sequence a restore target names (None: latest, or nothing matches)."""
    if target.startswith("seq:"):
        try:
            return int(target[4:])
        except ValueError:
            return None
    if target.startswith("label:"):
        named = [c.seq for c in cps if c.label == target[6:]]
        return max(named) if named else None
    if target == BEFORE_INCIDENT and opened_at is not None:
        before = [c.seq for c in cps if c.created_at < opened_at]
        return max(before) if before else None
    return None


def _agent_of(params: Mapping[str, Any], component: str) -> str:
    raw = str(params.get("agent") or "{component}")
    return raw.replace("{component}", component)


def _restores(actions: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    for a in actions:
        if a.get("actuator") == "dr" and a.get("action") == "restore":
            yield dict(a.get("params") or {})


def protected(state: FleetState, catalogue: Mapping[str, Sequence[Checkpoint]]) -> dict[str, dict[int, str]]:
    """agent -> {seq: why} for every checkpoint an open incident or a pending approval refers to."""
    out: dict[str, dict[int, str]] = {}

    def keep(agent: str, seq: int | None, why: str) -> None:
        if seq is not None and agent in catalogue:
            out.setdefault(agent, {}).setdefault(seq, why)

    def from_params(inc: IncidentView, params: Mapping[str, Any], why: str) -> None:
        agent = _agent_of(params, inc.component)
        target = str(params.get("checkpoint") or "latest")
        keep(agent, target_seq(catalogue.get(agent, ()), target, inc.opened_at), why)

    owning = set(state.active_incident.values())
    for inc in state.incidents.values():
        if not (inc.is_open or inc.id in owning):
            continue
        why = f"incident {inc.id}"
        cps = catalogue.get(inc.component, ())
        keep(inc.component, target_seq(cps, BEFORE_INCIDENT, inc.opened_at), f"{why} (before it opened)")
        for params in _restores((inc.plan or {}).get("actions") or []):
            from_params(inc, params, why)
        for step in inc.actions:
            if step.actuator == "dr" and step.action == "restore" and step.before.get("seq") is not None:
                keep(str(step.before.get("agent") or inc.component), int(step.before["seq"]), why)
    for appr in state.approvals.values():
        if appr.status != "pending":
            continue
        owner = state.incidents.get(appr.incident)
        if owner is None:
            continue
        for params in _restores(appr.actions):
            from_params(owner, params, f"approval {appr.id}")
    return out


def to_remove(
    state: FleetState,
    catalogue: Mapping[str, Sequence[Checkpoint]],
    heads: Mapping[str, int | None],
    keep: int,
) -> list[Removal]:
    """The checkpoints retention removes, oldest first per agent (pure)."""
    guarded = protected(state, catalogue)
    out: list[Removal] = []
    for agent, cps in sorted(catalogue.items()):
        ordered = sorted(cps, key=lambda c: c.seq)
        newest = {c.seq for c in ordered[-keep:]} if keep > 0 else set()
        spare = newest | set(guarded.get(agent, {}))
        head = heads.get(agent)
        if head is not None:
            spare.add(head)
        out.extend(Removal(c, f"older than the newest {keep}") for c in ordered if c.seq not in spare)
    return out


class Retention:
    """The daemon's side: list the store, decide against the snapshot, remove, record."""

    def __init__(
        self,
        store: CheckpointStore,
        state: FleetState,
        emit: Callable[[Event], None],
        keep: int,
        interval: float,
    ) -> None:
        self.store = store
        self.state = state
        self.emit = emit
        self.keep = keep
        self.interval = interval

    def _listing(self) -> tuple[dict[str, list[Checkpoint]], dict[str, int | None]]:
        cat: dict[str, list[Checkpoint]] = {}
        heads: dict[str, int | None] = {}
        for agent in self.store.agents():
            cat[agent] = self.store.list(agent)
            heads[agent] = self.store.head(agent)
        return cat, heads

    def _remove(self, removals: list[Removal]) -> list[tuple[Removal, bool]]:
        done = []
        for r in removals:
            cp = r.checkpoint
            if self.store.head(cp.agent) == cp.seq:
                continue  # a restore moved HEAD here since the listing: it stays
            try:
                self.store.remove(cp)
            except (OSError, CheckpointError) as exc:
                log.warning("checkpoint retention: cannot remove %s#%d: %s", cp.agent, cp.seq, exc)
                continue
            done.append((r, not self.store.blob_path(cp.sha256).exists()))
        return done

    async def run_once(self) -> int:
        try:
            cat, heads = await asyncio.to_thread(self._listing)
        except (OSError, CheckpointError) as exc:
            log.warning("checkpoint retention: cannot list the catalogue: %s", exc)
            return 0
        # Decided on the loop's thread: the snapshot is only ever read there.
        removals = to_remove(self.state, cat, heads, self.keep)
        if not removals:
            return 0
        done = await asyncio.to_thread(self._remove, removals)
        for r, blob_removed in done:
            cp = r.checkpoint
            self.emit(
                Event(
                    T.CHECKPOINT_REMOVED,
                    time.time(),
                    cp.agent,
                    None,
                    {
                        "agent": cp.agent,
                        "seq": cp.seq,
                        "label": cp.label,
                        "sha256": cp.sha256,
                        "created_at": cp.created_at,
                        "reason": r.reason,
                        "keep": self.keep,
                        "blob_removed": blob_removed,
                    },
                )
            )
        return len(done)

    async def run(self, sleep: Callable[[float], Any]) -> None:
        while True:
            await sleep(self.interval)
            await self.run_once()
