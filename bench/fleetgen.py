"""A synthetic but realistic fleet history, driven through the real ControlLoop and SQLite store.

Each incident is the input sequence a real one produces — the failure observation (a crash:
process.exited; or a hang: component.failed with the probes' evidence), the executor's
step.started, the old process's exit and the new one's start, step.succeeded, and the
component.recovered that verifies it — and the real Analyze and Plan decide the rest
(detected, diagnosed, planned, verified, resolved). ``concurrency`` incidents are in flight at
once, interleaved, as in a fleet. Shared by bench/append_throughput.py and bench/replay.py.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from healer.analyze.taxonomy import load_taxonomy
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.loop import Decider
from healer.plan.policy import load_policies

POLICY = """\
version: 1
policies:
  - name: restart-then-escalate
    match:
      components: ["*"]
      failures: [crash, hang]
    steps:
      - strategy: restart
        max_attempts: 3
        cooldown: 0s
        verify_timeout: 30s
      - strategy: escalate
"""


def decider(tmp: Path, components: int) -> Decider:
    (tmp / "policies").mkdir(parents=True, exist_ok=True)
    (tmp / "policies" / "bench.yaml").write_text(POLICY)
    names = frozenset(f"agent-{i}" for i in range(components))
    return Decider(load_taxonomy(), load_policies([tmp / "policies"]), {}, names)


def _probes(ok: bool) -> dict[str, Any]:
    http = {"status": "passing" if ok else "failing", "type": "http"}
    http["detail"] = "200 OK" if ok else "timed out after 1s"
    if ok:
        http["values"] = {"status_code": 200, "latency_ms": 3.1}
    return {"process#0": {"status": "passing", "type": "process", "detail": "running"}, "http#1": http}


def startup(components: int) -> Iterator[Event]:
    for i in range(components):
        yield Event(T.PROCESS_STARTED, 0.0, f"agent-{i}", None, {"pid": 10_000 + i, "create_time": 0.0})
    for i in range(components):
        yield Event(T.COMPONENT_RECOVERED, 0.0, f"agent-{i}", None, {"probes": _probes(True)})


class Fleet:
    """Yields input events forever (or up to ``incidents``), ``concurrency`` incidents interleaved."""

    def __init__(self, components: int, concurrency: int = 8, seed: int = 1) -> None:
        self.components = components
        self.concurrency = min(concurrency, components)
        self.rng = random.Random(seed)
        self.next_incident = 1
        self.next_pid = 100_000
        self.busy: set[str] = set()
        self.opened = 0

    def _script(self, comp: str, iid: int) -> Iterator[Event]:
        crash = self.rng.random() < 0.4
        old, new = self.next_pid, self.next_pid + 1
        self.next_pid += 2
        if crash:
            yield Event(
                T.PROCESS_EXITED, 0.0, comp, None, {"pid": old, "signal": "SIGKILL", "expected": False}
            )
        else:
            yield Event(
                T.COMPONENT_FAILED, 0.0, comp, None, {"probes": _probes(False), "failing": ["http#1"]}
            )
        key = f"incident-{iid}/step-0/attempt-1"
        step = {
            "step": 0,
            "attempt": 1,
            "policy": "restart-then-escalate",
            "plan_key": key,
            "action_index": 0,
            "actuator": "process",
            "action": "restart",
            "idempotency_key": f"{key}/action-0",
        }
        yield Event(T.STEP_STARTED, 0.0, comp, iid, step)
        if not crash:
            yield Event(
                T.PROCESS_EXITED, 0.0, comp, None, {"pid": old, "signal": "SIGTERM", "expected": True}
            )
        yield Event(T.PROCESS_STARTED, 0.0, comp, None, {"pid": new, "create_time": 0.0, "restart": True})
        yield Event(T.STEP_SUCCEEDED, 0.0, comp, iid, {**step, "result": {"pid": new}, "duration_s": 0.2})
        yield Event(T.COMPONENT_RECOVERED, 0.0, comp, None, {"probes": _probes(True)})

    def inputs(self, incidents: int | None = None) -> Iterator[Event]:
        active: list[tuple[str, Iterator[Event]]] = []
        while True:
            while len(active) < self.concurrency and (incidents is None or self.opened < incidents):
                comp = f"agent-{self.rng.randrange(self.components)}"
                if comp in self.busy:
                    continue
                self.busy.add(comp)
                # Incident ids follow the order of first observations: scripts start one by one.
                active.append((comp, self._script(comp, self.next_incident)))
                self.next_incident += 1
                self.opened += 1
                yield next(active[-1][1])
            if not active:
                return
            comp, script = active.pop(0)
            ev = next(script, None)
            if ev is None:
                self.busy.discard(comp)
                continue
            yield ev
            active.append((comp, script))
