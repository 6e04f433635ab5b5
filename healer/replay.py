"""Replay: rebuild every projection from the log, and prove the recorded decisions deterministic.

``ControlLoop._decide`` takes one input event, applies it, asks the Decider for follow-ups with
the batch's ``now``, and applies those in turn (first in, first out). The loop stamps each input
with that ``now``, so the log holds everything a decision was made from: :class:`DecisionWalker`
walks the log in order and re-derives every follow-up the same way. The first recorded event
that is not what Analyze and Plan decide today is the divergence (Temporal's
NondeterminismError, for a remediation daemon).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from healer.analyze.analyzer import analyze_deadlines
from healer.errors import HealerError, StoreError
from healer.fsutil import ensure_private_dir
from healer.knowledge.events import OBSERVATIONS, Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.knowledge.store import DB_NAME, loads, paused_gc
from healer.loop import Decider

# Only Analyze and Plan make these: one that no earlier event explains is a divergence.
DECISION_ONLY = frozenset(
    {
        T.INCIDENT_DETECTED,
        T.INCIDENT_DIAGNOSED,
        T.INCIDENT_VERIFIED,
        T.INCIDENT_RESOLVED,
        T.INCIDENT_PLANNED,
        T.INCIDENT_ESCALATED,
        T.INCIDENT_DEFERRED,
        T.APPROVAL_REQUESTED,
        T.SYMPTOM_SUPPRESSED,
        T.SYMPTOM_SETTLING,
        T.SYMPTOM_RELEASED,
    }
)


def executor_written(rec: RecordedEvent) -> bool:
    """An escalation the Executor records itself (a compensation out of retries, an uncertain
    recovery) is an input to the loop like a step's outcome, not a decision replay re-makes."""
    return rec.type == T.INCIDENT_ESCALATED and rec.data.get("by") == "execute"


class CannotVerify(HealerError):
    """The log was decided with inputs replay does not have (another policy set)."""

    def __init__(self, position: int, message: str) -> None:
        self.position = position
        super().__init__(f"cannot verify from log position {position}: {message}")


@dataclass(frozen=True)
class Divergence:
    position: int  # the first recorded event that differs (or where a decision is missing)
    reason: str
    expected: dict[str, Any] | None  # what Analyze and Plan decide now
    recorded: dict[str, Any] | None  # what the log holds at ``position``

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "reason": self.reason,
            "expected": self.expected,
            "recorded": self.recorded,
        }

    def describe(self) -> str:
        lines = [f"nondeterminism at log position {self.position}: {self.reason}"]
        if self.recorded is not None:
            lines.append("  recorded: " + json.dumps(self.recorded, sort_keys=True, default=str))
        if self.expected is not None:
            lines.append("  decided now: " + json.dumps(self.expected, sort_keys=True, default=str))
        return "\n".join(lines)


def same(want: Event, rec: RecordedEvent) -> bool:
    """Would ``want``, recorded, be ``rec``? (Data goes through JSON in the store.)"""
    if (want.type, want.ts, want.component, want.incident) != (rec.type, rec.ts, rec.component, rec.incident):
        return False
    data = dict(want.data)
    # Most decisions compare equal as they are; tuples and non-string keys need the JSON trip.
    return data == rec.data or json.loads(json.dumps(data, sort_keys=True)) == rec.data


def normalised(ev: Event | RecordedEvent, position: int | None = None) -> dict[str, Any]:
    """An event as the store would give it back (data through JSON), for exact comparison."""
    out: dict[str, Any] = {
        "type": str(ev.type),
        "ts": ev.ts,
        "component": ev.component,
        "incident": ev.incident,
        "data": json.loads(json.dumps(dict(ev.data), sort_keys=True)),
    }
    if position is not None:
        out["position"] = position
    return out


