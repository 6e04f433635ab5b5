"""``healer log``: print the decision log, and follow it by position (no re-scans).

Following is cheap: each query seeks by position (the primary key; with ``--component`` or
``--incident`` their indexes), and between queries only ``PRAGMA data_version`` is asked,
which changes when the daemon commits — an idle log costs one tiny pragma per poll.
``-v`` adds each event's explanation (:mod:`healer.report.explain`), joined with its incident
folded from that incident's own events (an indexed read, cached per incident).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from healer.errors import HealerError
from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import FleetState, IncidentView
from healer.knowledge.store import SQLiteEventStore
from healer.render import STYLES, describe, level_of, timestamp

POLL = 0.2
PAGE = 1000
LEVELS = ("debug", "info", "warning", "error")
_RANK = {name: i for i, name in enumerate(LEVELS)}
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_AGO_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Since:
    """Where to start: after a log position, or at the first event at or after a time."""

    position: int = 0
    ts: float | None = None


def parse_since(text: str | int | None, now: float) -> Since:
    """``1200`` (a log position), ``10m`` / ``2h`` / ``90s`` / ``1d`` (ago), or an ISO time."""
    if text is None:
        return Since()
    if isinstance(text, int):
        return Since(position=text)
    value = text.strip().lstrip("#")
    if value.isdigit():
        return Since(position=int(value))
    m = _AGO.match(value)
    if m:
        return Since(ts=now - float(m.group(1)) * _AGO_UNITS[m.group(2)])
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise HealerError(
            f"--since {text!r}: expected a log position (1200), a time ago (10m, 2h) "
            "or an ISO time (2026-11-22T10:00:00Z; without a zone it is UTC, like the log)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return Since(ts=when.timestamp())


async def resolve_since(store: SQLiteEventStore, since: Since) -> int:
    """The position to read after."""
    if since.ts is None:
        return since.position
    return await position_before(store, since.ts)


async def position_before(store: SQLiteEventStore, ts: float) -> int:
    """The last position recorded before ``ts``, by binary search over positions.

    The control loop stamps every event with its batch's time, so ``ts`` does not decrease
    along the log (short of the wall clock being set back): ~20 point reads for a million events.
    """
    lo, hi = 0, await store.last_position()
    while lo < hi:
        mid = (lo + hi + 1) // 2
        at = await store.ts_at(mid)
        if at is not None and at < ts:
            lo = mid
        else:
            hi = mid - 1
    return lo


class IncidentFolds:
    """Each incident folded from its own events (indexed reads), to explain its decisions."""

    def __init__(self, store: SQLiteEventStore, keep: int = 256) -> None:
        self._store = store
        self._keep = keep
        self._states: OrderedDict[int, FleetState] = OrderedDict()

    async def view_at(self, rec: RecordedEvent) -> IncidentView | None:
        if rec.incident is None:
            return None
        state = self._states.pop(rec.incident, None)
        if state is None or state.position > rec.position:
            state = FleetState()
        if state.position < rec.position:
            for ev in await self._store.read_where(state.position, incident=rec.incident, until=rec.position):
                state.apply(ev)
        self._states[rec.incident] = state
        while len(self._states) > self._keep:
            self._states.popitem(last=False)
        return state.incidents.get(rec.incident)


class Printer:
    def __init__(self, *, as_json: bool, verbose: bool) -> None:
        from rich.console import Console

        self.as_json = as_json
        self.verbose = verbose
        self.tty = sys.stdout.isatty() and not as_json
        self.console = Console(highlight=False, soft_wrap=True)

    def emit(self, ev: RecordedEvent, level: str, explanation: dict[str, Any] | None) -> None:
        from healer.report.explain import render_lines

        if self.as_json:
            doc = {**ev.as_dict(), "level": level, "text": describe(ev)}
            if explanation is not None:
                doc["explain"] = explanation
            sys.stdout.write(json.dumps(doc, sort_keys=True, default=str) + "\n")
            sys.stdout.flush()
            return
        line = f"{timestamp(ev.ts)} #{ev.position:<6} {ev.type:<28} {describe(ev)}"
        detail = ["    " + text for text in render_lines(explanation)] if explanation else []
        if self.tty:
            from rich.text import Text

            self.console.print(Text(line, style=STYLES[level]))
            for text in detail:
                self.console.print(Text(text, style="dim"))
        else:
            sys.stdout.write("\n".join([line, *detail]) + "\n")
            sys.stdout.flush()


async def follow_log(state_dir: Path, args: argparse.Namespace) -> int:
    store = await SQLiteEventStore.open(state_dir, readonly=True)
    try:
        return await _follow(store, args)
    except BrokenPipeError:  # `healer log | head`: the reader left, that is not an error
        return 0
    finally:
        await store.close()


async def _follow(store: SQLiteEventStore, args: argparse.Namespace) -> int:
    from healer.report.explain import explain

    min_rank = _RANK[getattr(args, "level", None) or "debug"]
    printer = Printer(as_json=args.json, verbose=args.verbose)
    folds = IncidentFolds(store)
    after = await resolve_since(store, parse_since(args.since, time.time()))
    if args.lines is not None:
        after = max(after, await store.last_position() - args.lines)
    while True:
        version = await store.data_version()
        while True:  # drain everything recorded so far, a page at a time
            page = await store.read_where(after, component=args.component, incident=args.incident, limit=PAGE)
            for ev in page:
                after = ev.position
                level = level_of(ev)
                if _RANK.get(level, 1) < min_rank:
                    continue
                explanation = None
                if args.verbose:
                    explanation = explain(ev, await folds.view_at(ev))
                printer.emit(ev, level, explanation)
            if len(page) < PAGE:
                break
        if not args.follow:
            return 0
        # Another process commits: there is nothing to wait on but the pragma (one cheap read).
        while await store.data_version() == version:  # noqa: ASYNC110
            await asyncio.sleep(POLL)
