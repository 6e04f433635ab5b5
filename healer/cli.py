"""The shell: parse arguments, load config, then run the daemon or read projections."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from healer import __version__
from healer.errors import ConfigError, HealerError, PolicyError, StoreError

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        rc: int = args.func(args)
        return rc
    except ConfigError as exc:
        print(f"healer: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PolicyError as exc:
        print("healer: invalid policies:\n" + "\n".join(f"  {p}" for p in exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(f"healer: {exc}", file=sys.stderr)
        return 1
    except HealerError as exc:
        print(f"healer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="healer", description="Self-healing and disaster recovery for AI-agent fleets."
    )
    p.add_argument("--version", action="version", version=f"healer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", type=Path, required=True, help="the YAML config file")
    run.set_defaults(func=cmd_run)

    def reader(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("-c", "--config", type=Path, help="the YAML config file (its state_dir is read)")
        g.add_argument("--state-dir", type=Path, help="read this state directory directly")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    st = reader("status", "components and open incidents")
    st.set_defaults(func=cmd_status)
    inc = reader("incidents", "incidents with their actions")
    inc.add_argument("--open", action="store_true", help="only incidents not resolved")
    inc.set_defaults(func=cmd_incidents)
    lg = reader("log", "the decision log (every event, in order)")
    lg.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events as they are recorded"
    )
    lg.add_argument("-n", "--lines", type=int, default=None, help="start with the last N events")
    lg.add_argument("--component", help="only events of this component")
    lg.add_argument("--incident", type=int, help="only events of this incident")
    lg.add_argument(
        "--since",
        default="0",
        metavar="POSITION|TIME",
        help="only events after this log position, or since a time: 10m, 2h, 2026-11-22T10:00:00Z",
    )
    lg.add_argument(
        "--level", choices=("debug", "info", "warning", "error"), help="only events at this level or above"
    )
    lg.add_argument("-v", "--verbose", action="store_true", help="explain each event's decision")
    lg.set_defaults(func=cmd_log)

    demo = sub.add_parser("demo", help="start a small local fleet, break it, and watch healer fix it")
    demo.add_argument(
        "--state-dir", type=Path, help="where to keep the demo's state (default: a new temp dir)"
    )
    demo.add_argument("--timeout", type=float, default=45.0, help="give up after this many seconds")
    demo.set_defaults(func=cmd_demo)

    from healer.cli_plan import register as register_plan_commands

    # policy check/schema/explain, approve, deny, approvals, silence, reload
    psub = register_plan_commands(sub)

    from healer.report.commands import register as register_operator_commands

    register_operator_commands(sub, reader, psub)  # postmortem, replay, policy backtest
    from healer.dr.cli import register as register_dr_commands

    register_dr_commands(sub, _state_dir)  # checkpoint list|verify|restore

    from healer.cli_plugins import add_parser as add_plugins_parser

    add_plugins_parser(sub)

    from healer.drill.cli import add_parser as add_drill_parser

    add_drill_parser(sub)  # healer drill FILE -c CONFIG [--dry-run]
    return p


# -- run ----------------------------------------------------------------------------------------
def load_checked_config(path: Path) -> Any:
    from healer.config import load_config
    from healer.monitor.probes import ProbeRegistry

    registry = ProbeRegistry.discover()
    return load_config(path, extra_checks=registry.config_problems)


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    # Until the daemon's event loop takes over, remember a stop request instead of dying of it.
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    cfg = load_checked_config(args.config)
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe request is noise
    from healer.daemon import Daemon

    return asyncio.run(Daemon(cfg, early_signals=early).run())


# -- readers --------------------------------------------------------------------------------------
def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    from healer.config import load_config

    return load_config(args.config).state_dir


async def _open_ro(state_dir: Path) -> Any:
    from healer.knowledge.store import SQLiteEventStore

    return await SQLiteEventStore.open(state_dir, readonly=True)


async def _load_state(state_dir: Path) -> Any:
    from healer.knowledge.store import rebuild_state

    store = await _open_ro(state_dir)
    try:
        return await rebuild_state(store)
    finally:
        await store.close()


def incident_json(inc: Any) -> dict[str, Any]:
    from healer.render import iso

    return {
        "id": inc.id,
        "component": inc.component,
        "failure_class": inc.failure_class,
        "root_cause": inc.root_cause,
        "symptoms": inc.symptoms,
        "blast_radius": inc.blast_radius,
        "status": inc.status,
        "phase": inc.phase,
        "opened_at": iso(inc.opened_at),
        "resolved_at": iso(inc.resolved_at),
        "escalated_at": iso(inc.escalated_at),
        "escalation_reason": inc.escalation_reason,
        "drill": inc.drill,
        "resolution": inc.resolution,
        "rto_achieved_s": inc.rto_achieved,
        "rpo_achieved_s": inc.rpo_achieved,
        "objectives": inc.objectives,
        "effects_undone": inc.effects_undone,
        "policy": inc.policy,
        "policy_hash": inc.policy_hash,
        "evidence": inc.evidence,
        "actions": [
            {
                "actuator": a.actuator,
                "action": a.action,
                "attempt": a.attempt,
                "idempotency_key": a.key,
                "started_at": iso(a.started_at),
                "finished_at": iso(a.finished_at),
                "outcome": a.outcome or "in flight",
                "error": a.detail.get("error"),
            }
            for a in inc.actions
        ],
    }


def cmd_incidents(args: argparse.Namespace) -> int:
    state = asyncio.run(_load_state(_state_dir(args)))
    incidents = [i for i in state.incidents.values() if not args.open or i.status != "resolved"]
    rows = [incident_json(i) for i in sorted(incidents, key=lambda i: i.id)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"incidents ({len(rows)})")
    for col in ("id", "component", "class", "status", "opened", "actions", "RTO", "note"):
        table.add_column(col)
    for r, inc in zip(rows, sorted(incidents, key=lambda i: i.id), strict=True):
        acts = ", ".join(f"{a['action']}:{a['outcome']}" for a in r["actions"]) or "-"
        rto = f"{inc.rto_achieved:.2f}s" if inc.rto_achieved is not None else "-"
        if inc.objectives is not None:
            from healer.dr.cli import objectives_cell

            rto = objectives_cell(inc.objectives)
        note = r["escalation_reason"] or r["resolution"] or ""
        style = {"resolved": "green", "escalated": "red"}.get(r["status"], "yellow")
        table.add_row(
            str(r["id"]),
            r["component"],
            str(r["failure_class"]),
            f"[{style}]{r['status']}[/]",
            str(r["opened_at"]),
            acts,
            rto,
            note,
        )
    Console().print(table)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from healer.report.status import run_status

    return run_status(args, _state_dir(args))


def cmd_log(args: argparse.Namespace) -> int:
    from healer.logview import follow_log

    try:
        return asyncio.run(follow_log(_state_dir(args), args))
    except KeyboardInterrupt:
        return 0


# -- demo -------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from healer.demo.runner import run_demo

    return asyncio.run(run_demo(args.state_dir, timeout=args.timeout))
