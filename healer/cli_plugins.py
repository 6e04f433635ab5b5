"""``healer plugins``: the installed actuators, where each comes from, and which were refused."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plugins", help="installed actuator plugins: origin, version, refused or blocked")
    p.add_argument("-c", "--config", type=Path, help="apply this config's execute.blocked_actuators")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--strict", action="store_true", help="exit 1 when any plugin was refused")
    p.set_defaults(func=cmd_plugins)


def cmd_plugins(args: argparse.Namespace) -> int:
    from healer.execute.registry import inspect_entry_points

    blocked: list[str] = []
    if args.config is not None:
        from healer.config import load_config

        blocked = list(load_config(args.config).execute.blocked_actuators)
    infos, _ = inspect_entry_points(blocked)
    infos.sort(key=lambda i: (i.status != "loaded", i.name, i.distribution))
    refused = [i for i in infos if i.status == "refused"]
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 1 if args.strict and refused else 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"actuators ({sum(i.status == 'loaded' for i in infos)} loaded)")
    for col in ("name", "status", "distribution", "version", "idempotent", "timeout", "actions", "hooks"):
        table.add_column(col, no_wrap=col != "actions")
    style = {"loaded": "green", "refused": "bold red", "blocked": "yellow"}
    for i in infos:
        loaded = i.status == "loaded"
        table.add_row(
            i.name,
            f"[{style[i.status]}]{i.status}[/]",
            i.distribution,
            i.version,
            ("yes" if i.idempotent else "no") if loaded else "-",
            f"{i.default_timeout:g}s" if loaded and i.default_timeout else "-",
            ", ".join(i.actions) or "-",
            ", ".join(h for h, on in (("compensate", i.compensates), ("verify", i.verifies)) if on) or "-",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped: no terminal width to fit, keep rows whole
    console.print(table)
    for i in infos:
        if i.status != "loaded":
            console.print(f"[{style[i.status]}]{i.name}[/]: {i.reason}", highlight=False, soft_wrap=True)
    return 1 if args.strict and refused else 0
