"""Storm pipeline, two source trees side by side: paired runs, alternated, in one invocation.

Run (under the bench lock):
    git archive <old-commit> | tar -x -C /tmp/old
    python bench/storm_paired.py --old /tmp/old --new . [--repeat 9]

Each tree gets a worker process that imports *its own* ``healer`` and ``bench/storm.py``, builds
the four 100,000-node graphs and both failure patterns once (as ``storm.py`` does, same seed),
then runs ``storm.pipeline_once`` on command. For every case the driver alternates old and new
(old first on even runs, new first on odd ones), so both see the same machine, minute by minute:
on a shared 2-core VM whose speed drifts by ±30 % within minutes, unpaired tables taken one
after the other compare the machine more than the code. Every run checks its own answer (one
incident and one plan per root of ``DependencyGraph.analyze``, one suppression per symptom).
Both workers run with the same PYTHONHASHSEED, so set and dict layouts do not differ between
them. Comparing a tree with itself (``--old X --new X``) shows the method's noise floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEYS = ("total", "cpu", "analyze", "append", "gc")


def worker(root: str, nodes: int, failures: int, seed: int) -> None:
    sys.path[:0] = [str(Path(root) / "bench"), root]
    import storm  # type: ignore[import-not-found]  # the tree's own bench/storm.py

    import healer
    from healer.analyze.analyzer import GraphCache
    from healer.analyze.taxonomy import load_taxonomy
    from healer.knowledge.projections import FleetState
    from healer.plan.policy import load_policies

    assert str(Path(healer.__file__).resolve()).startswith(str(Path(root).resolve())), healer.__file__
    shapes = [
        ("wide random DAG", storm.wide_random),
        ("fleet (100 hubs)", storm.fleet),
        ("deep chain (i-1, i-2)", storm.deep_chain),
        ("lattice", storm.lattice),
    ]
    tax = load_taxonomy()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "policy.yaml").write_text(storm.POLICY)
        policies = load_policies([Path(tmp)])
    cases = []
    for name, make in shapes:
        rng = random.Random(seed)
        spec = make(nodes, rng)
        cache = GraphCache(spec)
        graph = cache.for_state(FleetState())
        for pattern in ("scattered", "cascade"):
            failed = getattr(storm, pattern)(graph, spec, failures, rng)
            expected = graph.analyze(failed)
            cases.append(
                (name, pattern, cache, list(spec), failed, len(expected.roots), len(expected.symptoms))
            )
    print(json.dumps({"cases": [(c[0], c[1]) for c in cases]}), flush=True)
    for line in sys.stdin:
        name, pattern, cache, names, failed, roots, symptoms = cases[int(line)]
        run = asyncio.run(storm.pipeline_once(cache, names, failed, tax, policies))
        assert run["observations"] == len(failed), run
        assert run["incidents"] == roots == run["planned"], (run, roots)
        assert run["suppressed"] == symptoms, (run, symptoms)
        print(json.dumps(run), flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", required=True, help="source tree of the old code")
    parser.add_argument("--new", required=True, help="source tree of the new code")
    parser.add_argument("--repeat", type=int, default=9, help="paired runs per case")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--failures", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.nodes, args.failures, args.seed)
        return
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    size = ["--nodes", str(args.nodes), "--failures", str(args.failures), "--seed", str(args.seed)]
    sides = {
        side: subprocess.Popen(
            [sys.executable, __file__, "--old", "-", "--new", "-", "--worker", root, *size],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for side, root in (("old", args.old), ("new", args.new))
    }
    cases: list[list[str]] = []
    for proc in sides.values():
        assert proc.stdout is not None
        cases = json.loads(proc.stdout.readline())["cases"]

    def run(side: str, case: int) -> dict[str, Any]:
        proc = sides[side]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{case}\n")
        proc.stdin.flush()
        result: dict[str, Any] = json.loads(proc.stdout.readline())
        return result

    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"old {args.old}, new {args.new}; {args.repeat} paired runs per case, alternated; load at start {load}\n"
    )
    print(
        "| graph | failures | incidents | events | old: obs -> recorded | new: obs -> recorded "
        "| new / old (medians) | median of paired ratios | CPU old / new "
        "| analyze_batch old / new | store append old / new | GC old / new |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, (name, pattern) in enumerate(cases):
        res: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for r in range(args.repeat):
            for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
                res[side].append(run(side, i))
        med = {s: {k: statistics.median(float(x[k]) for x in res[s]) for k in KEYS} for s in res}
        paired = statistics.median(
            n["total"] / o["total"] for o, n in zip(res["old"], res["new"], strict=True)
        )
        o, n = med["old"], med["new"]
        first = res["new"][0]
        print(
            f"| {name} | {pattern} | {first['incidents']:,} | {first['events']:,} | {ms(o['total'])} "
            f"| **{ms(n['total'])}** | {n['total'] / o['total']:.2f} | {paired:.2f} "
            f"| {ms(o['cpu'])} / {ms(n['cpu'])} | {ms(o['analyze'])} / {ms(n['analyze'])} "
            f"| {ms(o['append'])} / {ms(n['append'])} | {ms(o['gc'])} / {ms(n['gc'])} |",
            flush=True,
        )
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"\nload at end {load}, {time.strftime('%H:%M:%S', time.gmtime())} UTC")
    for proc in sides.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


if __name__ == "__main__":
    main()
