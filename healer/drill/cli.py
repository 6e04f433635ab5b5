"""``healer drill FILE -c CONFIG [--dry-run] [--report-dir DIR]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    dr = sub.add_parser(
        "drill",
        help="run a DR drill against the running daemon: inject faults, grade recovery against RTO",
        description=(
            "Exit status: 0 passed, 1 failed, 2 invalid drill or config, 3 aborted (blast radius "
            "breached or the drill could not proceed), 4 steady state did not hold (nothing "
            "injected), 130 interrupted (every injected fault reverted)."
        ),
    )
    dr.add_argument("file", type=Path, help="the drill file (YAML)")
    dr.add_argument("-c", "--config", type=Path, required=True, help="the daemon's config file")
    dr.add_argument("--dry-run", action="store_true", help="print what would be done; touch nothing")
    dr.add_argument(
        "--report-dir", type=Path, default=None, help="where to write the report (default: ./drill-reports)"
    )
    dr.set_defaults(func=cmd_drill)


def cmd_drill(args: argparse.Namespace) -> int:
    from healer.drill.runner import EXIT_INVALID, run
    from healer.drill.spec import DrillError

    try:
        return run(args.config, args.file, dry=args.dry_run, report_dir=args.report_dir)
    except DrillError as exc:
        print(f"healer: {exc}", file=sys.stderr)
        return EXIT_INVALID
