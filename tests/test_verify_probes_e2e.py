"""`verify.probes` end to end: a real daemon, real agents with two probes each, real restarts.

Each agent has `http` (its /health, which passes once it is up) and `dep` (a TCP check of a port
nobody listens on, which always fails). One policy verifies its restart by `http` alone, the other
by `dep` alone: the first step succeeds although `dep` still fails; the second fails although
`http` passes, and its chain moves on."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

from tests.helpers import PY, events, free_port, healer_cli, running_daemon, wait_for, write_config


def _agent(name: str, port: int, closed_port: int) -> str:
    argv = [PY, "-m", "healer.demo.fakeagent", "--name", name, "--port", str(port)]
    return textwrap.indent(
        textwrap.dedent(
            f"""\
            {name}:
              command:
                argv: {json.dumps(argv)}
                stop_timeout: 2s
              probes:
                - {{name: http, type: http, url: "http://127.0.0.1:{port}/health", interval: 0.2s,
                    timeout: 0.3s, failure_threshold: 2}}
                - {{name: dep, type: tcp, host: 127.0.0.1, port: {closed_port}, interval: 0.2s,
                    timeout: 0.3s, failure_threshold: 1}}
            """
        ),
        "  ",
    )


POLICY = """\
version: 1
policies:
  - name: verified-by-http
    match: {components: [by-http], failures: ["*"]}
    steps:
      # `window`: a second incident would not restart again (the test says there is none).
      - {strategy: restart, cooldown: 0s, max_attempts: 1, window: 10m, verify: {probes: [http], timeout: 10s}}
      - {strategy: escalate, message: by-http still failing}
  - name: verified-by-dep
    match: {components: [by-dep], failures: ["*"]}
    steps:
      - {strategy: restart, cooldown: 0s, max_attempts: 1, verify: {probes: [dep], timeout: 2s}}
      - {strategy: escalate, message: dep never came back}
"""


def test_only_the_named_probes_decide_a_step(tmp_path: Path) -> None:
    closed = free_port()  # nobody listens here: `dep` fails on every check
    comps = _agent("by-http", free_port(), closed) + _agent("by-dep", free_port(), closed)
    cfg = write_config(tmp_path, comps, POLICY)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        # Both fail `dep` from the start: one incident each, remediated by a restart.
        esc = wait_for(
            lambda: events(state, "incident.escalated", "by-dep"), timeout=30, what="by-dep escalated"
        )
        ok = wait_for(
            lambda: events(state, "incident.verified", "by-http"), timeout=30, what="by-http verified"
        )
        # by-http: verified by `http` while `dep` kept failing; the incident closed as remediated.
        verified = ok[0]["data"]
        assert verified["probes"] == ["http"] and verified["still_failing"] == ["dep"]
        resolved = events(state, "incident.resolved", "by-http")
        assert [r["data"]["resolution"] for r in resolved] == ["remediated"]
        restart = events(state, "step.succeeded", "by-http")[-1]
        after = [e for e in events(state, component="by-http") if e["position"] > restart["position"]]
        assert not [e for e in after if e["type"] == "component.recovered"], "dep never passed"
        # The http probe's pass was its own event (the component stayed failing on `dep`).
        passed = [
            e
            for e in after
            if e["type"] == "probe.transitioned"
            and e["data"]["probe"] == "http"
            and e["data"]["status"] == "passing"
        ]
        assert passed and passed[0]["position"] < ok[0]["position"]

        # by-dep: `http` passed, `dep` did not: the verification failed and the chain moved on.
        failed = events(state, "incident.verification_failed", "by-dep")
        assert [f["data"]["reason"] for f in failed] == [
            "probes not passing within the verification timeout (2.0s): dep failing"
        ]
        probes = {
            e["data"]["probe"]: e["data"]["status"] for e in events(state, "probe.transitioned", "by-dep")
        }
        assert probes.get("http") == "passing"
        assert esc[0]["data"]["reason"].endswith("dep never came back")
        assert not events(state, "incident.verified", "by-dep")

        log = healer_cli("log", "-c", str(cfg)).stdout
        assert "by-http: probe http unknown -> passing" in log
        assert "by-http: verified by probes http" in log and "(still failing: dep)" in log

        # What was seen while by-http's incident was open is not a new failure: no second one.
        time.sleep(1.0)
        assert len(events(state, "incident.detected", "by-http")) == 1
        assert len(events(state, "step.started", "by-http")) == 1

        # A reload naming a probe the component does not have is refused with file:line, and
        # the policies in force stay.
        loaded = events(state, "policies.loaded")[-1]["data"]["hash"]
        where = tmp_path / "policies" / "default.yaml"
        where.write_text(POLICY.replace("probes: [dep]", "probes: [dep, heartbeat]"))
        out = healer_cli("reload", "-c", str(cfg))
        assert out.returncode == 1
        line = next(i for i, ln in enumerate(where.read_text().splitlines(), 1) if "heartbeat" in ln)
        assert f"{where}:{line}:" in out.stderr
        assert "verify.probes[1]: unknown probe 'heartbeat': not a probe of by-dep" in out.stderr
        rejected = wait_for(lambda: events(state, "policies.rejected"), what="policies.rejected")
        assert "unknown probe 'heartbeat'" in rejected[0]["data"]["problems"][0]
        assert events(state, "policies.loaded")[-1]["data"]["hash"] == loaded
        assert d.stop() == 0
    # Every decision, verifications by named probes included, is re-made identically from the log.
    where.write_text(POLICY)
    replayed = healer_cli("replay", "-c", str(cfg), "--verify")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "re-made identically" in replayed.stdout


def test_daemon_refuses_to_start_with_an_unknown_probe_name(tmp_path: Path) -> None:
    comps = _agent("by-http", free_port(), free_port())
    cfg = write_config(tmp_path, comps, POLICY.replace("probes: [http]", "probes: [htp]"))
    p = healer_cli("run", "-c", str(cfg), timeout=20)
    assert p.returncode == 2
    where = tmp_path / "policies" / "default.yaml"
    line = where.read_text().splitlines()[6]
    assert (
        f"{where}:7:{line.index('htp') + 1}: policies[0].steps[0].verify.probes[0]: unknown probe 'htp': not a probe of "
        "by-http, matched by this policy (did you mean 'http'?)" in p.stderr
    )
