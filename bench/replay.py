"""Replay of 1,000,000 events into projections (goal: <= 10 s).

Run: python bench/replay.py [--events N] [--db DIR] [--repeat R]

The log is generated once through the real ControlLoop and SQLite store (bench/fleetgen.py:
crash and hang incidents across 1,000 components, each remediated, verified and resolved) and
kept in ``--db`` for later runs. Rows, side by side in one run (best of R):

* **read + JSON only** — sqlite3 rows and the store's JSON decoding (orjson), nothing applied:
  the floor;
* **rebuild_state** — the daemon's start-up fold (aiosqlite pages, ``FleetState.apply``, the
  collector paused);
* **replay in memory** — ``healer.replay.replay`` folding ``log_events`` (plain sqlite3 pages,
  the cyclic garbage collector paused during the fold);
* **replay into a scratch store** — what ``healer replay`` does: that fold plus every projection
  written to a fresh SQLite file;
* **replay --verify** — the fold plus Analyze and Plan re-run on every event and every decision
  compared with the recorded one;
* **FleetState.digest()** — the snapshot digest of the result, which the daemon computes at every
  start and stop, next to ``slow_digest()`` (the same bytes through ``snapshot()``, i.e.
  ``dataclasses.asdict`` of the whole state, which is what it cost before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleetgen import Fleet, decider, startup
from healer.clock import SystemClock
from healer.knowledge.projections import FleetState
from healer.knowledge.store import DB_NAME, SQLiteEventStore, loads, rebuild_state
from healer.loop import ControlLoop
from healer.replay import log_events, replay

COMPONENTS = 1_000


async def generate(state: Path, events: int) -> None:
    store = await SQLiteEventStore.open(state)
    loop = ControlLoop(
        store, FleetState(), decider(state.parent, COMPONENTS), SystemClock(), lambda rec: None
    )
    task = asyncio.create_task(loop.run())
    for ev in startup(COMPONENTS):
        loop.submit(ev)
    fleet = Fleet(COMPONENTS, concurrency=16).inputs()
    while store.appended_total < events:
        for ev in (next(fleet) for _ in range(4096)):
            loop.submit(ev)
        await loop.flush()
        print(f"\r  generated {store.appended_total:,} events", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()


def calibration() -> str:
    """How fast this machine is right now, to put the numbers above in proportion."""
    doc = json.dumps({"probes": {"http#1": {"status": "passing", "detail": "200 OK", "values": {"ms": 3.1}}}})
    t0 = time.perf_counter()
    for _ in range(100_000):
        json.loads(doc)
    per = (time.perf_counter() - t0) / 100_000
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    return f"calibration: json.loads of a {len(doc)}-byte document {per * 1e6:.2f} µs; load average {load}"


def read_only(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    n = 0
    for row in conn.execute(
        "SELECT position, ts, type, component, incident, data FROM events ORDER BY position"
    ):
        loads(row[5])
        n += 1
    conn.close()
    return n


async def with_store(state: Path, fn: Callable[[SQLiteEventStore], Awaitable[object]]) -> object:
    store = await SQLiteEventStore.open(state, readonly=True)
    try:
        return await fn(store)
    finally:
        await store.close()


def best(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "healer-bench-replay")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    state = args.db / f"state-{args.events}"
    if not (state / DB_NAME).exists():
        shutil.rmtree(state, ignore_errors=True)
        print(f"generating {args.events:,} events through the control loop into {state} ...", file=sys.stderr)
        t0 = time.perf_counter()
        asyncio.run(generate(state, args.events))
        print(f"  took {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    db = state / DB_NAME
    dec = decider(args.db, COMPONENTS)
    scratch_dir = Path(tempfile.mkdtemp(prefix="healer-bench-scratch-"))
    counter = iter(range(10**6))

    floor_s, n = best(args.repeat, lambda: read_only(db))
    print("done: read only", file=sys.stderr, flush=True)
    fold_s, folded = best(args.repeat, lambda: asyncio.run(with_store(state, rebuild_state)))
    print("done: rebuild_state", file=sys.stderr, flush=True)
    mem_s, _ = best(args.repeat, lambda: replay(log_events(state), digest=False))
    print("done: replay in memory", file=sys.stderr, flush=True)
    scratch_s, report = best(
        args.repeat,
        lambda: replay(log_events(state), scratch=scratch_dir / f"p{next(counter)}.db", digest=False),
    )
    print("done: replay", file=sys.stderr, flush=True)
    verify_s, verified = best(args.repeat, lambda: replay(log_events(state), decider=dec, digest=False))
    print("done: verify", file=sys.stderr, flush=True)
    shutil.rmtree(scratch_dir, ignore_errors=True)

    assert isinstance(folded, FleetState)
    digest_s, digest = best(1, folded.digest)
    slow_s, slow = best(1, folded.slow_digest)
    assert slow == digest
    assert report is not None and report.rows["fleet.incidents"] == len(folded.incidents)  # type: ignore[attr-defined]
    assert verified is not None and verified.verified, verified.divergence  # type: ignore[attr-defined]
    incidents = len(folded.incidents)
    size = db.stat().st_size / 2**20
    print(
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}; {n:,} events "
        f"({incidents:,} incidents on {COMPONENTS:,} components, {size:,.0f} MiB), best of {args.repeat}\n"
    )
    print("| run | seconds | events/s | vs goal 10 s | vs read + JSON only |")
    print("|---|---|---|---|---|")
    for name, took in (
        ("read + JSON only (floor)", floor_s),
        ("rebuild_state (the daemon's start-up fold: aiosqlite pages, GC paused)", fold_s),
        ("replay, projections in memory (sqlite3 pages, GC paused)", mem_s),
        ("replay into a scratch store (`healer replay`)", scratch_s),
        ("replay --verify (Analyze + Plan re-run)", verify_s),
        ("FleetState.digest() of the result (daemon start/stop)", digest_s),
        ("FleetState.slow_digest() (through snapshot(): the digest before)", slow_s),
    ):
        print(f"| {name} | {took:.2f} | {n / took:,.0f} | {took / 10:.2f}x | {took / floor_s:.2f}x |")
    print(
        f"\nverify: {verified.decisions:,} decisions re-made identically from "  # type: ignore[attr-defined]
        f"{verified.inputs:,} inputs; state digest {str(digest)[:16]}"  # type: ignore[attr-defined]
    )
    print(f"\n{calibration()}")


if __name__ == "__main__":
    main()
