"""CLI commands of the Plan stage: policy check / schema / explain, approvals, silences, reload.

``policy`` commands read files (and, for explain, the event log read-only); ``approve``,
``deny``, ``silence`` and ``reload`` talk to the running daemon over its control socket, which
records each of them as an event with who asked.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import sys
import time
from pathlib import Path
from typing import Any

from healer.errors import ConfigError, PolicyError


def register(sub: Any) -> Any:
    """Add this module's commands to the top-level subparsers of ``healer``; return the
    ``policy`` subcommands' parsers, so other modules can add theirs (backtest)."""
    pol = sub.add_parser("policy", help="policy authoring tools: check, schema, explain")
    psub = pol.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    chk = psub.add_parser("check", help="validate policy files; exit 1 on any error")
    chk.add_argument("paths", nargs="+", type=Path, help="files or directories of *.yaml")
    chk.add_argument(
        "-c",
        "--config",
        type=Path,
        help="also check against this config's components (the probes `verify.probes` names)",
    )
    chk.add_argument(
        "--no-plugins",
        action="store_true",
        help="do not check actuator names against the installed plugins",
    )
    chk.set_defaults(func=cmd_policy_check)
    sch = psub.add_parser("schema", help="print the policy JSON Schema (for yaml-language-server)")
    sch.add_argument("-o", "--output", type=Path, help="write it to this file instead")
    sch.set_defaults(func=cmd_policy_schema)
    exp = psub.add_parser("explain", help="dry run: what healer would do now for a failure")
    exp.add_argument("-c", "--config", type=Path, required=True, help="the YAML config file")
    exp.add_argument("--component", required=True)
    exp.add_argument("--failure", required=True, metavar="CLASS", help="failure class, e.g. crash")
    exp.add_argument(
        "--evidence",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="diagnosis evidence (repeatable; values are read as YAML scalars: 3, true, text)",
    )
    exp.add_argument("--at", metavar="TIME", help="decide as of this ISO 8601 time (default: now)")
    exp.add_argument("--json", action="store_true", help="machine-readable output")
    exp.set_defaults(func=cmd_policy_explain)

    def control(name: str, help: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = sub.add_parser(name, help=help)
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("-c", "--config", type=Path, help="the YAML config file (its state_dir is used)")
        g.add_argument("--state-dir", type=Path, help="the daemon's state directory")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    ap = control("approve", "approve a pending remediation step")
    ap.add_argument("id", type=int, help="the approval id (healer approvals / healer status)")
    ap.add_argument("--reason", default="", help="why (recorded)")
    ap.set_defaults(func=cmd_approve, grant=True)
    dn = control("deny", "deny a pending remediation step (the chain moves on)")
    dn.add_argument("id", type=int)
    dn.add_argument("--reason", required=True, help="why (recorded)")
    dn.set_defaults(func=cmd_approve, grant=False)
    al = control("approvals", "pending approvals (read from the event log)")
    al.add_argument("--all", action="store_true", help="decided ones too")
    al.set_defaults(func=cmd_approvals)
    si = control("silence", "no automatic action on a component for a while; or list / lift silences")
    si.add_argument("component", nargs="?", help="a component name or glob")
    si.add_argument("--for", dest="duration", metavar="DURATION", help="e.g. 30m, 2h")
    si.add_argument("--reason", default="", help="why (recorded)")
    si.add_argument("--list", action="store_true", help="list active silences")
    si.add_argument("--expire", type=int, metavar="ID", help="lift this silence now")
    si.set_defaults(func=cmd_silence)
    rl = control("reload", "re-read the policies (like SIGHUP); an invalid set changes nothing")
    rl.set_defaults(func=cmd_reload)
    return psub


# -- policy check / schema ------------------------------------------------------------------------
def cmd_policy_check(args: argparse.Namespace) -> int:
    from healer.plan.policy import fleet_of, load_policies

    fleet = None
    if args.config is not None:
        from healer.config import load_config

        fleet = fleet_of(load_config(args.config))
    try:
        ps = load_policies(args.paths, installed=_ALL if args.no_plugins else None, fleet=fleet)
    except PolicyError as exc:
        for p in exc.problems:
            print(p)
        print(f"{len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(ps.policies)} policies in {len(ps.files)} file(s), hash {ps.hash}")
    return 0


class _Everything(frozenset[str]):
    """An actuator set that contains every name (``--no-plugins``)."""

    def __contains__(self, item: object) -> bool:
        return True


_ALL = _Everything()


def cmd_policy_schema(args: argparse.Namespace) -> int:
    from healer.plan.policy import policy_schema_text

    text = policy_schema_text()
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
        return 0
    sys.stdout.write(text)
    return 0


# -- explain ------------------------------------------------------------------------------------------
def _parse_evidence(items: list[str]) -> dict[str, Any]:
    from healer.yamldoc import YamlDocumentError, parse_yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--evidence {item!r}: expected KEY=VALUE")
        try:
            value = parse_yaml(raw, "--evidence").plain() if raw else ""
        except YamlDocumentError:
            value = raw
        out[key] = value if isinstance(value, str | int | float | bool) or value is None else raw
    return out


def _parse_at(text: str | None) -> float:
    if text is None:
        return time.time()
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--at {text!r}: expected an ISO 8601 time such as 2025-06-01T03:00:00+02:00"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a local time on this machine
    return when.timestamp()


async def _snapshot(state_dir: Path) -> Any:
    from healer.knowledge.projections import FleetState
    from healer.knowledge.store import SQLiteEventStore, rebuild_state

    if not (state_dir / "events.db").exists():
        return FleetState()
    store = await SQLiteEventStore.open(state_dir, readonly=True)
    try:
        return await rebuild_state(store)
    finally:
        await store.close()


def cmd_policy_explain(args: argparse.Namespace) -> int:
    import asyncio

    from healer.config import load_config
    from healer.plan.explain import explain
    from healer.plan.policy import fleet_of, load_policies

    cfg = load_config(args.config)
    if args.component not in cfg.components:
        near = difflib.get_close_matches(args.component, list(cfg.components), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"no component {args.component!r} in {args.config}{hint}")
    policies = load_policies([cfg.policies_dir], fleet=fleet_of(cfg))
    evidence = _parse_evidence(args.evidence)
    now = _parse_at(args.at)
    state = asyncio.run(_snapshot(cfg.state_dir))
    labels = {n: dict(c.labels) for n, c in cfg.components.items()}
    result = explain(state, args.component, args.failure, evidence, policies, now, labels)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
        return 0
    _print_explanation(result.as_dict(), len(policies.policies), len(policies.files))
    return 0


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print_explanation(r: dict[str, Any], n_policies: int, n_files: int) -> None:
    ev = ", ".join(f"{k}={v!r}" for k, v in r["evidence"].items()) or "none"
    print(f"explain: {r['component']} fails with {r['failure']!r} at {_when(r['now'])} (evidence: {ev})")
    print(f"policy set {r['policies_hash']}: {n_policies} policies in {n_files} file(s)")
    if r.get("note"):
        print(f"note: {r['note']}")
    if r["decision"] == "none":
        print("decision: NO ACTION")
        return
    for rej in r["rejected"]:
        print(f"  rejected {rej['policy']} ({rej['file']}): {rej['reason']}")
    if r["policy"]:
        print(f"matched: {r['policy']} ({r['policy_file']}), step {r['step']}")
    for s in r["skipped"]:
        print(f"  passed over step {s['step']} ({s['strategy']}): {s['reason']}")
    if r["guardrails"]:
        print("guardrails:")
    for c in r["guardrails"]:
        mark = "ok     " if c["ok"] else "BLOCKED"
        if "limit" in c["state"] and c["state"]["limit"] is None:
            state = "not set"
        else:
            state = ", ".join(f"{k}={v}" for k, v in c["state"].items() if v not in (None, [], {}))
        line = f"  {mark} {c['guardrail']:<22} {state}"
        if not c["ok"]:
            line += f"\n          {c['reason']}; next allowed: {_when(c.get('next_allowed_at'))}"
        print(line)
    for e in r["events"]:
        d = e["data"]
        if e["type"] == "incident.planned":
            print(f"decision: PLAN {d['strategy']} attempt {d['attempt']}/{d['max_attempts']}")
            for a in d["actions"]:
                params = f" {json.dumps(a['params'], sort_keys=True)}" if a["params"] else ""
                print(f"  run {a['actuator']}.{a['action']}{params} (timeout {a['timeout']:g}s)")
            stable = f", then stay healthy {d['verify_stable_for']:g}s" if d.get("verify_stable_for") else ""
            which = f"probes {', '.join(d['verify_probes'])}" if d.get("verify_probes") else "probes"
            print(f"  verify: {which} pass within {d['verify_timeout']:g}s{stable}")
        elif e["type"] == "incident.deferred":
            print(f"decision: WAIT ({d['guardrail']}): {d['reason']}")
            print(f"  next allowed: {_when(d.get('next_allowed_at'))}")
        elif e["type"] == "approval.requested":
            print(
                f"decision: ASK A HUMAN for {d['strategy']} "
                f"(deadline {d['timeout']:g}s, default {d['default']})"
            )
        elif e["type"] == "incident.escalated":
            print(f"decision: ESCALATE: {d['reason']}")
    if not r["events"]:
        print(f"decision: {r['decision'].upper().replace('_', ' ')}")


# -- control socket commands ------------------------------------------------------------------------
def _socket(args: argparse.Namespace) -> Path:
    from healer.control import socket_path

    if args.state_dir is not None:
        return socket_path(Path(args.state_dir))
    from healer.config import load_config

    return socket_path(load_config(args.config).state_dir)


def _send(args: argparse.Namespace, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from healer.control import request

    answer = request(_socket(args), payload)
    if args.json:
        print(json.dumps(answer, indent=2, default=str))
    elif not answer.get("ok"):
        print(f"healer: {answer.get('error') or 'refused'}", file=sys.stderr)
        for p in answer.get("problems") or []:
            print(f"  {p}", file=sys.stderr)
    return (0 if answer.get("ok") else 1), answer


def cmd_approve(args: argparse.Namespace) -> int:
    op = "approve" if args.grant else "deny"
    rc, answer = _send(args, {"op": op, "id": args.id, "reason": args.reason})
    if rc == 0 and not args.json:
        print(f"approval {args.id}: {answer.get('status')} (recorded at #{answer.get('position')})")
    return rc


def cmd_silence(args: argparse.Namespace) -> int:
    if args.list:
        rc, answer = _send(args, {"op": "silences"})
        if rc == 0 and not args.json:
            rows = answer.get("silences", [])
            if not rows:
                print("no active silences")
            for s in rows:
                who = (s.get("by") or {}).get("user", "?")
                print(
                    f"{s['id']:>4}  {s['component']:<24} until {_when(s['until'])}  by {who}: {s['reason']}"
                )
        return rc
    if args.expire is not None:
        rc, answer = _send(args, {"op": "unsilence", "id": args.expire, "reason": args.reason})
        if rc == 0 and not args.json:
            print(f"silence {args.expire} lifted (recorded at #{answer.get('position')})")
        return rc
    if not args.component or not args.duration:
        raise ConfigError("healer silence COMPONENT --for DURATION [--reason TEXT] (or --list, --expire ID)")
    rc, answer = _send(
        args, {"op": "silence", "component": args.component, "for": args.duration, "reason": args.reason}
    )
    if rc == 0 and not args.json:
        print(
            f"silence {answer['silence']}: no automatic action on {', '.join(answer['matches'])} "
            f"until {_when(answer['until'])}"
        )
    return rc


def cmd_reload(args: argparse.Namespace) -> int:
    rc, answer = _send(args, {"op": "reload"})
    if rc == 0 and not args.json:
        print(f"policies reloaded: hash {answer.get('hash')}")
    return rc


def cmd_approvals(args: argparse.Namespace) -> int:
    import asyncio

    from healer.cli import _state_dir

    state = asyncio.run(_snapshot(_state_dir(args)))
    rows = approvals_json(state, pending_only=not args.all)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no pending approvals")
    for a in rows:
        print(
            f"{a['id']:>4}  {a['status']:<9} incident {a['incident']} {a['component']}: {a['strategy']} "
            f"(policy {a['policy']}, step {a['step']}) deadline {a['deadline']}, default {a['default']}"
        )
    return 0


# -- pieces of `healer status` ---------------------------------------------------------------------
def approvals_json(state: Any, pending_only: bool = True) -> list[dict[str, Any]]:
    from healer.render import iso

    out = []
    for a in sorted(state.approvals.values(), key=lambda a: a.id):
        if pending_only and a.status != "pending":
            continue
        out.append(
            {
                "id": a.id,
                "incident": a.incident,
                "component": a.component,
                "strategy": a.strategy,
                "policy": a.policy,
                "step": a.step,
                "status": a.status,
                "requested_at": iso(a.requested_at),
                "deadline": iso(a.deadline),
                "default": a.default,
                "decided_by": a.decided_by,
                "reason": a.reason,
                "actions": a.actions,
            }
        )
    return out


def silences_json(state: Any, now: float) -> list[dict[str, Any]]:
    from healer.render import iso

    return [
        {
            "id": s.id,
            "component": s.component,
            "until": iso(s.until),
            "reason": s.reason,
            "by": s.by,
        }
        for s in sorted(state.silences.values(), key=lambda s: s.id)
        if s.active(now)
    ]


def print_status_extras(approvals: list[dict[str, Any]], silences: list[dict[str, Any]]) -> None:
    for a in approvals:
        print(
            f"approval {a['id']} pending: {a['strategy']} on {a['component']} (incident {a['incident']}), "
            f"deadline {a['deadline']}, default {a['default']}: "
            f"healer approve {a['id']} | healer deny {a['id']} --reason ..."
        )
    for s in silences:
        print(f"silence {s['id']}: {s['component']} until {s['until']} ({s['reason'] or 'no reason'})")
