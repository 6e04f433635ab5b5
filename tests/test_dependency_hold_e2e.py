"""The liveness cascade, end to end: a dependency hangs and its dependents notice first.

Real daemon, real fakeagent processes, a real SIGSTOP. The database's probes are slow to
conclude (5 timed-out checks a second apart: up to 7.5 s, ~4.5 s once woken); its dependents
call it every 0.2 s and fail their own probe within a second. Without the hold-down each dependent would be
diagnosed first -- as a root -- and restarted, which cannot help. With it, each waits for the
database's verdict (and wakes its probes): one incident, the database's; the dependents are its
symptoms and are never restarted.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

from tests.helpers import (
    PY,
    component_pid,
    events,
    free_port,
    healer_cli,
    is_healthy,
    running_daemon,
    settle,
    wait_for,
    write_config,
)

DEPENDENTS = ("api", "worker")
# Restart whatever it is: without the hold-down the dependents' own failures would be acted on.
POLICY = """\
version: 1
policies:
  - name: restart
    match:
      components: ["*"]
      failures: [crash, hang, network_partition, unhealthy]
    steps:
      - strategy: restart
        max_attempts: 3
        cooldown: 0.2s
        verify_timeout: 10s
      - strategy: escalate
"""


def _component(name: str, port: int, deps: list[str], probe: str) -> str:
    argv = [PY, "-m", "healer.demo.fakeagent", "--name", name, "--port", str(port)]
    for dep in deps:
        argv += ["--depends-on", f"http://127.0.0.1:{{{dep}}}/health"]
    return textwrap.indent(
        textwrap.dedent(
            f"""\
            {name}:
              command:
                argv: {json.dumps(argv)}
                stop_timeout: 2s
              depends_on: {json.dumps(deps)}
              probes:
                - type: http
                  url: http://127.0.0.1:{port}/health
            """
        )
        + textwrap.indent(textwrap.dedent(probe), "      "),
        "  ",
    )


def _config(tmp: Path) -> Path:
    ports = {name: free_port() for name in ("db", *DEPENDENTS)}
    # Up to 5 x 1.5 s to conclude: seconds of margin for the dependents to notice first even on
    # a loaded machine (a 3-check db was once seen failing before them under CI load).
    slow = "interval: 1s\ntimeout: 0.5s\nfailure_threshold: 5\n"
    fast = "interval: 0.2s\ntimeout: 0.3s\nfailure_threshold: 1\n"
    comps = _component("db", ports["db"], [], slow)
    for name in DEPENDENTS:
        comps += _component(name, ports[name], ["db"], fast).replace("{db}", str(ports["db"]))
    return write_config(tmp, comps, policy=POLICY, extra="analysis:\n  settle_time: 1s\n")


def test_hung_dependency_seen_last_is_the_root_and_its_dependents_are_not_restarted(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        # All healthy at once, with no incident open: under load a dependent's 0.3 s call to
        # the db can time out during start-up, and an incident left from that would be the
        # dependent's own, not a symptom of what this test does.
        mark = settle(state, "db", *DEPENDENTS)
        os.kill(component_pid(state, "db") or 0, signal.SIGSTOP)

        wait_for(lambda: events(state, "incident.resolved", "db"), 30, what="db restarted and verified")
        wait_for(
            lambda: all(is_healthy(state, n) for n in DEPENDENTS), 20, what="the dependents healthy again"
        )
        assert d.stop() == 0

    after = [e for e in events(state) if e["position"] > mark]
    timeline = "\n".join(
        f"{e['position']} +{e['ts'] - after[0]['ts']:.3f}s {e['type']} {e['component']}" for e in after
    )

    def of(etype: str) -> list[dict[str, Any]]:
        return [e for e in after if e["type"] == etype]

    detected = of("incident.detected")
    assert [e["component"] for e in detected] == ["db"], "one incident, the dependency's"
    iid = detected[0]["incident"]
    [diag] = of("incident.diagnosed")
    assert diag["data"]["root_cause"] == "db" and diag["data"]["failure_class"] == "hang"
    # Each dependent was seen failing first, held, then attached to the db's incident.
    first_db_failure = next(e["position"] for e in of("component.failed") if e["component"] == "db")
    for name in DEPENDENTS:
        mine = [e for e in of("symptom.suppressed") if e["component"] == name]
        assert mine, f"{name} was never suppressed"
        held, attached = mine[0], mine[-1]
        assert held["position"] < first_db_failure, f"{name} did not notice before db did:\n{timeline}"
        assert held["incident"] is None and held["data"]["hold_down_s"] > 0
        assert held["data"]["wake"] == ["db"]
        assert attached["incident"] == iid and attached["data"]["roots"] == ["db"]
        assert attached["data"]["held_for_s"] < held["data"]["hold_down_s"]
    # The db was restarted; no dependent was touched.
    assert [(e["component"], e["data"]["action"]) for e in of("step.started")] == [("db", "restart")]
    for name in DEPENDENTS:
        assert [e for e in of("process.started") if e["component"] == name] == [], f"{name} restarted"
        assert not [e for e in of("symptom.released") if e["data"].get("outcome") == "still_failing"]

    # The decisions are a function of the log and the config.
    replay = healer_cli("replay", "-c", str(cfg), "--verify")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    log = healer_cli("log", "--state-dir", str(state))
    assert log.returncode == 0, log.stderr
    for name in DEPENDENTS:
        assert (
            f"remediation of {name} suppressed: db still looks healthy but its probes need up to"
            in log.stdout
        )
    post = healer_cli("postmortem", str(iid), "--state-dir", str(state))
    assert post.returncode == 0, post.stderr
    assert "hold-down until db failed" in post.stdout
