"""The control loop: the one place where events are decided, recorded and applied.

Every input (an observation, a step's intent or outcome, a deadline tick) goes through one
queue. For each, the pure stages decide follow-up events against the snapshot; the whole
batch is appended in one transaction; only then are actions dispatched. Because this loop is
the store's only writer, positions are known before the append. The next batch is decided
while the previous one commits, so the snapshot may be ahead of the log by two batches, never
for longer than a commit; nothing is acted on before its batch is durable, and a failed append
rebuilds the snapshot from the log.
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
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import EventStore, paused_gc, rebuild_state
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
class _Batch:
    items: list[_Input]
    decided: list[RecordedEvent]
    replies: list[tuple[asyncio.Future[RecordedEvent | None], int | None]]
    commit: asyncio.Future[list[RecordedEvent]] | None = None


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
    # Check a component's probes now (the Monitor's): called, once recorded, for the dependencies
    # a hold-down waits on, so their verdict comes at their next check rather than their turn.
    wake_probes: Callable[[str], None] | None = None
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
        # The batch whose append is in flight. The next batch is decided (in memory, CPU) while
        # the writer commits it (fsync, in SQLite's thread); the next append is issued, and
        # anything of either batch acted on, only once it is durable: a failed commit rebuilds
        # the snapshot from the log and holds the inputs of both.
        inflight: _Batch | None = None
        try:
            while True:
                items: list[_Input] = []
                if inflight is not None:
                    first = await self._next_or_committed(inflight)
                    if first is None:
                        await self._finish(inflight)
                        inflight = None
                        continue
                    items.append(first)
                elif self.degraded is None:
                    items.append(await self._queue.get())
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.retry_interval):
                            items.append(await self._queue.get())
                    items[:0] = self._held
                    self._held.clear()
                while len(items) < self.max_batch and not self._queue.empty():
                    items.append(self._queue.get_nowait())
                if not items:
                    continue
                # Deciding a batch allocates tens of thousands of long-lived, acyclic objects
                # (events, views, their data) and frees none in cycles: the collector's passes
                # over them mid-batch found nothing (~11 ms of a 1,000-failure storm, gen-1 passes
                # re-scanning the growing batch). Its next pass, after the batch, scans them once.
                with paused_gc():
                    batch = self._prepare(items)
                if inflight is not None:
                    ok = await self._finish(inflight, batch)
                    inflight = None
                    if not ok:
                        continue  # ``batch`` was decided on a snapshot that is gone: it is held
                batch.commit = self._start_append(batch)
                if self.degraded is not None:
                    await self._finish(batch)  # no pipelining while the store is in trouble
                else:
                    inflight = batch
        finally:
            if inflight is not None and inflight.commit is not None:
                # Cancelled with an append queued: the writer still commits it (as a cancelled
                # await of ``append`` always did); only its result goes unread.
                inflight.commit.add_done_callback(_retrieve)

    async def _next_or_committed(self, inflight: _Batch) -> _Input | None:
        """The next input if one comes before ``inflight`` is durable (to decide meanwhile);
        None once it is."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        if inflight.commit is None or inflight.commit.done():
            return None
        getter = asyncio.ensure_future(self._queue.get())
        try:
            await asyncio.wait((getter, inflight.commit), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()  # a cancelled get() takes nothing from the queue
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    def _start_append(self, batch: _Batch) -> asyncio.Future[list[RecordedEvent]] | None:
        if not batch.decided:
            return None
        return asyncio.ensure_future(self.store.append(batch.decided))

    def _prepare(self, items: list[_Input]) -> _Batch:
        """Decide one batch against the snapshot, applying every event to it (no I/O)."""
        now = self.clock.wall()
        decided: list[RecordedEvent] = []
        replies: list[tuple[asyncio.Future[RecordedEvent | None], int | None]] = []
        run: list[RecordedEvent] = []  # consecutive observations, applied, analysed together
        tick = False
        for item in items:
            ev = item.event
            if ev is None:
                # Deadlines are checked once, after everything else in the batch (same ``now``):
                # a tick in the middle would split a run of observations where the log cannot
                # show it, and replay could not re-derive the split.
                tick = True
                if item.reply is not None:
                    replies.append((item.reply, None))
                continue
            observation = ev.type in OBSERVATIONS
            if run and (not observation or item.precondition is not None):
                self._conclude(run, now, decided)  # the run's decisions come before this input
                run = []
            if item.precondition is not None and not item.precondition(self.state):
                if item.reply is not None:
                    replies.append((item.reply, None))
                continue
            index = len(decided)
            if observation:
                run.append(self._apply(_stamped(ev, now), decided))
            else:
                self._decide(ev, now, decided)
            if item.reply is not None:
                replies.append((item.reply, index))
        if run:
            self._conclude(run, now, decided)
        if tick:
            for root in analyze_deadlines(self.state, now, self.decider.context()):
                self._decide(root, now, decided)
            # One waiting incident at a time, each against the state the previous one left:
            # a freed budget slot goes to exactly one waiter.
            for iid in self.decider.due(self.state, now):
                for root in self.decider.revisit(self.state, iid, now):
                    self._decide(root, now, decided)
        return _Batch(items, decided, replies)

    async def _finish(self, batch: _Batch, after: _Batch | None = None) -> bool:
        """Wait for ``batch`` to be durable, then act on it. On a store error the snapshot is
        rebuilt from the log, and ``batch`` and ``after`` (decided on top of it) are held."""
        decided = batch.decided
        if batch.commit is not None:
            try:
                recorded = await batch.commit
                if len(recorded) != len(decided) or (
                    recorded
                    and (recorded[0].position, recorded[-1].position)
                    != (decided[0].position, decided[-1].position)
                ):
                    raise StoreError("event positions diverged: another writer is appending to this store")
            except StoreError as exc:
                items, replies = list(batch.items), list(batch.replies)
                count = len(decided)
                if after is not None:
                    items += after.items
                    replies += after.replies
                    count += len(after.decided)
                await self._store_failed(exc, items, replies, count)
                return False
            if self.degraded is not None:
                log.warning("event store writable again; %d held observation(s) recorded", len(batch.items))
                self.degraded = None
                self.on_store_health(None)
        wake = self.wake_probes
        for rec in decided:
            try:
                self.on_recorded(rec)
                if wake is not None and rec.type == T.SYMPTOM_SUPPRESSED and "wake" in rec.data:
                    for dependency in rec.data["wake"]:
                        wake(dependency)
            except Exception:  # a reporting bug must not stop the loop
                log.exception("handler for %s failed", rec.type)
        for fut, at in batch.replies:
            if not fut.done():
                fut.set_result(decided[at] if at is not None else None)
        return True

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

    def _conclude(self, run: list[RecordedEvent], now: float, out: list[RecordedEvent]) -> None:
        """A run of observations, all applied, ends: decide on it at once."""
        for ev in self.decider.observed(self.state, run, now):
            # Analyze's decisions are its own, fresh, like every follow-up: not copied again.
            self._decide(ev, now, out, owned=True)

    def _apply(self, ev: Event, out: list[RecordedEvent]) -> RecordedEvent:
        # Inputs' data is copied on the way in, decisions' is theirs: no copy here.
        rec = RecordedEvent(self.state.position + 1, ev.type, ev.ts, ev.component, ev.incident, ev.data)
        self.state.apply(rec)
        out.append(rec)
        return rec

    def _decide(self, event: Event, now: float, out: list[RecordedEvent], owned: bool = False) -> None:
        # The input is stamped with the batch's ``now``: every event's ``ts`` is the time its
        # decisions were made with, so replay re-derives ``now`` from the log alone, exactly.
        # Its data is copied unless it is a decision's own (``owned``), as follow-ups are.
        data = event.data if owned else dict(event.data)
        pending = deque([Event(event.type, now, event.component, event.incident, data)])
        follow_ups = self.decider.follow_ups
        while pending:
            rec = self._apply(pending.popleft(), out)
            pending.extend(follow_ups(self.state, rec, now))

    async def _rebuild(self) -> None:
        fresh = await rebuild_state(self.store)
        self.state.__dict__.update(fresh.__dict__)


def _stamped(ev: Event, now: float) -> Event:
    """An observation as recorded: ``ts`` is its batch's ``now`` (what its decisions were made
    with); when it was seen, if that differs, goes along as ``observed_at`` (detection metrics)."""
    data = dict(ev.data)  # the caller's: recorded as it is now
    if ev.ts != now:
        data.setdefault("observed_at", ev.ts)
    return Event(ev.type, now, ev.component, ev.incident, data)


def _retrieve(fut: asyncio.Future[list[RecordedEvent]]) -> None:
    if not fut.cancelled():
        fut.exception()


def decider_for(config: HealerConfig, policies: PolicySet, taxonomy: Taxonomy) -> Decider:
    """The Decider the daemon builds from ``config``: replay and backtest must decide alike."""
    return Decider(
        taxonomy,
        policies,
        {n: c.labels for n, c in config.components.items()},
        frozenset(n for n, c in config.components.items() if c.command is not None),
        AnalysisContext.from_config(config, taxonomy),
    )
