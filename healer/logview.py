"""``healer log``: print the event log, and follow it by position (no re-scans)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from healer.knowledge.events import RecordedEvent
from healer.knowledge.store import SQLiteEventStore
from healer.render import STYLES, describe, level_of, timestamp

POLL = 0.2


def _wanted(ev: RecordedEvent, args: argparse.Namespace) -> bool:
    if args.component and ev.component != args.component:
        return False
    return not (args.incident is not None and ev.incident != args.incident)


async def follow_log(state_dir: Path, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    tty = sys.stdout.isatty() and not args.json
    store = await SQLiteEventStore.open(state_dir, readonly=True)
    try:
        after = args.since
        if args.lines is not None:
            after = max(after, await store.last_position() - args.lines)
        while True:
            for ev in await store.read(after, 1000):
                after = ev.position
                if not _wanted(ev, args):
                    continue
                if args.json:
                    print(json.dumps(ev.as_dict(), sort_keys=True), flush=True)
                    continue
                level = level_of(ev)
                line = f"{timestamp(ev.ts)} #{ev.position:<6} {ev.type:<28} {describe(ev)}"
                if tty:
                    console.print(f"[{STYLES[level]}]{escape(line)}[/]")
                    if args.verbose:
                        console.print_json(json.dumps(dict(ev.data), default=str))
                else:
                    print(line, flush=True)
                    if args.verbose:
                        print("    " + json.dumps(dict(ev.data), sort_keys=True, default=str), flush=True)
            if not args.follow:
                return 0
            await asyncio.sleep(POLL)
    finally:
        await store.close()
