"""``healer checkpoint list | verify | restore``: the checkpoint catalogue for operators.

``restore`` moves an agent's HEAD to a verified checkpoint (the agent reads it back on its next
start); it does not stop the agent nor compensate its ledger: that is the ``rollback`` strategy.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from healer.dr.store import CheckpointError, CheckpointStore


def objectives_cell(o: dict[str, Any]) -> str:
    rto = o.get("rto_achieved")
    rpo = o.get("rpo_achieved")
    parts = [f"RTO {rto:.2f}s" + (" MISSED" if o.get("rto_missed") else "") if rto is not None else "RTO -"]
    if rpo is not None:
        parts.append(f"RPO {rpo:.2f}s" + (" MISSED" if o.get("rpo_missed") else ""))
    return ", ".join(parts)


def register(sub: Any, state_dir_of: Callable[[argparse.Namespace], Path]) -> None:
    cp = sub.add_parser("checkpoint", help="agent checkpoints: list, verify, restore")
    verbs = cp.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, help in (
        ("list", "checkpoints per agent, HEAD marked"),
        ("verify", "re-hash checkpoints; corrupt ones are marked (exit 1 if any)"),
        ("restore", "move an agent's HEAD to a verified checkpoint"),
    ):
        sp = verbs.add_parser(verb, help=help)
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("-c", "--config", type=Path, help="the YAML config file (its state_dir is read)")
        g.add_argument("--state-dir", type=Path, help="this state directory")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        if verb == "restore":
            sp.add_argument("agent")
            sp.add_argument("seq", type=int)
        else:
            sp.add_argument("agent", nargs="?", help="only this agent")
        sp.set_defaults(func=lambda a, v=verb: _run(v, a, state_dir_of(a)))


def _run(verb: str, args: argparse.Namespace, state_dir: Path) -> int:
    store = CheckpointStore.in_state_dir(state_dir)
    agents = [args.agent] if args.agent else store.agents()
    if verb == "restore":
        cp = store.get(args.agent, args.seq)
        reason = store.verify(cp)
        if reason is not None:
            raise CheckpointError(f"checkpoint {args.agent}#{args.seq} is corrupt ({reason}): not restored")
        store.set_head(args.agent, cp)
        print(
            json.dumps({"agent": args.agent, "head": cp.seq})
            if args.json
            else f"{args.agent}: HEAD -> #{cp.seq}"
        )
        return 0
    rows = []
    bad = 0
    for agent in agents:
        head = store.head(agent)
        for c in store.list(agent):
            reason = store.verify(c) if verb == "verify" else store.corrupt_reason(c)
            bad += reason is not None
            rows.append({**c.as_dict(), "head": c.seq == head, "corrupt": reason})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            mark = "*" if r["head"] else " "
            state = f"CORRUPT: {r['corrupt']}" if r["corrupt"] else "ok"
            name = f"{r['agent']}#{r['seq']}"
            print(f"{mark} {name:<24} {r['label'] or '-':<16} {r['size']:>10}B  {r['sha256'][:12]}  {state}")
    return 1 if verb == "verify" and bad else 0
