"""Event append throughput through the daemon's writer, and decision latency under a steady load.

Run: python bench/append_throughput.py [--observations N] [--rate R] [--seconds S] [--components C]

Everything goes through the real ControlLoop (real Analyze and Plan), the real SQLiteEventStore
and its one writer task, on a file in a temporary directory. Rows, side by side in one run:

* **loop, FULL** — observations submitted as fast as the loop takes them, durable commits
  (``synchronous=FULL``, the daemon's default): the goal is >= 20,000 observations/s;
* **loop, NORMAL** — the same with ``synchronous=NORMAL`` (WAL, no fsync per commit), to show
  what durability costs;
* **writer only, FULL** — the same observations appended straight to the store in the same batch
  sizes, no decisions: the floor the loop is measured against;
* **steady R/s** — observations submitted at R per second (in 10 ms ticks) for S seconds: the
  latency from submission to the observation and its decisions being durable and applied
  (p50 / p99 / max; the goal is p99 <= 5 ms at 1,000/s), and the time the Decider itself took.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleetgen import Fleet, decider, startup
from healer.clock import SystemClock
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.projections import FleetState
from healer.knowledge.store import SQLiteEventStore
from healer.loop import ControlLoop, Decider


class TimedDecider(Decider):
    samples: list[float]

    def follow_ups(self, state: FleetState, rec: RecordedEvent, now: float) -> list[Event]:
        t0 = time.perf_counter()
        out = super().follow_ups(state, rec, now)
        self.samples.append(time.perf_counter() - t0)
        return out

    def observed(self, state: FleetState, recs: list[RecordedEvent], now: float) -> list[Event]:
        t0 = time.perf_counter()
        out = super().observed(state, recs, now)
        self.samples.append(time.perf_counter() - t0)
        return out


def timed_decider(tmp: Path, components: int) -> TimedDecider:
    d = decider(tmp, components)
    td = TimedDecider(d.taxonomy, d.policies, d.labels, d.supervised)
    td.samples = []
    return td


async def open_loop(
    tmp: Path, components: int, sync: str, on_recorded: object = None
) -> tuple[ControlLoop, SQLiteEventStore, asyncio.Task[None], TimedDecider]:
    store = await SQLiteEventStore.open(tmp / f"state-{sync}-{time.monotonic_ns()}", synchronous=sync)
    dec = timed_decider(tmp, components)
    loop = ControlLoop(store, FleetState(), dec, SystemClock(), on_recorded or (lambda rec: None))  # type: ignore[arg-type]
    task = asyncio.create_task(loop.run())
    for ev in startup(components):
        loop.submit(ev)
    await loop.flush()
    dec.samples.clear()
    return loop, store, task, dec


async def close(loop: ControlLoop, store: SQLiteEventStore, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()


async def burst(tmp: Path, n: int, components: int, sync: str) -> tuple[float, int, list[float]]:
    loop, store, task, dec = await open_loop(tmp, components, sync)
    inputs = list(islice(Fleet(components).inputs(), n))
    before = store.appended_total
    t0 = time.perf_counter()
    for i, ev in enumerate(inputs):
        loop.submit(ev)
        if i % 4096 == 4095:
            await asyncio.sleep(0)  # a producer shares the event loop with the control loop
    await loop.flush()
    took = time.perf_counter() - t0
    events = store.appended_total - before
    samples = list(dec.samples)
    await close(loop, store, task)
    return took, events, samples


async def writer_only(tmp: Path, n: int, components: int, batch: int) -> float:
    store = await SQLiteEventStore.open(tmp / "state-writer", synchronous="FULL")
    inputs = list(islice(Fleet(components).inputs(), n))
    t0 = time.perf_counter()
    for i in range(0, len(inputs), batch):
        await store.append(inputs[i : i + batch])
    took = time.perf_counter() - t0
    await store.close()
    return took


async def steady(
    tmp: Path, rate: int, seconds: float, components: int
) -> tuple[list[float], list[float], int]:
    submitted: dict[int, float] = {}
    latencies: list[float] = []

    def on_recorded(rec: RecordedEvent) -> None:
        seq = rec.data.get("seq")
        if isinstance(seq, int) and seq in submitted:
            latencies.append(time.perf_counter() - submitted.pop(seq))

    loop, store, task, dec = await open_loop(tmp, components, "FULL", on_recorded)
    fleet = Fleet(components).inputs()
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    total = int(rate * seconds)
    seq = 0
    start = time.perf_counter()
    while seq < total:
        for _ in range(per_tick):
            ev = next(fleet)
            submitted[seq] = time.perf_counter()
            loop.submit(Event(ev.type, ev.ts, ev.component, ev.incident, {**ev.data, "seq": seq}))
            seq += 1
        tick_no = seq // per_tick
        delay = start + tick_no * tick - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    await loop.flush()
    samples = list(dec.samples)
    await close(loop, store, task)
    return latencies, samples, seq


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def ms(v: float) -> str:
    return f"{v * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--observations", type=int, default=100_000)
    parser.add_argument("--components", type=int, default=1_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    n = args.observations
    with tempfile.TemporaryDirectory(prefix="healer-bench-") as tmpdir:
        tmp = Path(tmpdir)
        full_s, full_events, full_decide = asyncio.run(burst(tmp, n, args.components, "FULL"))
        print("done: loop FULL", file=sys.stderr, flush=True)
        normal_s, normal_events, _ = asyncio.run(burst(tmp, n, args.components, "NORMAL"))
        print("done: loop NORMAL", file=sys.stderr, flush=True)
        writer_s = asyncio.run(writer_only(tmp, n, args.components, 1024))
        print("done: writer only", file=sys.stderr, flush=True)
        lat, decide, sent = asyncio.run(steady(tmp, args.rate, args.seconds, args.components))
        print("done: steady", file=sys.stderr, flush=True)

    import sqlite3

    print(
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs; "
        f"{n:,} observations on {args.components:,} components "
        f"({full_events:,} events with the decisions they caused)\n"
    )
    print("| run | observations/s | events/s | seconds | vs goal 20,000 obs/s | vs writer only |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("loop, durable (FULL)", full_s, full_events),
        ("loop, NORMAL (no fsync per commit)", normal_s, normal_events),
        ("writer only, FULL (no decisions)", writer_s, n),
    ]
    for name, took, events in rows:
        print(
            f"| {name} | {n / took:,.0f} | {events / took:,.0f} | {took:.2f} | "
            f"{n / took / 20_000:.2f}x | {writer_s / took:.2f}x |"
        )
    print(
        f"\nDecider (Analyze + Plan) per call in the FULL burst: mean {ms(statistics.fmean(full_decide))}, "
        f"p99 {ms(pct(full_decide, 99))}, max {ms(max(full_decide))}\n"
    )
    print(f"Steady {args.rate:,} observations/s for {args.seconds:g} s ({sent:,} observations, FULL):\n")
    print("| measure | p50 | p99 | p99.9 | max | vs goal p99 5 ms |")
    print("|---|---|---|---|---|---|")
    print(
        f"| submitted → durable and applied | {ms(pct(lat, 50))} | {ms(pct(lat, 99))} | "
        f"{ms(pct(lat, 99.9))} | {ms(max(lat))} | {pct(lat, 99) / 0.005:.2f}x |"
    )
    print(
        f"| Decider (Analyze + Plan) per call | {ms(pct(decide, 50))} | {ms(pct(decide, 99))} | "
        f"{ms(pct(decide, 99.9))} | {ms(max(decide))} | {pct(decide, 99) / 0.005:.2f}x |"
    )


if __name__ == "__main__":
    main()