@dataclass
class DecisionWalker:
    """Folds the log into a snapshot while re-deciding every decision the loop made.

    It mirrors ``ControlLoop._prepare``: a run of observations is applied, then decided on at
    once (``Decider.observed``); any other input is decided on by itself (``follow_ups``); a tick
    decides deadlines (``analyze_deadlines``) and then each incident ``Decider.due`` returns
    (``revisit``). Every root a batch decides is followed by its whole subtree (first in, first
    out) before the next root, as ``ControlLoop._decide`` does.

    Batches and ticks are not logged, so the walker infers them. The loop stamps every
    observation with its batch's ``now``, so a run of observations ends at the first event that
    is not an observation or whose ``ts`` differs (the next batch): a run that decided nothing is
    told from the next batch's run. The loop checks deadlines at the end of a batch, so a tick
    never splits a run. Ticks are tried lazily: an event no earlier event explains is checked
    against what a tick at its ``ts`` (the tick's ``now``, stamped on its decisions) would
    decide first. An escalation the Executor wrote itself (``by: execute``) is an input.

    ``feed`` returns the first divergence; after one, the walker's expectations are no longer
    meaningful and the caller stops.
    """

    decider: Decider
    state: FleetState = field(default_factory=FleetState)
    check_policies: bool = True
    _expected: deque[tuple[Event, float]] = field(default_factory=deque)
    _roots: Iterator[Event] | None = None  # the roots a batch decided that are still to come
    _roots_from: str = ""  # what decided them, for the divergence's reason
    _roots_now: float = 0.0
    _run: list[RecordedEvent] = field(default_factory=list)  # observations not yet decided on
    decisions: int = 0
    inputs: int = 0

    def feed(self, rec: RecordedEvent) -> Divergence | None:
        if self._run and (rec.type not in OBSERVATIONS or rec.ts != self._run[-1].ts):
            # The run ended: at an event of another kind, or at the next batch (another ``now``:
            # the loop stamps observations with their batch's). It was decided with its own ts.
            self._decide_run(self._run[-1].ts)
        if self._expected:
            want, now = self._expected.popleft()
            if not same(want, rec):
                return self._diverged(rec, want, "the recorded decision differs from the one made now")
            self.decisions += 1
            return self._apply(rec, now)
        if self._roots is not None:
            # A batch's roots in progress: the next one (decided against the state its previous
            # roots left, as the loop does) must come before any new input.
            root = self._next_root()
            if root is not None:
                if not same(root, rec):
                    return self._diverged(rec, root, f"a decision made on {self._roots_from} differs")
                self.decisions += 1
                return self._apply(rec, self._roots_now)
        if rec.type in OBSERVATIONS:
            # Decided on with the rest of its run, once the run ends.
            self.inputs += 1
            return self._apply(rec, rec.ts, decide=False)
        now = rec.ts  # the loop stamps every decision and every input with its batch's `now`
        # A root may be the first decision of a deadline tick (ticks themselves are not logged).
        self._start_roots(self._tick_roots(now), "a deadline tick", now)
        first = self._next_root()
        if first is not None and same(first, rec):
            self.decisions += 1
            return self._apply(rec, now)
        self._roots = None
        if rec.type in DECISION_ONLY and not executor_written(rec):
            if first is not None and (first.type, first.incident) == (rec.type, rec.incident):
                return self._diverged(rec, first, "a decision made on a deadline tick differs")
            return self._diverged(rec, None, f"{rec.type} is recorded, but no event before it leads to it")
        self.inputs += 1  # a step's intent or outcome, a daemon, control or recovery event
        return self._apply(rec, now)

    def _decide_run(self, now: float) -> None:
        """The run of observations just ended: its decisions (roots) come next."""
        run, self._run = self._run, []
        where = f"{run[0].position}" if len(run) == 1 else f"{run[0].position}-{run[-1].position}"
        roots = self.decider.observed(self.state, run, now)
        self._start_roots(iter(roots), f"the observations at log position {where}", now)

    def _start_roots(self, roots: Iterator[Event], source: str, now: float) -> None:
        self._roots, self._roots_from, self._roots_now = roots, source, now

    def _tick_roots(self, now: float) -> Iterator[Event]:
        """What ``ControlLoop._prepare`` decides on a tick, lazily, in the loop's order."""
        yield from analyze_deadlines(self.state, now, self.decider.context())
        for iid in self.decider.due(self.state, now):
            yield from self.decider.revisit(self.state, iid, now)

    def _next_root(self) -> Event | None:
        if self._roots is None:
            return None
        nxt = next(self._roots, None)
        if nxt is None:
            self._roots = None
            return None
        # ``ControlLoop._decide`` stamps each root with the batch's ``now``.
        return Event(nxt.type, self._roots_now, nxt.component, nxt.incident, nxt.data)

    def finish(self) -> Divergence | None:
        """The log must not end while decisions are still owed (batches are atomic)."""
        if self._run:
            self._decide_run(self._run[-1].ts)
        want = self._expected[0][0] if self._expected else self._next_root()
        if want is not None:
            return Divergence(
                self.state.position + 1,
                "the log ends where a decision was expected",
                normalised(want, self.state.position + 1),
                None,
            )
        return None

    def _apply(self, rec: RecordedEvent, now: float, decide: bool = True) -> Divergence | None:
        before = self.state.digest() if rec.type in (T.DAEMON_STARTED, T.DAEMON_STOPPED) else None
        if before is not None:
            key = "rebuilt_digest" if rec.type == T.DAEMON_STARTED else "digest"
            recorded = rec.data.get(key)
            if recorded is not None and recorded != before:
                return Divergence(
                    rec.position,
                    f"projection digest differs: the daemon recorded {key} {recorded}, "
                    f"the fold of the log before it gives {before}",
                    None,
                    normalised(rec, rec.position),
                )
        if self.check_policies and rec.type == T.POLICIES_LOADED:
            have = self.decider.policies.hash
            if rec.data.get("hash") != have:
                raise CannotVerify(
                    rec.position,
                    f"the policies in force then (hash {rec.data.get('hash')}) are not the policy "
                    f"files given now (hash {have}); verify with the policies of that time",
                )
        self.state.apply(rec)
        if not decide:
            self._run.append(rec)
            return None
        follow = self.decider.follow_ups(self.state, rec, now)
        self._expected.extend((ev, now) for ev in follow)
        return None

    def _diverged(self, rec: RecordedEvent, want: Event | None, reason: str) -> Divergence:
        return Divergence(
            rec.position,
            reason,
            normalised(want, rec.position) if want is not None else None,
            normalised(rec, rec.position),
        )


