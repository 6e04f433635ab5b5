"""The control loop: the one place where events are decided, recorded and applied.

Every input (an observation, a step's intent or outcome, a deadline tick) goes through one
queue. For each, the pure stages decide follow-up events against the snapshot; the whole
batch is appended in one transaction; only then are actions dispatched. Because this loop is
the store's only writer, positions are known before the append and the snapshot is never
ahead of the log for longer than one batch (a failed append rebuilds it from the log).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from healer.analyze.analyzer import analyze, analyze_deadlines
from healer.analyze.taxonomy import Taxonomy
from healer.clock import Clock
from healer.config import HealerConfig
from healer.errors import StoreError
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.projections import FleetState
from healer.knowledge.store import EventStore, rebuild_state
from healer.plan.planner import plan
from healer.plan.policy import PolicySet

log = logging.getLogger(__name__)

Precondition = Callable[[FleetState], bool]


@dataclass
class _Input:
    event: Event | None  # None: a tick (check deadlines) or a flush barrier
    precondition: Precondition | None = None
    reply: asyncio.Future[RecordedEvent | None] | None = None


@dataclass
class Decider:
    """The pure part: given the snapshot and one event, what follows."""

    taxonomy: Taxonomy
    policies: PolicySet
    labels: Mapping[str, Mapping[str, str]]
    supervised: frozenset[str]

    def follow_ups(self, state: FleetState, rec: RecordedEvent, now: float) -> list[Event]:
        out = analyze(state, rec, now, self.taxonomy, self.supervised)
        out.extend(plan(state, rec, self.policies, now, self.labels))
        return out


@dataclass
class ControlLoop:
    store: EventStore
    state: FleetState
    decider: Decider
    clock: Clock
    on_recorded: Callable[[RecordedEvent], None]
    _queue: asyncio.Queue[_Input] = field(default_factory=asyncio.Queue)
    max_batch: int = 1024

    # -- inputs -------------------------------------------------------------------------------
    def submit(self, event: Event) -> None:
        """Fire and forget (observations)."""
        self._queue.put_nowait(_Input(event))

    async def record(self, event: Event, precondition: Precondition | None = None) -> RecordedEvent | None:
        """Record ``event`` durably (if ``precondition`` holds on the snapshot at that moment)."""
        fut: asyncio.Future[RecordedEvent | None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Input(event, precondition, fut))
        return await fut

    def tick(self) -> None:
        self._queue.put_nowait(_Input(None))

    async def flush(self) -> None:
        """Wait until everything submitted so far is recorded."""
        fut: asyncio.Future[RecordedEvent | None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Input(None, reply=fut))
        await fut

    # -- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            await self._process(items)

    async def _process(self, items: list[_Input]) -> None:
        now = self.clock.wall()
        decided: list[RecordedEvent] = []
        replies: list[tuple[asyncio.Future[RecordedEvent | None], int | None]] = []
        start_pos = self.state.position
        for item in items:
            if item.event is None:
                roots = analyze_deadlines(self.state, now)
                for ev in roots:
                    self._decide(ev, now, decided)
                if item.reply is not None:
                    replies.append((item.reply, None))
                continue
            if item.precondition is not None and not item.precondition(self.state):
                if item.reply is not None:
                    replies.append((item.reply, None))
                continue
            index = len(decided)
            self._decide(item.event, now, decided)
            if item.reply is not None:
                replies.append((item.reply, index))
        if decided:
            try:
                recorded = await self.store.append([_unrecord(r) for r in decided])
                if [r.position for r in recorded] != [r.position for r in decided]:
                    raise StoreError("event positions diverged: another writer is appending to this store")
            except StoreError as exc:
                log.error("cannot record %d event(s): %s; nothing was acted on", len(decided), exc)
                await self._rebuild(start_pos)
                for fut, _ in replies:
                    if not fut.done():
                        fut.set_exception(exc)
                return
        for rec in decided:
            try:
                self.on_recorded(rec)
            except Exception:  # a reporting bug must not stop the loop
                log.exception("handler for %s failed", rec.type)
        for fut, at in replies:
            if not fut.done():
                fut.set_result(decided[at] if at is not None else None)

    def _decide(self, event: Event, now: float, out: list[RecordedEvent]) -> None:
        # The input is stamped with the batch's ``now``: every event's ``ts`` is the time its
        # decisions were made with, so replay re-derives ``now`` from the log alone, exactly.
        pending = [Event(event.type, now, event.component, event.incident, event.data)]
        while pending:
            ev = pending.pop(0)
            rec = RecordedEvent(
                self.state.position + 1, ev.type, ev.ts, ev.component, ev.incident, dict(ev.data)
            )
            self.state.apply(rec)
            out.append(rec)
            pending.extend(self.decider.follow_ups(self.state, rec, now))

    async def _rebuild(self, _from: int) -> None:
        fresh = await rebuild_state(self.store)
        self.state.__dict__.update(fresh.__dict__)


def _unrecord(rec: RecordedEvent) -> Event:
    return Event(rec.type, rec.ts, rec.component, rec.incident, rec.data)


def decider_for(config: HealerConfig, policies: PolicySet, taxonomy: Taxonomy) -> Decider:
    """The Decider the daemon builds from ``config``: replay and backtest must decide alike."""
    return Decider(
        taxonomy,
        policies,
        {n: c.labels for n, c in config.components.items()},
        frozenset(n for n, c in config.components.items() if c.command is not None),
    )
