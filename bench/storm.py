"""Failure-storm benchmark: 1,000 simultaneous failures on a 100,000-node graph.

Run: python bench/storm.py [--nodes N] [--failures K] [--repeat R] [--section graph|pipeline|all]

Prints two markdown tables.

* **pipeline** (the goal, <= 200 ms): the storm as the daemon lives it. 1,000 ``component.failed``
  observations are submitted to a real ``ControlLoop`` at once; the time runs until they and
  every decision they cause -- Analyze (one root-cause traversal, classification from the
  taxonomy, incidents, suppressed symptoms), Plan (a restart per incident) -- are durably
  appended to a real SQLite event store (WAL, synchronous=FULL, as the daemon runs it). Median of
  R runs, each on a fresh snapshot of N healthy components and a fresh store.
* **graph**: ``DependencyGraph.analyze`` alone (median of R runs) next to a naive baseline that
  calls ``networkx.ancestors`` on the full graph once per failed node and intersects with the
  failed set. The baseline is capped (see --naive-cap and --naive-budget) and extrapolated
  linearly to all failed nodes; the table says when that happened.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path

import networkx as nx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from healer.analyze.analyzer import AnalysisContext, AnalysisSettings, GraphCache
from healer.analyze.graph import DependencyGraph
from healer.analyze.taxonomy import Taxonomy, load_taxonomy
from healer.clock import SystemClock
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import ComponentView, FleetState
from healer.knowledge.store import SQLiteEventStore
from healer.loop import ControlLoop, Decider
from healer.plan.policy import PolicySet, load_policies

Spec = dict[str, list[str]]


def wide_random(n: int, rng: random.Random) -> Spec:
    """Each node depends on ~2 random earlier nodes: shallow, with heavily shared dependencies."""
    spec: Spec = {"c0": []}
    for i in range(1, n):
        spec[f"c{i}"] = sorted({f"c{rng.randrange(i)}" for _ in range(2)})
    return spec


def fleet(n: int, rng: random.Random) -> Spec:
    """n/1000 shared services (vector DBs, gateways); each agent depends on 2: ~2,000-way fan-out hubs."""
    services = [f"svc{i}" for i in range(max(1, n // 1000))]
    spec: Spec = {service: [] for service in services}
    for i in range(n - len(services)):
        spec[f"agent{i}"] = sorted(set(rng.sample(services, min(2, len(services)))))
    return spec


def deep_chain(n: int, _rng: random.Random) -> Spec:
    """Node i depends on i-1 and i-2: ancestors of node i are all i earlier nodes."""
    return {f"c{i}": [f"c{j}" for j in (i - 1, i - 2) if j >= 0] for i in range(n)}


def lattice(n: int, _rng: random.Random) -> Spec:
    """A sqrt(n) x sqrt(n) grid; (r, c) depends on (r-1, c) and (r, c-1)."""
    side = int(n**0.5)
    spec: Spec = {}
    for r in range(side):
        for c in range(side):
            deps = []
            if r:
                deps.append(f"g{r - 1}_{c}")
            if c:
                deps.append(f"g{r}_{c - 1}")
            spec[f"g{r}_{c}"] = deps
    return spec


def scattered(graph: DependencyGraph, spec: Spec, k: int, rng: random.Random) -> list[str]:
    """k unrelated failures anywhere: almost every one is its own root."""
    return rng.sample(sorted(spec), k)


def cascade(graph: DependencyGraph, spec: Spec, k: int, rng: random.Random) -> list[str]:
    """A real storm: 5 components fail and the failure spreads downstream (BFS) to k nodes."""
    # Spec order is topological, so seeds from its first 1% have large downstreams.
    candidates = [name for name in list(spec)[: len(spec) // 100] if graph.dependents(name)]
    seeds = rng.sample(candidates, 5)
    failed: dict[str, None] = dict.fromkeys(seeds)
    queue = deque(seeds)
    while queue and len(failed) < k:
        for nxt in sorted(graph.dependents(queue.popleft())):
            if nxt not in failed and len(failed) < k:
                failed[nxt] = None
                queue.append(nxt)
    return list(failed)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeat: int) -> float:
    gc.collect()
    return statistics.median(timed(fn) for _ in range(repeat))


def naive(g: nx.DiGraph, failed: list[str], cap: int, budget: float) -> tuple[float, int]:
    """Per-failed-node ancestors on the full graph; returns (extrapolated seconds, nodes measured)."""
    failed_set = set(failed)
    start = time.perf_counter()
    done = 0
    for node in failed[:cap]:
        _ = nx.ancestors(g, node) & failed_set
        done += 1
        if time.perf_counter() - start > budget:
            break
    elapsed = time.perf_counter() - start
    return elapsed * len(failed) / done, done


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


POLICY = """\
version: 1
policies:
  - name: restart-anything
    match: {components: ["*"], failures: ["*"]}
    steps:
      - strategy: restart
      - strategy: escalate
