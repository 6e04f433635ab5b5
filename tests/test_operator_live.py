"""Operator surfaces on a real run: a real daemon with real agents, two real kill -9s.

One recorded run serves every test here (it is the expensive part): `healer log -f --json` is
started before the incidents and must stream every event in order with no gap; the Prometheus
endpoint is scraped with a real HTTP client and must agree with the log; the recorded log must
pass `replay --verify` and a copy with one altered decision must fail naming its position;
`policy backtest` must report exactly the incidents a draft policy changes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    DEFAULT_POLICY,
    PY,
    agent_component,
    component_pid,
    events,
    free_port,
    healer_cli,
    running_daemon,
    wait_for,
    write_config,
)


@dataclass
class LiveRun:
    base: Path
    cfg: Path
    state: Path
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    events_at_scrape: list[dict[str, Any]]
    streamed: list[dict[str, Any]]
    streaming_before_incident: bool
    incident_of: dict[str, int]


def _healthy(state: Path, comp: str) -> bool:
    rows = [
        e for e in events(state, component=comp) if e["type"] in ("component.recovered", "process.started")
    ]
    return bool(rows) and rows[-1]["type"] == "component.recovered"


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    base = tmp_path_factory.mktemp("live")
    mport = free_port()
    comps = agent_component("agent-a", free_port()) + agent_component("agent-b", free_port())
    cfg = write_config(
        base, comps, extra=f"metrics:\n  enabled: true\n  address: 127.0.0.1\n  port: {mport}\n"
    )
    state = base / "state"
    streamed: list[dict[str, Any]] = []
    follower: subprocess.Popen[str] | None = None
    try:
        with running_daemon(cfg) as d:
            wait_for(lambda: _healthy(state, "agent-a") and _healthy(state, "agent-b"), what="fleet healthy")
            follower = subprocess.Popen(
                [PY, "-m", "healer", "log", "-f", "--json", "--state-dir", str(state)],
                stdout=subprocess.PIPE,
                text=True,
            )
            out = follower.stdout
            assert out is not None
            pump = threading.Thread(
                target=lambda: streamed.extend(json.loads(line) for line in out), daemon=True
            )
            pump.start()
            wait_for(lambda: streamed, what="the follower streaming")
            before = not any(e["type"].startswith("incident.") for e in streamed)
            incident_of = {}
            for comp in ("agent-a", "agent-b"):
                os.kill(component_pid(state, comp) or 0, signal.SIGKILL)
                resolved = wait_for(
                    lambda c=comp: [e for e in events(state, "incident.resolved") if e["component"] == c],
                    what=f"{comp} resolved",
                )
                incident_of[comp] = resolved[0]["incident"]
                wait_for(lambda c=comp: _healthy(state, c))

            def consistent() -> tuple[Any, list[dict[str, Any]]] | None:
                seen = events(state)
                got = _scrape(mport)
                return (got, seen) if events(state) == seen else None

            metrics, at_scrape = wait_for(consistent, what="a scrape with no event in between")
            assert d.stop() == 0
        last = events(state)[-1]["position"]
        wait_for(lambda: streamed and streamed[-1]["position"] == last, what="the follower reaching the end")
        yield LiveRun(base, cfg, state, metrics, at_scrape, list(streamed), before, incident_of)
    finally:
        if follower is not None:
            follower.terminate()
            follower.wait(10)


def test_log_follow_streams_every_event_in_order_without_gaps(live: LiveRun) -> None:
    assert live.streaming_before_incident, "the follower was started before the incidents"
    rows = events(live.state)
    assert [e["position"] for e in live.streamed] == list(range(1, len(rows) + 1))
    assert [(e["type"], e["component"], e["incident"], e["data"]) for e in live.streamed] == [
        (r["type"], r["component"], r["incident"], r["data"]) for r in rows
    ]
    chain = [e["type"] for e in live.streamed if e["incident"] == live.incident_of["agent-a"]]
    assert chain[:3] == ["incident.detected", "incident.diagnosed", "incident.planned"]
    assert chain[-1] == "incident.resolved"


def test_metrics_endpoint_matches_the_log(live: LiveRun) -> None:
    m, rows = live.metrics, live.events_at_scrape

    def value(name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    by_type = Counter(r["type"] for r in rows)
    assert {k[1][0][1]: v for k, v in m.items() if k[0] == "healer_events_total"} == dict(by_type)
    assert value("healer_event_log_position") == rows[-1]["position"]
    assert value("healer_events_appended_total") == rows[-1]["position"], (
        "every event came through the writer"
    )
    assert value("healer_event_append_seconds_count") >= 1
    assert value("healer_event_log_bytes") > 0
    diagnosed = Counter(r["data"]["failure_class"] for r in rows if r["type"] == "incident.diagnosed")
    assert diagnosed == {"crash": 2}
    assert value("healer_incidents_opened_total", failure_class="crash") == 2
    assert value("healer_incidents_resolved_total", failure_class="crash", resolution="remediated") == 2
    assert value("healer_incidents_open") == 0
    assert value("healer_incidents_escalated_total", failure_class="crash") == 0
    succeeded = [r for r in rows if r["type"] == "step.succeeded"]
    assert value("healer_actions_total", actuator="process", action="restart", outcome="succeeded") == len(
        succeeded
    )
    rtos = [r["data"]["rto_achieved"] for r in rows if r["type"] == "incident.resolved"]
    assert value("healer_recovery_seconds_count", failure_class="crash") == len(rtos) == 2
    assert value("healer_recovery_seconds_sum", failure_class="crash") == pytest.approx(sum(rtos))
    assert value("healer_detection_seconds_count", failure_class="crash") == 2
    assert value("healer_component_healthy", component="agent-a") == 1
    assert value("healer_probe_passing", component="agent-b", probe="http#1") == 1
    transitions = Counter((r["component"], r["type"]) for r in rows if r["type"].startswith("component."))
    assert (
        value("healer_health_transitions_total", component="agent-a", health="healthy")
        == transitions[("agent-a", "component.recovered")]
    )


def test_replay_verify_passes_on_the_real_run_and_names_an_altered_decision(
    live: LiveRun, tmp_path: Path
) -> None:
    ok = healer_cli("replay", "-c", str(live.cfg), "--verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified:" in ok.stdout

    # the first plan for agent-b, altered in a copy of the store (triggers dropped on the copy only)
    target = next(
        e for e in events(live.state, "incident.planned") if e["incident"] == live.incident_of["agent-b"]
    )
    copy = tmp_path / "state"
    shutil.copytree(live.state, copy)
    conn = sqlite3.connect(copy / "events.db")
    conn.execute("DROP TRIGGER events_no_update")
    data = {**target["data"], "strategy": "escalate"}
    conn.execute("UPDATE events SET data = ? WHERE position = ?", (json.dumps(data), target["position"]))
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.IntegrityError):  # the original still refuses any change
        orig = sqlite3.connect(live.state / "events.db")
        try:
            orig.execute("UPDATE events SET ts = 0 WHERE position = 1")
        finally:
            orig.close()
    cfg = tmp_path / "healer.yaml"
    cfg.write_text(live.cfg.read_text().replace(f"state_dir: {live.state}", f"state_dir: {copy}"))
    bad = healer_cli("replay", "-c", str(cfg), "--verify")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"nondeterminism at log position {target['position']}:" in bad.stderr
    assert '"strategy": "escalate"' in bad.stderr


DRAFT = """\
version: 1
policies:
  - name: escalate-agent-a
    priority: 10
    match:
      components: [agent-a]
      failures: [crash]
    steps:
      - strategy: escalate
"""


def test_backtest_reports_exactly_the_incidents_a_draft_changes(live: LiveRun, tmp_path: Path) -> None:
    draft = tmp_path / "draft"
    draft.mkdir()
    # agent-a's crashes go to a human instead of being restarted; everything else is unchanged
    (draft / "a.yaml").write_text(DRAFT)
    (draft / "default.yaml").write_text(DEFAULT_POLICY)
    out = healer_cli("policy", "backtest", "-c", str(live.cfg), "--policies", str(draft), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["incidents_changed"] == [live.incident_of["agent-a"]]
    assert report["incidents_examined"] == 2
    assert all(c["old"].startswith("restart") and c["new"].startswith("escalate") for c in report["changes"])
    text = healer_cli("policy", "backtest", "-c", str(live.cfg), "--policies", str(draft)).stdout
    assert f"incident {live.incident_of['agent-a']}  agent-a  crash" in text
    assert f"incident {live.incident_of['agent-b']}" not in text
    assert "in 1 of 2 incidents" in text
