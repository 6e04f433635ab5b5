"""The side-effect ledger: what an agent did to the world, and how to undo it.

One JSON-lines file per agent, ``checkpoints/agents/AGENT/ledger.jsonl``, appended and fsynced by
the agent library (:mod:`healer.agent.state`) *before* the action (``intent``) and after it
(``outcome``), like the executor's own journal. The daemon reads it only after the agent has been
halted, so the list it compensates cannot grow under it.

    {"type": "intent", "key": K, "after_seq": 3, "kind": "compensatable" | "read_only" | "pivot",
     "what": "book order A", "compensation": {"actuator", "action", "params"}, "ts": ...}
    {"type": "outcome", "key": K, "ok": true, "result": {...}, "ts": ...}

``undone.jsonl`` next to it is the daemon's journal of compensations that completed (effect key,
compensation key, incident): a rollback never runs a compensation twice, even across kill -9
(the one in flight at the crash is re-sent with the same idempotency key, which the service
deduplicates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from healer.dr.store import CheckpointStore, append_line, read_lines

Kind = Literal["compensatable", "read_only", "pivot"]
KINDS = ("compensatable", "read_only", "pivot")


@dataclass(frozen=True)
class Effect:
    key: str
    after_seq: int
    kind: str
    what: str
    ts: float
    compensation: dict[str, Any] | None = None
    outcome: bool | None = None  # None: intent without outcome (the agent died mid-action)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def happened(self) -> bool | None:
        return self.outcome

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "after_seq": self.after_seq,
            "kind": self.kind,
            "what": self.what,
            "ts": self.ts,
            "compensation": self.compensation,
            "outcome": self.outcome,
        }


def ledger_path(store: CheckpointStore, agent: str) -> Path:
    return store.agent_dir(agent) / "ledger.jsonl"


def undone_path(store: CheckpointStore, agent: str) -> Path:
    return store.agent_dir(agent) / "undone.jsonl"


def effects(store: CheckpointStore, agent: str) -> list[Effect]:
    """The agent's effects in the order their intents were recorded."""
    intents: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    for doc in read_lines(ledger_path(store, agent)):
        key = doc.get("key")
        if not isinstance(key, str):
            continue
        if doc.get("type") == "intent" and key not in intents:
            intents[key] = doc
        elif doc.get("type") == "outcome":
            outcomes[key] = doc
    out = []
    for key, doc in intents.items():
        o = outcomes.get(key)
        comp = doc.get("compensation")
        out.append(
            Effect(
                key,
                int(doc.get("after_seq") or 0),
                str(doc.get("kind", "compensatable")),
                str(doc.get("what", "")),
                float(doc.get("ts") or 0.0),
                comp if isinstance(comp, dict) else None,
                None if o is None else bool(o.get("ok")),
                dict(o.get("result") or {}) if o is not None else {},
            )
        )
    return out


def undone(store: CheckpointStore, agent: str) -> dict[str, dict[str, Any]]:
    return {str(d["effect"]): d for d in read_lines(undone_path(store, agent)) if "effect" in d}


def record_undone(store: CheckpointStore, agent: str, doc: dict[str, Any]) -> None:
    append_line(undone_path(store, agent), doc)


def last_pivot_seq(store: CheckpointStore, agent: str) -> int | None:
    """The checkpoint the latest pivot happened after: no rollback may go to it or before."""
    pivots = [e.after_seq for e in effects(store, agent) if e.kind == "pivot" and e.outcome is not False]
    return max(pivots) if pivots else None


def to_compensate(store: CheckpointStore, agent: str, restored_seq: int) -> list[Effect]:
    """Compensatable effects recorded after checkpoint ``restored_seq``, newest first, not yet
    undone; an intent without an outcome is included (it may have happened: its compensation
    must tolerate that it did not)."""
    done = undone(store, agent)
    todo = [
        e
        for e in effects(store, agent)
        if e.after_seq >= restored_seq
        and e.kind == "compensatable"
        and e.compensation is not None
        and e.outcome is not False
        and e.key not in done
    ]
    return list(reversed(todo))
