"""The control loop: the one place where events are decided, recorded and applied.

Every input (an observation, a step's intent or outcome, a deadline tick) goes through one
queue. For each, the pure stages decide follow-up events against the snapshot; the whole
batch is appended in one transaction; only then are actions dispatched. Because this loop is
the store's only writer, positions are known before the append and the snapshot is never
ahead of the log for longer than one batch (a failed append rebuilds it from the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from healer.analyze.analyzer import AnalysisContext, analyze, analyze_batch, analyze_deadlines
from healer.analyze.taxonomy import Taxonomy
from healer.clock import Clock
from healer.config import HealerConfig
from healer.errors import StoreError
from healer.knowledge.events import OBSERVATIONS, Event, RecordedEvent
from healer.knowledge.projections import FleetState
from healer.knowledge.store import EventStore, rebuild_state
from healer.plan.planner import due, plan, revisit
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
    analysis: AnalysisContext | None = None  # the dependency graph and settings; built if absent

    def context(self) -> AnalysisContext:
        if self.analysis is None:
            self.analysis = AnalysisContext(self.taxonomy, self.supervised)
        return self.analysis

    def follow_ups(self, state: FleetState, rec: RecordedEvent, now: float) -> list[Event]:
        # Observations are analysed together, per batch (observed); everything else one by one.
        out = [] if rec.type in OBSERVATIONS else analyze(state, rec, now, self.taxonomy, self.supervised)
        out.extend(plan(state, rec, self.policies, now, self.labels))
        return out

    def due(self, state: FleetState, now: float) -> list[int]:
        """Incidents waiting on a guardrail or an approval deadline, to decide again on a tick."""
        return due(state, now)

    def revisit(self, state: FleetState, incident: int, now: float) -> list[Event]:
        return revisit(state, incident, self.policies, now, self.labels)
    def observed(self, state: FleetState, recs: list[RecordedEvent], now: float) -> list[Event]:
        """Follow-ups of a run of observations, all applied: one root-cause traversal for all."""
        return analyze_batch(state, recs, now, self.context())


@dataclass
class ControlLoop:
    store: EventStore
    state: FleetState
    decider: Decider
    clock: Clock
    on_recorded: Callable[[RecordedEvent], None]
    # Called with the store's error when appends start failing, and with None when they work again.
    on_store_health: Callable[[StoreError | None], None] = lambda _exc: None
    _queue: asyncio.Queue[_Input] = field(default_factory=asyncio.Queue)
    max_batch: int = 1024
    # While the store cannot be written, observations wait here (bounded; oldest dropped and
    # counted) and nothing is acted on; they are decided when the store is writable again.
    max_held: int = 100_000
    retry_interval: float = 1.0
    degraded: StoreError | None = None
    dropped_while_degraded: int = 0
    _held: deque[_Input] = field(default_factory=deque)
    _last_complaint: float = float("-inf")

    @property
    def held(self) -> int:
        return len(self._held)

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
            items: list[_Input] = []
            if self.degraded is None:
                items.append(await self._queue.get())
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.retry_interval):
                        items.append(await self._queue.get())
                items[:0] = self._held
                self._held.clear()
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            if items:
                await self._process(items)

    async def _process(self, items: list[_Input]) -> None:
        now = self.clock.wall()
        decided: list[RecordedEvent] = []
        replies: list[tuple[asyncio.Future[RecordedEvent | None], int | None]] = []
        run: list[Event] = []  # consecutive observations, analysed together
        for item in items:
            plain = item.event is not None and item.reply is None and item.precondition is None
            if plain and item.event is not None and item.event.type in OBSERVATIONS:
                run.append(item.event)
                continue
            if run:
                self._observe(run, now, decided)
                run = []
            if item.event is None:
                roots = analyze_deadlines(self.state, now, self.decider.context())
                for ev in roots:
                    self._decide(ev, now, decided)
                # One waiting incident at a time, each against the state the previous one left:
                # a freed budget slot goes to exactly one waiter.
                for iid in self.decider.due(self.state, now):
                    for ev in self.decider.revisit(self.state, iid, now):
                        self._decide(ev, now, decided)
                if item.reply is not None:
                    replies.append((item.reply, None))
                continue
            if item.precondition is not None and not item.precondition(self.state):
                if item.reply is not None:
                    replies.append((item.reply, None))
                continue
            index = len(decided)
            if item.event.type in OBSERVATIONS:
                self._observe([item.event], now, decided)
            else:
                self._decide(item.event, now, decided)
            if item.reply is not None:
                replies.append((item.reply, index))
        if run:
            self._observe(run, now, decided)
        if decided:
            try:
                recorded = await self.store.append([_unrecord(r) for r in decided])
                if [r.position for r in recorded] != [r.position for r in decided]:
                    raise StoreError("event positions diverged: another writer is appending to this store")
            except StoreError as exc:
                await self._store_failed(exc, items, replies, len(decided))
                return
            if self.degraded is not None:
                log.warning("event store writable again; %d held observation(s) recorded", len(items))
                self.degraded = None
                self.on_store_health(None)
        for rec in decided:
            try:
                self.on_recorded(rec)
            except Exception:  # a reporting bug must not stop the loop
                log.exception("handler for %s failed", rec.type)
        for fut, at in replies:
            if not fut.done():
                fut.set_result(decided[at] if at is not None else None)

    async def _store_failed(
        self,
        exc: StoreError,
        items: list[_Input],
        replies: list[tuple[asyncio.Future[RecordedEvent | None], int | None]],
        count: int,
    ) -> None:
        first = self.degraded is None
        self.degraded = exc
        now = self.clock.monotonic()
        if first or now - self._last_complaint >= 10.0:
            self._last_complaint = now
            log.error(
                "EVENT STORE UNWRITABLE: cannot record %d event(s): %s. Nothing is acted on until it "
                "recovers; observations are held (%d held, %d dropped).",
                count,
                exc,
                len(self._held),
                self.dropped_while_degraded,
            )
        # The snapshot already holds the batch that was not recorded: fold it again from the log.
        await self._rebuild()
        # Intents fail at once (their callers must not act); observations and ticks wait.
        for fut, at in replies:
            if not fut.done():
                if at is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)
        for item in items:
            if item.reply is None and item.event is not None:
                if len(self._held) >= self.max_held:
                    self._held.popleft()
                    self.dropped_while_degraded += 1
                self._held.append(item)
        if first:
            self.on_store_health(exc)
    def _observe(self, events: list[Event], now: float, out: list[RecordedEvent]) -> None:
        recs = [self._apply(ev, out) for ev in events]
        for ev in self.decider.observed(self.state, recs, now):
            self._decide(ev, now, out)

    def _apply(self, ev: Event, out: list[RecordedEvent]) -> RecordedEvent:
        rec = RecordedEvent(self.state.position + 1, ev.type, ev.ts, ev.component, ev.incident, dict(ev.data))
        self.state.apply(rec)
        out.append(rec)
        return rec

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

    async def _rebuild(self) -> None:
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
        AnalysisContext.from_config(config, taxonomy),
    )
