"""Analyze end to end: a real daemon, real agent processes, real signals, real SQLite.

The agents are healer.demo.fakeagent processes started with --depends-on, so their /health
really fails while the service they use is down, and really recovers when it is back.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import FleetState
from tests.helpers import (
    DEFAULT_POLICY,
    PY,
    agent_component,
    component_pid,
    events,
    free_port,
    healer_cli,
    http_ok,
    is_healthy,
    running_daemon,
    wait_for,
    write_config,
)

AGENTS = ("planner-agent", "research-agent", "writer-agent")
SETTLE = "analysis:\n  settle_time: 2s\n"


def slow_service(name: str, port: int) -> str:
    """Like a real database, it takes a while to come back: 1.5 s before it listens. Its HTTP
    probe tolerates that (10 x 0.3 s); a crash is seen at once anyway (pidfd). It must stay up
    2 s before it counts as healthy, so its dependents are surely seen failing before it
    recovers, however loaded the machine is."""
    argv = [PY, "-m", "healer.demo.fakeagent", "--name", name, "--port", str(port), "--startup-delay", "1.5"]
    return textwrap.indent(
        textwrap.dedent(
            f"""\
            {name}:
              command:
                argv: {json.dumps(argv)}
                stop_timeout: 2s
              probes:
                - type: http
                  url: http://127.0.0.1:{port}/health
                  interval: 0.3s
                  timeout: 0.3s
                  failure_threshold: 10
                - type: process
                  min_uptime: 2s
            """
        ),
        "  ",
    )


def service_and_agents(agents: tuple[str, ...]) -> tuple[str, dict[str, int]]:
    ports = {name: free_port() for name in ("vector-db", *agents)}
    health = f"http://127.0.0.1:{ports['vector-db']}/health"
    comps = slow_service("vector-db", ports["vector-db"])
    for name in agents:
        comps += agent_component(name, ports[name], "--depends-on", health, deps=["vector-db"])
    return comps, ports


def of(state: Path, etype: str, component: str | None = None, after: int = 0) -> list[dict[str, Any]]:
    return [e for e in events(state, etype, component) if e["type"] == etype and e["position"] > after]


def last_position(state: Path) -> int:
    return int(events(state)[-1]["position"])


def replayed_digest(state: Path) -> str:
    recs = [
        RecordedEvent(e["position"], e["type"], e["ts"], e["component"], e["incident"], e["data"])
        for e in events(state)
    ]
    return FleetState().apply_all(recs).digest()


def test_service_down_is_one_incident_its_agents_are_suppressed_and_recover_without_action(
    tmp_path: Path,
) -> None:
    comps, ports = service_and_agents(AGENTS)
    cfg = write_config(tmp_path, comps, extra=SETTLE)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        for name in ("vector-db", *AGENTS):
            wait_for(lambda n=name: is_healthy(state, n), what=f"{name} healthy")
        # (While the service starts, its agents fail too and wait for it: no incident either.)
        assert not of(state, "incident.detected")
        mark = last_position(state)
        os.kill(component_pid(state, "vector-db") or 0, signal.SIGKILL)

        resolved = wait_for(
            lambda: of(state, "incident.resolved", "vector-db"), timeout=20, what="service fixed"
        )
        iid = resolved[0]["incident"]
        released = wait_for(
            lambda: (
                len(of(state, "symptom.released", after=mark)) == len(AGENTS)
                and of(state, "symptom.released", after=mark)
            ),
            timeout=20,
            what="every agent recovered",
        )
        assert {e["component"] for e in released} == set(AGENTS)
        assert all(e["data"]["outcome"] == "recovered" for e in released), released
        for name in AGENTS:
            assert http_ok(ports[name]), f"{name} answers again"

        detected = of(state, "incident.detected")
        assert [(e["component"], e["incident"]) for e in detected] == [("vector-db", iid)], "one incident"
        diag = of(state, "incident.diagnosed")[0]
        assert diag["data"]["failure_class"] == "crash" and diag["data"]["root_cause"] == "vector-db"
        assert diag["data"]["blast_radius"] == sorted(AGENTS)
        suppressed = of(state, "symptom.suppressed", after=mark)
        assert sorted(e["component"] for e in suppressed) == sorted(AGENTS), "three symptoms suppressed"
        for e in suppressed:
            assert e["incident"] == iid and e["data"]["roots"] == ["vector-db"]
            assert e["data"]["failure_class"] == "dependency_outage"
        # The service was restarted; no agent was touched.
        steps = of(state, "step.started")
        assert [(e["component"], e["data"]["action"]) for e in steps] == [("vector-db", "restart")]
        for name in AGENTS:
            assert len(of(state, "process.started", name)) == 1, f"{name} was never restarted"
        time.sleep(2.2)  # past the settle time: nothing more may happen to the agents
        assert len(of(state, "incident.detected")) == 1 and not of(state, "step.started", "planner-agent")
        assert d.stop() == 0

    stopped = of(state, "daemon.stopped")[-1]
    assert stopped["data"]["digest"] == replayed_digest(state), "the log replays to the live snapshot"

    # Postmortem data: the incident lists its symptoms; its timeline shows each suppression.
    incidents = json.loads(healer_cli("incidents", "--state-dir", str(state), "--json").stdout)
    assert [(i["id"], i["component"], sorted(i["symptoms"])) for i in incidents] == [
        (iid, "vector-db", sorted(AGENTS))
    ]
    timeline = healer_cli("log", "--state-dir", str(state), "--incident", str(iid))
    assert timeline.returncode == 0, timeline.stderr
    for name in AGENTS:
        assert f"remediation of {name} suppressed: symptom of vector-db, incident {iid}" in timeline.stdout


def test_symptom_still_broken_after_its_root_recovered_gets_its_own_incident_after_settling(
    tmp_path: Path,
) -> None:
    comps, _ports = service_and_agents(("agent-x",))
    cfg = write_config(tmp_path, comps, extra=SETTLE)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        for name in ("vector-db", "agent-x"):
            wait_for(lambda n=name: is_healthy(state, n), what=f"{name} healthy")
        mark = last_position(state)
        os.kill(component_pid(state, "vector-db") or 0, signal.SIGKILL)
        sup = wait_for(
            lambda: of(state, "symptom.suppressed", "agent-x", after=mark), what="agent-x suppressed"
        )
        assert sup[0]["data"]["roots"] == ["vector-db"] and sup[0]["incident"] is not None
        assert not of(state, "incident.resolved", "vector-db"), "the service is still down"
        # The agent now breaks for a reason of its own, while it is a suppressed symptom.
        os.kill(component_pid(state, "agent-x") or 0, signal.SIGKILL)

        root_fixed = wait_for(
            lambda: of(state, "incident.resolved", "vector-db"), timeout=20, what="root fixed"
        )
        assert len(of(state, "process.started", "agent-x")) == 1, "no remediation while the root was open"
        settling = wait_for(lambda: of(state, "symptom.settling", "agent-x"), what="settling")
        assert settling[0]["data"]["settle_s"] == 2.0
        own = wait_for(lambda: of(state, "incident.detected", "agent-x"), timeout=15, what="own incident")
        released = of(state, "symptom.released", "agent-x", after=mark)
        assert [e["data"]["outcome"] for e in released] == ["still_failing"]
        waited = own[0]["ts"] - root_fixed[0]["ts"]
        assert waited >= 2.0, f"diagnosed {waited:.2f}s after the root recovered, before the settle time"
        diag = of(state, "incident.diagnosed", "agent-x")[0]
        assert diag["data"]["failure_class"] == "crash" and diag["data"]["root_cause"] == "agent-x"
        assert diag["data"]["evidence"]["observation"] == "settle"
        # Now it is remediated on its own.
        wait_for(lambda: of(state, "incident.resolved", "agent-x"), timeout=20, what="agent-x fixed")
        assert len(of(state, "process.started", "agent-x")) == 2
        assert d.stop() == 0


PROXY = """\
import socket, sys, threading
listen, target = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen))
srv.listen(64)
print("ready", flush=True)
def pump(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        a.close(); b.close()
while True:
    client, _ = srv.accept()
    try:
        upstream = socket.create_connection(("127.0.0.1", target), timeout=1)
    except OSError:
        client.close(); continue
    threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
"""


class Proxy:
    """The network path between healer and a component: a TCP forwarder in its own process.
    Killing it partitions the component from healer while the component itself runs on."""

    def __init__(self, script: Path, listen: int, target: int) -> None:
        self.argv = [PY, str(script), str(listen), str(target)]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def live_agent(name: str, port: int, probe_port: int | None = None) -> str:
    argv = [PY, "-m", "healer.demo.fakeagent", "--name", name, "--port", str(port)]
    return textwrap.indent(
        textwrap.dedent(
            f"""\
            {name}:
              command:
                argv: {json.dumps(argv)}
                stop_timeout: 2s
              probes:
                - type: http
                  url: http://127.0.0.1:{probe_port or port}/health
                  interval: 0.3s
                  timeout: 0.3s
                  failure_threshold: 2
                - type: process
                  interval: 0.1s
                  min_uptime: 0.5s
            """
        ),
        "  ",
    )


def test_partition_is_told_apart_from_crash_and_hang(tmp_path: Path) -> None:
    ports = {n: free_port() for n in ("svc", "hanger", "peer", "path")}
    script = tmp_path / "proxy.py"
    script.write_text(PROXY)
    proxy = Proxy(script, ports["path"], ports["svc"])
    proxy.start()
    comps = (
        live_agent("svc", ports["svc"], probe_port=ports["path"])
        + live_agent("hanger", ports["hanger"])
        + live_agent("peer", ports["peer"])
    )
    cfg = write_config(tmp_path, comps)
    state = tmp_path / "state"
    hung: int | None = None
    try:
        with running_daemon(cfg) as d:
            for name in ("svc", "hanger", "peer"):
                wait_for(lambda n=name: is_healthy(state, n), what=f"{name} healthy")
            svc_pid = component_pid(state, "svc")

            # 1. The path breaks; the process runs on: a partition. No restart (there is no policy
            #    for partitions in this config, so it is escalated to a human).
            proxy.kill()
            esc = wait_for(lambda: of(state, "incident.escalated", "svc"), what="partition escalated")
            diag = of(state, "incident.diagnosed", "svc")[0]
            assert diag["data"]["failure_class"] == "network_partition", diag["data"]
            ev = diag["data"]["evidence"]
            assert ev["process_alive"] is True and ev["process_status"] in ("sleeping", "running")
            assert ev["only_network_probes_failing"] is True and ev["peers_healthy"] == 2
            assert "no policy handles 'network_partition'" in esc[0]["data"]["reason"]
            assert component_pid(state, "svc") == svc_pid and not of(state, "step.started", "svc")

            # The path comes back: the incident closes without any action.
            proxy.start()
            closed = wait_for(lambda: of(state, "incident.resolved", "svc"), what="partition over")
            assert closed[0]["data"]["resolution"] == "recovered after escalation"

            # 2. Same component, same unreachable endpoint, but the process is gone: a crash.
            os.kill(svc_pid or 0, signal.SIGKILL)
            wait_for(lambda: len(of(state, "incident.resolved", "svc")) == 2, timeout=20, what="crash fixed")
            crash = of(state, "incident.diagnosed", "svc")[1]
            assert crash["data"]["failure_class"] == "crash", crash["data"]
            assert crash["data"]["evidence"]["process_alive"] is False
            assert [e["data"]["action"] for e in of(state, "step.started", "svc")] == ["restart"]

            # 3. A process that is alive but stopped, with healthy peers: a hang, not a partition.
            hung = component_pid(state, "hanger")
            os.kill(hung or 0, signal.SIGSTOP)
            wait_for(lambda: of(state, "incident.diagnosed", "hanger"), what="hang diagnosed")
            hang = of(state, "incident.diagnosed", "hanger")[0]
            assert hang["data"]["failure_class"] == "hang", hang["data"]
            assert hang["data"]["evidence"]["process_status"] == "stopped"
            # The Monitor read the OS state itself as the component failed, so a component with
            # only network probes is judged the same way (not by whether its peers failed yet).
            failed = of(state, "component.failed", "hanger")[0]
            assert failed["data"]["process"] == {"pid": hung, "status": "stopped"}, failed["data"]
            wait_for(lambda: of(state, "incident.resolved", "hanger"), timeout=20, what="hang fixed")
            assert d.stop() == 0
    finally:
        proxy.kill()
        if hung is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung, signal.SIGCONT)


FLAPPING_POLICY = DEFAULT_POLICY.replace(
    "policies:\n",
    """policies:
  - name: flapping-to-a-human
    priority: 10
    match:
      components: ["*"]
      failures: [flapping]
    steps:
      - strategy: escalate
""",
)


def test_flapping_component_is_classified_and_escalated_not_restarted_again(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, agent_component("flappy", port), policy=FLAPPING_POLICY)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(state, "flappy"), what="healthy")
        for cycle in (1, 2):
            os.kill(component_pid(state, "flappy") or 0, signal.SIGKILL)
            wait_for(lambda c=cycle: len(of(state, "incident.resolved", "flappy")) == c, timeout=20)
        classes = [e["data"]["failure_class"] for e in of(state, "incident.diagnosed")]
        assert classes == ["crash", "crash"]
        os.kill(component_pid(state, "flappy") or 0, signal.SIGKILL)
        esc = wait_for(lambda: of(state, "incident.escalated", "flappy"), what="escalated")
        diag = of(state, "incident.diagnosed")[-1]
        assert diag["data"]["failure_class"] == "flapping"
        assert diag["data"]["evidence"]["transitions"] == 5
        assert esc[0]["data"]["policy"] == "flapping-to-a-human"
        starts = len(of(state, "process.started", "flappy"))
        time.sleep(1.0)  # a restart, were one coming, would have started by now (cooldown 0.2 s)
        assert len(of(state, "process.started", "flappy")) == starts == 3
        assert d.stop() == 0


def test_configured_dependency_cycle_exits_2_naming_the_cycle(tmp_path: Path) -> None:
    comps = (
        agent_component("ingest", free_port(), deps=["index"])
        + agent_component("index", free_port(), deps=["search"])
        + agent_component("search", free_port(), deps=["ingest"])
    )
    cfg = write_config(tmp_path, comps)
    out = subprocess.run(
        [PY, "-m", "healer", "run", "-c", str(cfg)], check=False, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2, out.stderr
    m = re.search(r"dependency cycle: (\S+) -> (\S+) -> (\S+) -> (\S+)", out.stderr)
    assert m, out.stderr
    cycle = list(m.groups())
    assert cycle[0] == cycle[3] and set(cycle[:3]) == {"ingest", "index", "search"}
    # In depends-on order: each names the next as a dependency.
    deps = {"ingest": "index", "index": "search", "search": "ingest"}
    assert all(deps[a] == b for a, b in itertools.pairwise(cycle))
    assert str(cfg) in out.stderr and "depends_on" in out.stderr
    assert not (tmp_path / "state").exists(), "nothing started"
