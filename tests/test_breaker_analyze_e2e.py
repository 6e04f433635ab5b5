"""Breaker telemetry through Analyze, end to end: a real daemon, a real Mosquitto, a real agent
process using healer.agent's pybreaker listener, a real dependency process healer supervises.

The dependency breaks *half-way*: its process keeps running (its own probe passes) but it stops
accepting connections. Only the agent sees it, through its circuit breaker. healer must learn
the agent -> dependency edge from the breaker telemetry (nothing in the config says so),
diagnose the dependency as the root cause from the breakers, suppress the agent's own failing
health check as a symptom, and restart the dependency, never the agent.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

from tests.broker import Broker
from tests.helpers import (
    DEFAULT_POLICY,
    PY,
    component_pid,
    events,
    free_port,
    healer_cli,
    is_healthy,
    running_daemon,
    wait_for,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent

# A service that, after a restart, takes 3 s to listen again (like a database replaying its
# journal); SIGUSR1 closes its listening socket while the process stays up: half-broken.
DEPENDENCY = """\
import os, signal, socket, sys, time
port, marker = int(sys.argv[1]), sys.argv[2]
if os.path.exists(marker):
    time.sleep(3.0)
open(marker, "w").close()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
srv.settimeout(0.05)
broken = []
signal.signal(signal.SIGUSR1, lambda *_: (broken.append(1), srv.close()))
while True:
    if broken:
        time.sleep(0.05)
        continue
    try:
        conn, _ = srv.accept()
        conn.close()
    except OSError:
        pass
"""

# The dependency gets the restart; DEFAULT_POLICY would restart the agent on crash/hang, so a
# misdiagnosed agent would show up as a restart.
POLICY = (
    DEFAULT_POLICY
    + """\
  - name: fix-the-dependency
    priority: 50
    match:
      components: ["dep-svc"]
      failures: [dependency_outage, breaker_open, crash, hang, unhealthy]
    steps:
      - strategy: restart
        max_attempts: 1
        cooldown: 0s
        verify: {timeout: 20s, stable_for: 0.5s}
      - strategy: escalate
"""
)


def components(broker: Broker, dep_port: int, marker: Path) -> str:
    agent = [PY, "-m", "tests.mqtt_agent", "--name", "agent-b", "--port", str(broker.port)]
    agent += ["--dep-port", str(dep_port), "--fail-max", "3", "--reset-timeout", "1"]
    return textwrap.indent(
        textwrap.dedent(
            f"""\
            dep-svc:
              command:
                argv: {json.dumps([PY, "-c", DEPENDENCY, str(dep_port), str(marker)])}
                stop_timeout: 1s
              probes:
                - type: process
                  min_uptime: 3.5s
                  interval: 0.2s
            agent-b:
              command:
                argv: {json.dumps(agent)}
                cwd: {ROOT}
                stop_timeout: 1s
              probes:
                - type: mqtt_heartbeat
                  max_age: 5s
                  interval: 0.2s
                # Its health check goes through its dependency (a liveness check that calls
                # the database): it fails too, later than the breaker opens.
                - type: tcp
                  host: 127.0.0.1
                  port: {dep_port}
                  interval: 0.2s
                  timeout: 0.2s
                  failure_threshold: 6
            """
        ),
        "  ",
    )


def of(state: Path, etype: str, component: str | None = None, after: int = 0) -> list[dict[str, Any]]:
    return [e for e in events(state, etype, component) if e["type"] == etype and e["position"] > after]


def test_an_agents_open_breaker_makes_its_dependency_the_root_and_the_agent_a_symptom(
    tmp_path: Path, broker: Broker
) -> None:
    dep_port = free_port()
    mqtt = (
        f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n  client_id: healer-test\n  keepalive: 2\n"
        "  reconnect_min: 0.1s\n  reconnect_max: 0.5s\n"
    )
    cfg = write_config(tmp_path, components(broker, dep_port, tmp_path / "dep.started"), POLICY, mqtt)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        for name in ("dep-svc", "agent-b"):
            wait_for(lambda n=name: is_healthy(state, n), timeout=20, what=f"{name} healthy")
        assert not of(state, "incident.detected") and not of(state, "breaker.transitioned")
        mark = max(e["position"] for e in events(state))
        os.kill(component_pid(state, "dep-svc") or 0, signal.SIGUSR1)

        # 1. The breaker observation, on the agent, naming the dependency.
        opened = wait_for(
            lambda: [e for e in of(state, "breaker.transitioned", "agent-b") if e["data"]["state"] == "open"],
            what="the agent's breaker opened",
        )[0]
        assert opened["data"]["dependency"] == "dep-svc" and opened["data"]["failure_count"] == 3

        # 2. The dependency is the root: diagnosed from the breakers, its own probe still passing.
        diag = wait_for(lambda: of(state, "incident.diagnosed", "dep-svc"), what="dependency diagnosed")[0]
        data = diag["data"]
        assert data["failure_class"] == "dependency_outage", data
        assert data["signature"] == "breakers-open-on-managed"
        assert data["root_cause"] == "dep-svc"
        assert data["evidence"]["open_breakers"] == 1
        assert data["evidence"]["breakers"]["agent-b"]["state"] == "open"
        assert data["blast_radius"] == ["agent-b"], "the edge learned from the breaker is in the graph"
        iid = diag["incident"]

        # 3. The agent's own failing check is a symptom of it: suppressed, not an incident.
        sup = wait_for(
            lambda: of(state, "symptom.suppressed", "agent-b", after=mark), what="agent suppressed"
        )
        assert sup[0]["incident"] == iid and sup[0]["data"]["roots"] == ["dep-svc"], sup[0]
        assert sup[0]["data"]["failure_class"] == "dependency_outage"

        # 4. The remediation targets the dependency; the agent recovers without action.
        wait_for(lambda: of(state, "incident.resolved", "dep-svc"), timeout=25, what="dependency fixed")
        released = wait_for(
            lambda: of(state, "symptom.released", "agent-b", after=mark), timeout=15, what="agent released"
        )
        assert released[0]["data"]["outcome"] == "recovered"
        planned = of(state, "incident.planned")
        assert [(e["component"], e["incident"]) for e in planned] == [("dep-svc", iid)]
        steps = of(state, "step.started")
        assert [(e["component"], e["data"]["action"]) for e in steps] == [("dep-svc", "restart")]
        assert [e["component"] for e in of(state, "incident.detected")] == ["dep-svc"]
        assert len(of(state, "process.started", "agent-b")) == 1, "the agent was never restarted"
        assert len(of(state, "process.started", "dep-svc")) == 2
        assert d.stop() == 0

    timeline = healer_cli("log", "--state-dir", str(state), "--incident", str(iid))
    assert timeline.returncode == 0, timeline.stderr
    assert f"remediation of agent-b suppressed: symptom of dep-svc, incident {iid}" in timeline.stdout
