"""RPO / RTO achieved per incident, against the component's targets (``rpo:`` / ``rto:``).

RPO achieved = how old the restored checkpoint was when the failure was detected (the state
lost); RTO achieved = detection -> verified healthy (resolved). Measured once, when the incident
resolves, for components with a target or a restored checkpoint, and recorded as
``incident.objectives_measured`` so ``healer incidents`` and the postmortem read it from the log.
"""

from __future__ import annotations

from typing import Any

from healer.config import HealerConfig
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState


def objectives_event(state: FleetState, rec: RecordedEvent, cfg: HealerConfig, now: float) -> Event | None:
    inc = state.incidents.get(rec.incident or 0)
    if inc is None:
        return None
    comp = cfg.components.get(inc.component)
    rto_target = comp.rto if comp is not None else None
    rpo_target = comp.rpo if comp is not None else None
    if rto_target is None and rpo_target is None and inc.rpo_achieved is None:
        return None  # nothing to compare: incident.resolved already carries the RTO achieved
    rto = rec.ts - inc.opened_at
    rpo = inc.rpo_achieved
    data: dict[str, Any] = {
        "rto_achieved": round(rto, 6),
        "rto_target": rto_target,
        "rto_missed": bool(rto_target is not None and rto > rto_target),
        "rpo_achieved": None if rpo is None else round(rpo, 6),
        "rpo_target": rpo_target,
        "rpo_missed": bool(rpo_target is not None and rpo is not None and rpo > rpo_target),
        "detected_at": inc.opened_at,
        "healthy_at": rec.ts,
        "restored_checkpoint_at": inc.rpo_checkpoint_at,
    }
    return Event(T.OBJECTIVES_MEASURED, now, inc.component, inc.id, data)
