"""The daemon's side of a drill: ``drill.*`` control requests become ``drill.*`` events.

The drill runner never writes the store; it asks the daemon, which records what it is told
through the control loop like every other input. The daemon checks what it can: names are
configured components, a fault stays inside the blast radius the drill declared at its start,
a finished drill takes no more faults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from healer.clock import Clock
from healer.errors import HealerError
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.loop import ControlLoop

VERDICTS = frozenset({"passed", "failed", "aborted"})
MAX_DURATION = 86400.0
MAX_TEXT = 500
MAX_REASONS = 50


class DrillControlError(HealerError):
    """A drill request the daemon refuses."""


async def handle_drill(
    req: dict[str, Any],
    by: dict[str, Any],
    loop: ControlLoop,
    state: FleetState,
    clock: Clock,
    components: Sequence[str],
) -> dict[str, Any]:
    try:
        op = req["op"]
        if op == "drill.start":
            return await _start(req, by, loop, state, clock, components)
        if op == "drill.fault":
            return await _fault(req, loop, state, clock)
        if op == "drill.finish":
            return await _finish(req, loop, state, clock)
        raise DrillControlError(f"unknown request {op!r}")
    except DrillControlError as exc:
        return {"ok": False, "error": str(exc)}


async def _start(
    req: dict[str, Any],
    by: dict[str, Any],
    loop: ControlLoop,
    state: FleetState,
    clock: Clock,
    components: Sequence[str],
) -> dict[str, Any]:
    name = _text(req.get("name"), "drill name")
    radius = req.get("radius")
    if not isinstance(radius, list) or not radius or not all(isinstance(c, str) for c in radius):
        raise DrillControlError("a drill needs a blast radius: a non-empty list of component names")
    unknown = sorted(set(radius) - set(components))
    if unknown:
        raise DrillControlError(f"blast radius names unknown components: {', '.join(unknown)}")
    duration = req.get("duration")
    if (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 < duration <= MAX_DURATION
    ):
        raise DrillControlError(f"a drill lasts more than 0s and at most {MAX_DURATION:g}s")
    did = state.next_drill
    now = clock.wall()
    data = {
        "drill": did,
        "name": name,
        "radius": sorted(set(radius)),
        "deadline": now + float(duration),
        "file": _text(req.get("file") or "", "file"),
        "by": by,
    }
    rec = await loop.record(Event(T.DRILL_STARTED, now, None, None, data), lambda st: st.next_drill == did)
    if rec is None:
        raise DrillControlError("another drill started at the same moment; try again")
    return {"ok": True, "drill": did, "position": rec.position, "deadline": data["deadline"]}


async def _fault(req: dict[str, Any], loop: ControlLoop, state: FleetState, clock: Clock) -> dict[str, Any]:
    did = _drill_id(req)
    drill = state.drills.get(did)
    if drill is None:
        raise DrillControlError(f"no drill {did}")
    phase = req.get("phase")
    if phase not in ("injected", "reverted"):
        raise DrillControlError(f"phase is injected or reverted, not {phase!r}")
    fault = req.get("fault")
    if not isinstance(fault, dict):
        raise DrillControlError("fault: expected an object")
    target = fault.get("target")
    # A fleet-wide fault (the broker) has no target; a targeted one stays inside the radius.
    if target is not None and (not isinstance(target, str) or target not in drill.radius):
        raise DrillControlError(f"fault target {target!r} is outside drill {did}'s blast radius")
    if phase == "injected" and drill.finished_at is not None:
        raise DrillControlError(f"drill {did} is finished: no more faults")
    clean = {
        "index": _int(fault.get("index"), "fault index"),
        "kind": _text(fault.get("kind"), "fault kind"),
        "target": target,
        "detail": _text(fault.get("detail") or "", "fault detail"),
    }
    kind = T.DRILL_FAULT_INJECTED if phase == "injected" else T.DRILL_FAULT_REVERTED
    rec = await loop.record(Event(kind, clock.wall(), target, None, {"drill": did, "fault": clean}))
    assert rec is not None  # no precondition: always recorded
    return {"ok": True, "position": rec.position}


async def _finish(req: dict[str, Any], loop: ControlLoop, state: FleetState, clock: Clock) -> dict[str, Any]:
    did = _drill_id(req)
    drill = state.drills.get(did)
    if drill is None:
        raise DrillControlError(f"no drill {did}")
    if drill.finished_at is not None:
        raise DrillControlError(f"drill {did} is already finished ({drill.verdict})")
    verdict = req.get("verdict")
    if verdict not in VERDICTS:
        raise DrillControlError(f"verdict is one of {', '.join(sorted(VERDICTS))}, not {verdict!r}")
    reasons = req.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise DrillControlError("reasons: expected a list of strings")
    data = {
        "drill": did,
        "name": drill.name,
        "verdict": verdict,
        "reasons": [r[:MAX_TEXT] for r in reasons[:MAX_REASONS]],
        "report": _text(req.get("report") or "", "report path"),
    }

    def unfinished(st: FleetState) -> bool:
        cur = st.drills.get(did)
        return cur is not None and cur.finished_at is None

    rec = await loop.record(Event(T.DRILL_FINISHED, clock.wall(), None, None, data), unfinished)
    if rec is None:
        raise DrillControlError(f"drill {did} was finished meanwhile")
    return {"ok": True, "position": rec.position}


def _drill_id(req: dict[str, Any]) -> int:
    return _int(req.get("drill"), "drill id")


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DrillControlError(f"invalid {what}: {value!r}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DrillControlError(f"{what}: expected text")
    return value[:MAX_TEXT]
