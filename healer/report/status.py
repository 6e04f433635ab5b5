"""``healer status``: components with health, open incidents, and what else the log holds.

Components and incidents come from the fleet projection. Approvals, silences, breakers and the
disruption budget are read generically from their event families (any event type naming them)
until their own projections exist: the latest event per key is shown, and an approval is
pending while its latest event is a request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import FleetState, IncidentView
from healer.knowledge.store import SQLiteEventStore
from healer.render import describe, iso

# family -> substrings of the event types that belong to it
FAMILIES: dict[str, tuple[str, ...]] = {
    "approvals": ("approv",),
    "silences": ("silenc", "maintenance"),
    "breakers": ("breaker",),
    "budget": ("budget",),
}
_CLOSED = ("ended", "removed", "expired", "cleared", "lifted", "cancelled", "canceled")


class Families:
    """The latest event per key of each family."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, RecordedEvent]] = {name: {} for name in FAMILIES}

    def apply(self, ev: RecordedEvent) -> None:
        for name, marks in FAMILIES.items():
            if any(m in ev.type for m in marks):
                self.latest[name][_key(name, ev)] = ev

    def view(self, now: float) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for name, items in self.latest.items():
            rows = []
            for key, ev in sorted(items.items()):
                if name == "approvals" and "request" not in ev.type:
                    continue  # decided or timed out: not pending
                if name == "silences" and (ev.type.endswith(_CLOSED) or _expired(ev.data, now)):
                    continue
                rows.append(
                    {
                        "key": key,
                        "type": ev.type,
                        "position": ev.position,
                        "at": iso(ev.ts),
                        # a silence on a pattern ("agent-*") names it in its data only
                        "component": ev.component or ev.data.get("component"),
                        "incident": ev.incident,
                        "state": ev.data.get("state"),
                        "text": describe(ev),
                        "data": dict(ev.data),
                    }
                )
            out["pending_approvals" if name == "approvals" else name] = rows
        return out


def _key(family: str, ev: RecordedEvent) -> str:
    if family == "budget":
        return "fleet"
    for k in ("approval", "approval_id", "silence", "silence_id", "breaker", "dependency", "id", "name"):
        if ev.data.get(k) is not None:
            return f"{ev.component or '-'}/{ev.data[k]}"
    return f"{ev.component or '-'}/{ev.incident if ev.incident is not None else '-'}"


def _expired(data: Mapping[str, Any], now: float) -> bool:
    until = data.get("until")
    return isinstance(until, int | float) and until <= now


async def load(state_dir: Path) -> tuple[FleetState, Families]:
    store = await SQLiteEventStore.open(state_dir, readonly=True)
    state, families = FleetState(), Families()
    try:
        async for ev in store.iterate():
            state.apply(ev)
            families.apply(ev)
    finally:
        await store.close()
    return state, families


def status_doc(state_dir: Path, state: FleetState, families: Families, now: float) -> dict[str, Any]:
    comps = {}
    for name, c in sorted(state.components.items()):
        failing = list(c.evidence.get("failing", [])) if c.health == "failing" else []
        comps[name] = {
            "health": c.health,
            "since": iso(c.health_since),
            "pid": c.pid if c.process_running else None,
            "restarts": c.restarts,
            "incident": state.active_incident.get(name),
            "failing_probes": failing,
        }
    open_incidents = [
        _incident(i, now)
        for i in sorted(state.incidents.values(), key=lambda i: i.id)
        if i.status != "resolved"
    ]
    return {
        "state_dir": str(state_dir),
        "position": state.position,
        "policies_hash": state.policies_hash,
        "components": comps,
        "open_incidents": open_incidents,
        **families.view(now),
        # From the projection itself (Plan, Monitor): exact, not just the latest event per key.
        "approvals_pending": _approvals(state),
        "mqtt": state.mqtt,
        "telemetry_dropped": dict(sorted(state.telemetry_dropped.items())),
    }


def _incident(inc: IncidentView, now: float) -> dict[str, Any]:
    plan = inc.plan or {}
    nb = plan.get("not_before")
    return {
        "id": inc.id,
        "component": inc.component,
        "failure_class": inc.failure_class,
        "root_cause": inc.root_cause,
        "symptoms": inc.symptoms,
        "status": inc.status,
        "phase": inc.phase,
        "opened_at": iso(inc.opened_at),
        "policy": inc.policy,
        "attempts_by_step": {str(k): v for k, v in sorted(inc.attempts.items())},
        "next": (
            f"{plan.get('strategy')} attempt {plan.get('attempt')}/{plan.get('max_attempts')}"
            if inc.phase == "planned"
            else None
        ),
        "next_allowed_at": iso(nb) if isinstance(nb, int | float) and inc.phase == "planned" else None,
        "escalation_reason": inc.escalation_reason,
        "actions": [f"{a.action}:{a.outcome or 'in flight'}" for a in inc.actions],
    }


def run_status(args: argparse.Namespace, state_dir: Path) -> int:
    state, families = asyncio.run(load(state_dir))
    doc = status_doc(state_dir, state, families, time.time())
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"healer status — {state_dir} (log position {state.position})")
    for col in ("component", "health", "since", "pid", "restarts", "incident", "failing probes"):
        table.add_column(col)
    for name, c in doc["components"].items():
        style = {"healthy": "green", "failing": "red"}.get(c["health"], "yellow")
        table.add_row(
            name,
            f"[{style}]{c['health']}[/]",
            str(c["since"]),
            str(c["pid"] or "-"),
            str(c["restarts"]),
            str(c["incident"] or "-"),
            ", ".join(c["failing_probes"]) or "-",
        )
    console.print(table)
    inc_table = Table(title=f"open or escalated incidents ({len(doc['open_incidents'])})")
    for col in ("id", "component", "class", "status", "phase", "opened", "actions", "next"):
        inc_table.add_column(col)
    for i in doc["open_incidents"]:
        style = "red" if i["status"] == "escalated" else "yellow"
        nxt = i["next"] or i["escalation_reason"] or "-"
        if i["next_allowed_at"]:
            nxt += f" not before {i['next_allowed_at']}"
        inc_table.add_row(
            str(i["id"]),
            i["component"],
            str(i["failure_class"]),
            f"[{style}]{i['status']}[/]",
            i["phase"],
            str(i["opened_at"]),
            ", ".join(i["actions"]) or "-",
            nxt,
        )
    console.print(inc_table)
    from healer.cli_plan import print_status_extras

    print_status_extras(doc["approvals_pending"], [])
    if state.mqtt is not None:
        link = state.mqtt
        console.print(f"MQTT link to {link.get('broker')}: {link['state']} since {iso(link['since'])}")
    if state.telemetry_dropped:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(state.telemetry_dropped.items()))
        console.print(f"telemetry dropped (bad input, all time): {counts}")
    for name in ("pending_approvals", "silences", "breakers", "budget"):
        rows = doc[name]
        if not rows:
            console.print(f"{name.replace('_', ' ')}: none")
            continue
        t = Table(title=f"{name.replace('_', ' ')} ({len(rows)})")
        for col in ("key", "at", "state", "event"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["key"], str(r["at"]), str(r["state"] or "-"), r["text"])
        console.print(t)
    return 0


def _approvals(state: FleetState) -> list[dict[str, Any]]:
    from healer.cli_plan import approvals_json

    return approvals_json(state)
