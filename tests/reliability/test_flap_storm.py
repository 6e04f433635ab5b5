"""Flap storm: components that crash ~100 ms after every start, for the length of the storm.

healer must stay inside the disruption budget (never more actions in a window than allowed),
escalate instead of restarting forever, and spend bounded CPU doing so.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import agent_component, events, free_port, running_daemon, wait_for, write_config

STORM_POLICY = """\
version: 1
budget:
  max_concurrent: 2
  max_actions: 6
  window: 1m
policies:
  - name: restart-flappers
    match: {failures: [crash, hang, flapping]}
    steps:
      - {strategy: restart, max_attempts: 3, cooldown: 0.1s, backoff: 1.0, verify: {timeout: 5s}}
      - {strategy: escalate}
"""


@pytest.mark.timeout(300)
def test_flap_storm_stays_in_budget_escalates_and_keeps_cpu_bounded(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storm = 60.0 if request.config.getoption("--long") else 12.0
    names = [f"flapper-{i}" for i in range(4)]
    comps = "".join(agent_component(n, free_port(), "--crash-on-start") for n in names)
    cfg = write_config(tmp_path, comps, policy=STORM_POLICY)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        wait_for(lambda: " ready: " in d.output(), what="daemon ready")
        proc = psutil.Process(d.proc.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        t0 = time.monotonic()
        time.sleep(storm)  # the storm runs on its own: every start crashes 0.1 s later
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        elapsed = time.monotonic() - t0
        assert d.proc.poll() is None, "the daemon survives the storm"
        assert d.stop() == 0
    evs = events(state)
    starts = [e["ts"] for e in evs if e["type"] == "step.started"]
    # The budget: never more than 6 actions in any 60 s window, never more than 2 components at once.
    for i, ts in enumerate(starts):
        in_window = [t for t in starts[i:] if t < ts + 60.0]
        assert len(in_window) <= 6, f"{len(in_window)} actions within a minute from {ts}"
    in_flight: set[str] = set()
    peak = 0
    for e in evs:
        if e["type"] == "incident.planned":
            in_flight.add(e["component"])
        elif e["type"] in ("incident.resolved", "incident.escalated"):
            in_flight.discard(e["component"])
        peak = max(peak, len(in_flight))
    assert peak <= 2
    # Restarting forever is not an option: each flapper ends escalated or still waiting for budget.
    escalated = {e["component"] for e in evs if e["type"] == "incident.escalated"}
    deferred = {e["component"] for e in evs if e["type"] == "incident.deferred"}
    assert escalated, "the storm was escalated to a human"
    assert set(names) <= escalated | deferred
    # Bounded CPU: the storm costs the daemon well under half a core.
    assert cpu / elapsed < 0.5, f"daemon used {cpu / elapsed:.0%} of a core during the storm"
