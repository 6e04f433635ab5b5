"""How events read to a person: one line per event, for the daemon's log and ``healer log``.

Each stage says how its own events read, in its ``describe`` module (``healer/monitor/describe.py``
and so on), by registering a formatter per event type with :func:`lines`; the daemon's own
events (start, stop, processes) are here. An event type nobody registered still reads as its
type and a summary of its data. The stages' modules are imported on first use, from the one list
in ``_STAGES``: they import this module for :func:`lines`, so importing them here at the top
would be circular.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib
from collections.abc import Callable
from typing import Any

from healer.errors import HealerError
from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent

# (event, who: its component or "healer", its "[incident N] " prefix or "") -> the line
Line = Callable[[RecordedEvent, str, str], str]
Level = str | Callable[[RecordedEvent], str]

_STAGES = (
    "healer.monitor.describe",
    "healer.analyze.describe",
    "healer.plan.describe",
    "healer.execute.describe",
    "healer.dr.describe",
    "healer.drill.describe",
)
_LINES: dict[str, Line] = {}
_LEVELS: dict[str, Level] = {}

STYLES = {"error": "bold red", "warning": "yellow", "info": "green", "debug": "dim"}


def lines(*types: str, level: Level = "info") -> Callable[[Line], Line]:
    """Register the decorated function as how events of ``types`` read, at ``level`` (a name,
    or a function of the event for types whose level depends on what they carry)."""

    def register(fn: Line) -> Line:
        for etype in types:
            if etype in _LINES:
                raise HealerError(
                    f"two formatters for {etype}: {_LINES[etype].__qualname__}, {fn.__qualname__}"
                )
            _LINES[etype] = fn
            _LEVELS[etype] = level
        return fn

    return register


@functools.cache
def _load_stages() -> None:
    for module in _STAGES:
        importlib.import_module(module)


def _registry() -> dict[str, Line]:
    _load_stages()
    return _LINES


def level_of(rec: RecordedEvent) -> str:
    _registry()
    level = _LEVELS.get(rec.type, "info")
    return level if isinstance(level, str) else level(rec)


def describe(rec: RecordedEvent) -> str:
    who = rec.component or "healer"
    inc = f"[incident {rec.incident}] " if rec.incident is not None else ""
    line = _registry().get(rec.type)
    if line is not None:
        return line(rec, who, inc)
    # Event types without a line of their own still say what they carry.
    summary = _data_summary(rec.data)
    return f"{inc}{who}: {rec.type}" + (f" ({summary})" if summary else "")


# -- the daemon's own events ------------------------------------------------------------------------
@lines(T.DAEMON_STARTED)
def _daemon_started(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    at = d.get("rebuilt_position")
    return f"healer {d.get('version')} started, pid {d.get('pid')}, rebuilt state at #{at}"


@lines(T.DAEMON_STOPPED)
def _daemon_stopped(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"healer stopped, pid {rec.data.get('pid')}"


@lines(T.PROCESS_STARTED)
def _process_started(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    return f"{who}: process started, pid {d.get('pid')}" + (" (restart)" if d.get("restart") else "")


@lines(T.PROCESS_ADOPTED)
def _process_adopted(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{who}: adopted running process pid {rec.data.get('pid')}"


@lines(T.PROCESS_EXITED, level=lambda rec: "info" if rec.data.get("expected") else "warning")
def _process_exited(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    how = f"signal {d['signal']}" if "signal" in d else f"status {d.get('exit_code', '?')}"
    return f"{who}: process {d.get('pid')} exited ({how}){' as requested' if d.get('expected') else ''}"


# -- helpers for the stages' lines ------------------------------------------------------------------
def _data_summary(d: Any, limit: int = 120) -> str:
    parts = []
    for key in sorted(d):
        value = d[key]
        if isinstance(value, dict | list):
            continue  # nested detail belongs to `healer log -v`
        parts.append(f"{key}={value}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def timestamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="milliseconds")
