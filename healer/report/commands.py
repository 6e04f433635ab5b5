"""Operator commands: ``postmortem``, ``replay``, ``policy backtest`` (registered by the CLI)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from healer.errors import ConfigError

EXIT_DIVERGED = 1
EXIT_CANNOT_VERIFY = 3

Reader = Callable[[str, str], argparse.ArgumentParser]


def register(sub: Any, reader: Reader, policy_sub: Any) -> None:
    """Add the operator commands to the CLI's subparsers."""
    pm = reader("postmortem", "write the postmortem of an incident (md, json or html)")
    pm.add_argument("incident", type=int, metavar="ID")
    pm.add_argument("--format", choices=("md", "json", "html"), default="md")
    pm.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    pm.set_defaults(func=cmd_postmortem)

    rp = reader("replay", "rebuild every projection from the event log into a scratch store")
    rp.add_argument(
        "--verify",
        action="store_true",
        help="re-run Analyze and Plan over the log and fail at the first decision that differs (needs -c)",
    )
    rp.add_argument("--into", type=Path, help="the scratch store file to write (default: a temporary file)")
    rp.add_argument(
        "--digest",
        action="store_true",
        help="also print the snapshot digest the daemon records at stop (serialises the whole state)",
    )
    rp.set_defaults(func=cmd_replay)

    bt = policy_sub.add_parser("backtest", help="what draft policies would have decided in recorded history")
    bt.add_argument("-c", "--config", type=Path, required=True, help="the YAML config file")
    bt.add_argument("--policies", type=Path, required=True, metavar="DRAFT_DIR", help="the draft policies")
    bt.add_argument("--since", default="0", metavar="POSITION|TIME", help="only decisions after this")
    bt.add_argument("--json", action="store_true", help="machine-readable output")
    bt.set_defaults(func=cmd_backtest)


def _state_dir_and_config(args: argparse.Namespace) -> tuple[Path, Any]:
    if getattr(args, "config", None) is not None:
        from healer.cli import load_checked_config

        cfg = load_checked_config(args.config)
        return cfg.state_dir, cfg
    return Path(args.state_dir), None


# -- postmortem ------------------------------------------------------------------------------------
def cmd_postmortem(args: argparse.Namespace) -> int:
    from healer.knowledge.store import SQLiteEventStore
    from healer.report import postmortem
    from healer.report.formats import render

    state_dir, cfg = _state_dir_and_config(args)
    targets = {}
    if cfg is not None:
        targets = {n: postmortem.Targets(c.rto, c.rpo) for n, c in cfg.components.items()}

    async def build() -> dict[str, Any]:
        store = await SQLiteEventStore.open(state_dir, readonly=True)
        try:
            return postmortem.build(await postmortem.load(store, args.incident), targets)
        finally:
            await store.close()

    text = render(asyncio.run(build()), "json" if args.json else args.format)
    if args.output is not None:
        _write_private(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _write_private(path: Path, text: str) -> None:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


# -- replay ------------------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    from healer.replay import CannotVerify, log_events, replay

    state_dir, cfg = _state_dir_and_config(args)
    decider = None
    if args.verify:
        if cfg is None:
            raise ConfigError("replay --verify needs the config (-c): its policies and components decide")
        from healer.analyze.taxonomy import load_taxonomy
        from healer.loop import decider_for
        from healer.plan.policy import load_policies

        decider = decider_for(cfg, load_policies([cfg.policies_dir]), load_taxonomy())

    with tempfile.TemporaryDirectory(prefix="healer-replay-") as tmp:
        scratch = args.into if args.into is not None else Path(tmp) / "projections.db"

        try:
            report = replay(log_events(state_dir), scratch=scratch, decider=decider, digest=args.digest)
        except CannotVerify as exc:
            print(f"healer: {exc}", file=sys.stderr)
            return EXIT_CANNOT_VERIFY
        if args.into is None:
            report.scratch = None  # it is gone with the temporary directory
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True, default=str))
    else:
        rows = ", ".join(f"{k}: {v}" for k, v in sorted(report.rows.items()))
        digest = f"; projections digest {report.digest}" if report.digest else ""
        print(f"replayed {report.events} events (to #{report.position}) in {report.seconds:.2f}s{digest}")
        print(f"projection rows: {rows}" + (f" in {args.into}" if args.into else ""))
        if report.verified is True:
            print(f"verified: {report.decisions} decisions re-made identically from {report.inputs} inputs")
        elif report.divergence is not None:
            print(report.divergence.describe(), file=sys.stderr)
    return EXIT_DIVERGED if report.verified is False else 0


# -- policy backtest ------------------------------------------------------------------------------------
def cmd_backtest(args: argparse.Namespace) -> int:
    from healer.backtest import backtest
    from healer.cli import load_checked_config
    from healer.knowledge.store import SQLiteEventStore
    from healer.logview import parse_since, resolve_since
    from healer.plan.policy import load_policies

    cfg = load_checked_config(args.config)
    draft = load_policies([args.policies])
    labels = {n: c.labels for n, c in cfg.components.items()}

    async def go() -> Any:
        store = await SQLiteEventStore.open(cfg.state_dir, readonly=True)
        try:
            since = await resolve_since(store, parse_since(args.since, time.time()))
            return await backtest(store, draft, labels, since)
        finally:
            await store.close()

    report = asyncio.run(go())
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True, default=str))
        return 0
    by_incident: dict[int, list[Any]] = {}
    for c in report.changes:
        by_incident.setdefault(c.incident, []).append(c)
    for iid, changes in sorted(by_incident.items()):
        first = changes[0]
        print(f"incident {iid}  {first.component}  {first.failure_class}")
        for c in changes:
            print(f"  #{c.position} {c.trigger}:")
            print(f"      recorded #{c.recorded_position}: {c.old}")
            print(f"      draft     → {c.new}")
    print(
        f"summary: {len(report.changes)} of {report.examined} decisions would change, in "
        f"{len(by_incident)} of {len(report.incidents)} incidents (draft policies hash {report.draft_hash})"
    )
    return 0