"""

# What the Monitor records with a failure: every probe's latest result.
EVIDENCE = {
    "probes": {"http#0": {"status": "failing", "type": "http", "detail": "HTTP 503: dependency down"}},
    "failing": ["http#0"],
}


def healthy_snapshot(names: list[str]) -> FleetState:
    """The snapshot of a fleet where everything is healthy (as the fold leaves it)."""
    state = FleetState()
    state.components = {n: ComponentView(n, health="healthy", last_known_health="healthy") for n in names}
    return state


async def pipeline_once(
    cache: GraphCache, names: list[str], failed: list[str], taxonomy: Taxonomy, policies: PolicySet
) -> dict[str, float | int]:
    state = healthy_snapshot(names)
    with tempfile.TemporaryDirectory(prefix="storm-") as tmp:
        store = await SQLiteEventStore.open(Path(tmp), synchronous="FULL", batch_max=512)
        ctx = AnalysisContext(taxonomy, frozenset(), cache, {}, AnalysisSettings())
        decider = Decider(taxonomy, policies, {}, frozenset(), ctx)
        spent: dict[str, float] = {"analyze": 0.0, "append": 0.0}
        observed, append = decider.observed, store.append

        def timed_observed(st: FleetState, recs: list[RecordedEvent], now: float) -> list[Event]:
            t = time.perf_counter()
            try:
                return observed(st, recs, now)
            finally:
                spent["analyze"] += time.perf_counter() - t

        async def timed_append(events: list[Event]) -> list[RecordedEvent]:
            t = time.perf_counter()
            try:
                return await append(events)
            finally:
                spent["append"] += time.perf_counter() - t

        decider.observed = timed_observed  # type: ignore[method-assign]
        store.append = timed_append  # type: ignore[method-assign]
        loop = ControlLoop(store, state, decider, SystemClock(), on_recorded=lambda _rec: None)
        task = asyncio.create_task(loop.run())
        gc_started = [0.0]
        gc_spent = [0.0]

        def on_gc(phase: str, _info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                gc_spent[0] += time.perf_counter() - gc_started[0]

        try:
            # The daemon's snapshot is old: collected, and frozen out of the collector's passes
            # as the daemon does once start-up is done (healer/daemon.py: gc.freeze()).
            gc.collect()
            gc.freeze()
            gc.callbacks.append(on_gc)
            now = time.time()
            cpu_start = time.process_time()
            start = time.perf_counter()
            for comp in failed:
                loop.submit(Event(T.COMPONENT_FAILED, now, comp, data=EVIDENCE))
            await loop.flush()
            total = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            gc.callbacks.remove(on_gc)
            recorded = await store.read()
        finally:
            gc.unfreeze()
            if on_gc in gc.callbacks:
                gc.callbacks.remove(on_gc)
            task.cancel()
            await store.close()
    by_type: dict[str, int] = {}
    for rec in recorded:
        by_type[rec.type] = by_type.get(rec.type, 0) + 1
    return {
        "total": total,
        "cpu": cpu,
        "analyze": spent["analyze"],
        "append": spent["append"],
        "gc": gc_spent[0],
        "events": len(recorded),
        "incidents": by_type.get(T.INCIDENT_DIAGNOSED, 0),
        "suppressed": by_type.get(T.SYMPTOM_SUPPRESSED, 0),
        "planned": by_type.get(T.INCIDENT_PLANNED, 0),
        "observations": by_type.get(T.COMPONENT_FAILED, 0),
    }


def pipeline_row(
    shape: str,
    cache: GraphCache,
    spec: Spec,
    pattern: str,
    failed: list[str],
    repeat: int,
    tax: Taxonomy,
    policies: PolicySet,
) -> str:
    runs = [asyncio.run(pipeline_once(cache, list(spec), failed, tax, policies)) for _ in range(repeat)]
    expected = cache.for_state(FleetState()).analyze(failed)
    for run in runs:
        # The benchmark checks its own answer: one incident per root, every symptom suppressed.
        assert run["observations"] == len(failed), run
        assert run["incidents"] == len(expected.roots) == run["planned"], (run, len(expected.roots))
        assert run["suppressed"] == len(expected.symptoms), (run, len(expected.symptoms))
    med = {
        k: statistics.median(float(r[k]) for r in runs) for k in ("total", "cpu", "analyze", "append", "gc")
    }
    best = min(float(r["total"]) for r in runs)
    worst = max(float(r["total"]) for r in runs)
    first = runs[0]
    return (
        f"| {shape} | {pattern} | {len(failed):,} | {first['incidents']:,} | {first['suppressed']:,} "
        f"| {first['events']:,} | {fmt_ms(med['analyze'])} | {fmt_ms(med['append'])} | {fmt_ms(med['gc'])} "
        f"| **{fmt_ms(med['total'])}** | {fmt_ms(best)} / {fmt_ms(worst)} | {fmt_ms(med['cpu'])} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--failures", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--naive-cap", type=int, default=100, help="max failed nodes the baseline measures")
    parser.add_argument("--naive-budget", type=float, default=5.0, help="max seconds per baseline row")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--section", choices=["graph", "pipeline", "all"], default="all")
    args = parser.parse_args()

    shapes = [
        ("wide random DAG", wide_random),
        ("fleet (100 hubs)", fleet),
        ("deep chain (i-1, i-2)", deep_chain),
        ("lattice", lattice),
    ]
    patterns = [("scattered", scattered), ("cascade", cascade)]
    tax = load_taxonomy()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "policy.yaml").write_text(POLICY)
        policies = load_policies([Path(tmp)])
    rows = []
    pipeline_rows = []
    for shape_name, make in shapes:
        rng = random.Random(args.seed)
        spec = make(args.nodes, rng)
        start = time.perf_counter()
        cache = GraphCache(spec)  # what the daemon builds from the configuration, once
        build_s = time.perf_counter() - start
        graph = cache.for_state(FleetState())
        g = graph._g
        for pattern_name, pick in patterns:
            failed = pick(graph, spec, args.failures, rng)
            if args.section in ("pipeline", "all"):
                pipeline_rows.append(
                    pipeline_row(shape_name, cache, spec, pattern_name, failed, args.repeat, tax, policies)
                )
            if args.section in ("graph", "all"):
                analyze_s = median_time(partial(graph.analyze, failed), args.repeat)
                result = graph.analyze(failed)
                groups = result.incident_groups()
                top = max(sorted(groups), key=lambda root: len(groups[root]))
                blast_s = timed(partial(result.blast_radius.__getitem__, top))
                naive_s, measured = naive(g, failed, args.naive_cap, args.naive_budget)
                extrapolated = "" if measured == len(failed) else f" (extrapolated from {measured})"
                rows.append(
                    f"| {shape_name} | {len(spec):,} / {g.number_of_edges():,} | {fmt_ms(build_s)} "
                    f"| {pattern_name} | {len(failed):,} | {len(result.roots):,} | {fmt_ms(analyze_s)} "
                    f"| {fmt_ms(blast_s)} ({len(result.blast_radius[top]):,}) "
                    f"| {fmt_ms(naive_s)}{extrapolated} | {naive_s / analyze_s:,.0f}x |"
                )
            print(f"done: {shape_name} / {pattern_name}", file=sys.stderr, flush=True)

    python = sys.version.split()[0]
    print(f"Python {python}, networkx {nx.__version__}, median of {args.repeat} runs\n")
    if pipeline_rows:
        print(
            "Pipeline: observation batch -> Analyze + Plan -> durably recorded (SQLite, synchronous=FULL)\n"
        )
        print(
            "| graph | failures | failed | incidents (roots) | symptoms suppressed | events recorded "
            "| analyze_batch | store append | GC | observations -> recorded | best / worst run | CPU time |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for row in pipeline_rows:
            print(row)
        print()
    if rows:
        print("Graph traversal alone: DependencyGraph.analyze vs naive per-node ancestors\n")
        print(
            "| graph | nodes / edges | build | failures | failed | roots | analyze() "
            "| blast radius of largest incident (nodes) | naive ancestors | speed-up |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(row)


if __name__ == "__main__":
    main()
