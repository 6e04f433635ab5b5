"""Failure-storm benchmark for root-cause analysis: 1,000 failures on a 100,000-node graph.

Run: python bench/storm.py [--nodes N] [--failures K] [--repeat R]

Prints a markdown table. For each graph shape and failure pattern it times
``DependencyGraph.analyze`` (median of R runs) next to a naive baseline that
calls ``networkx.ancestors`` on the full graph once per failed node and
intersects with the failed set. The baseline is capped (see --naive-cap and
--naive-budget) and extrapolated linearly to all failed nodes; the table says
when that happened.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path

import networkx as nx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from healer.analyze.graph import DependencyGraph

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
    args = parser.parse_args()

    shapes = [
        ("wide random DAG", wide_random),
        ("fleet (100 hubs)", fleet),
        ("deep chain (i-1, i-2)", deep_chain),
        ("lattice", lattice),
    ]
    patterns = [("scattered", scattered), ("cascade", cascade)]
    rows = []
    for shape_name, make in shapes:
        rng = random.Random(args.seed)
        spec = make(args.nodes, rng)
        start = time.perf_counter()
        graph = DependencyGraph(spec)
        build_s = time.perf_counter() - start
        g = graph._g
        for pattern_name, pick in patterns:
            failed = pick(graph, spec, args.failures, rng)
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
    print(f"Python {python}, networkx {nx.__version__}, analyze = median of {args.repeat} runs\n")
    print(
        "| graph | nodes / edges | build | failures | failed | roots | analyze() "
        "| blast radius of largest incident (nodes) | naive ancestors | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