# -- rebuilding projections into a scratch store ----------------------------------------------
@dataclass
class ReplayReport:
    events: int
    position: int
    digest: str
    seconds: float
    scratch: Path | None
    rows: dict[str, int]
    verified: bool | None = None
    decisions: int = 0
    inputs: int = 0
    divergence: Divergence | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "position": self.position,
            "digest": self.digest,
            "seconds": round(self.seconds, 3),
            "scratch_store": str(self.scratch) if self.scratch else None,
            "projection_rows": self.rows,
            "verified": self.verified,
            "decisions_checked": self.decisions,
            "inputs": self.inputs,
            "divergence": self.divergence.as_dict() if self.divergence else None,
        }


def log_events(state_dir: Path, page: int = 5000) -> Iterator[RecordedEvent]:
    """The whole log, in order, read-only and synchronously.

    Replay is a batch job over one file: a plain sqlite3 cursor read page by page is several
    times cheaper per event than the daemon's async reads, which it does not need.
    """
    db = state_dir / DB_NAME
    if not db.exists():
        raise StoreError(f"no event store at {db} (has the daemon run with this state directory?)")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open event store {db}: {exc}") from exc
    new = tuple.__new__  # RecordedEvent is a named tuple: skip its __new__'s extra call
    fast_loads = orjson.loads
    try:
        # Columns in RecordedEvent's field order.
        cur = conn.execute(
            "SELECT position, type, ts, component, incident, data FROM events ORDER BY position"
        )
        while rows := cur.fetchmany(page):
            for r in rows:
                try:
                    data = fast_loads(r[5])
                except orjson.JSONDecodeError:
                    data = loads(r[5])
                yield new(RecordedEvent, (r[0], r[1], r[2], r[3], r[4], data))
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read event store {db}: {exc}") from exc
    finally:
        conn.close()


