"""How the drill events read to a person: a drill's start, its faults and its verdict."""

from __future__ import annotations

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.render import lines


@lines(T.DRILL_STARTED)
def _started(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    radius = ", ".join(d.get("radius", []))
    return f"DRILL {d.get('drill')} {d.get('name')!r} started: blast radius {radius}"


@lines(T.DRILL_FAULT_INJECTED, level="warning")
@lines(T.DRILL_FAULT_REVERTED)
def _fault(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    f = d.get("fault") or {}
    verb = "injected" if rec.type == T.DRILL_FAULT_INJECTED else "reverted"
    detail = f" ({f['detail']})" if f.get("detail") else ""
    return f"DRILL {d.get('drill')}: {who}: fault {f.get('kind')} {verb}{detail}"


@lines(T.DRILL_FINISHED)
def _finished(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    why = "; ".join(d.get("reasons", [])[:3])
    return f"DRILL {d.get('drill')} {d.get('name')!r} {str(d.get('verdict')).upper()}" + (
        f": {why}" if why else ""
    )