def replay(
    events: Iterable[RecordedEvent],
    *,
    scratch: Path | None = None,
    decider: Decider | None = None,
    digest: bool = True,
) -> ReplayReport:
    """Fold the whole log; with ``decider``, re-decide every follow-up and stop at a divergence.

    ``digest`` adds the snapshot digest the daemon records at start and stop (it costs a full
    serialisation of the state: skip it when only the projections are wanted).
    """
    t0 = time.perf_counter()
    state = FleetState()
    walker = DecisionWalker(decider, state) if decider is not None else None
    count = 0
    divergence: Divergence | None = None
    # Paused until the end: serialising the state allocates too, and a full collection would
    # re-scan the millions of objects the fold built (half of writing the scratch store).
    with paused_gc():
        if walker is None:
            apply = state.apply
            for ev in events:
                count += 1
                apply(ev)
        else:
            for ev in events:
                count += 1
                divergence = walker.feed(ev)
                if divergence is not None:
                    break
        if walker is not None and divergence is None:
            divergence = walker.finish()
        snapshot_digest = state.digest() if digest else ""
        rows = write_scratch(scratch, state, snapshot_digest) if scratch is not None else {}
    return ReplayReport(
        events=count,
        position=state.position,
        digest=snapshot_digest,
        seconds=time.perf_counter() - t0,
        scratch=scratch,
        rows=rows,
        verified=None if walker is None else divergence is None,
        decisions=walker.decisions if walker else 0,
        inputs=walker.inputs if walker else 0,
        divergence=divergence,
    )


def _plain(obj: Any) -> Any:
    # The JSON encoder walks dataclasses through their __dict__: no deep copies (asdict's cost).
    return vars(obj) if hasattr(obj, "__dict__") else str(obj)


def _to_json(value: Any) -> str:
    # orjson writes a dataclass's fields in their declared order (dicts sorted) and is several
    # times faster than the standard encoder walking __dict__: 75,000 incidents took ~4 s.
    try:
        return orjson.dumps(value, option=_ROW_OPTIONS, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError: what it cannot encode (e.g. > 64-bit ints)
        return json.dumps(value, sort_keys=True, default=_plain)


_ROW_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def projection_rows(state: FleetState) -> Iterable[tuple[str, str, str]]:
    """Every field of every projection as (projection, key, JSON) rows: new fields come along."""
    for f in fields(state):
        value = getattr(state, f.name)
        if isinstance(value, dict):
            for key, item in value.items():
                yield f"fleet.{f.name}", str(key), _to_json(item)
        else:
            yield f"fleet.{f.name}", "", _to_json(value)


def write_scratch(path: Path, state: FleetState, digest: str = "") -> dict[str, int]:
    """Materialise the projections in a fresh SQLite file (0600 in a 0700 directory)."""
    ensure_private_dir(path.parent)
    if path.exists():
        raise HealerError(f"scratch store {path} exists already; choose a new path")
    fd_conn = sqlite3.connect(path)
    try:
        path.chmod(0o600)
        # A scratch store is rebuilt, never recovered: no journal, no fsync.
        fd_conn.execute("PRAGMA journal_mode = OFF")
        fd_conn.execute("PRAGMA synchronous = OFF")
        fd_conn.execute(
            "CREATE TABLE projections (name TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
            "PRIMARY KEY (name, key))"
        )
        fd_conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        rows = list(projection_rows(state))
        fd_conn.executemany("INSERT INTO projections VALUES (?, ?, ?)", rows)
        fd_conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("position", str(state.position)), ("digest", digest)],
        )
        fd_conn.commit()
    finally:
        fd_conn.close()
    counts: dict[str, int] = {}
    for name, _, _ in rows:
        counts[name] = counts.get(name, 0) + 1
    return counts
