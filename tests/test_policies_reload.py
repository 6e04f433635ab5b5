"""Policies: bad files at start stop the daemon (exit 2); on SIGHUP the previous set stays in force."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.helpers import (
    DEFAULT_POLICY,
    agent_component,
    component_pid,
    events,
    free_port,
    healer_cli,
    is_healthy,
    running_daemon,
    wait_for,
    write_config,
)

BROKEN = """\
version: 1
policies:
  - name: broken
    match: {failures: [crash]}
    steps:
      - strategy: restrat
"""


def test_bad_policy_at_start_exits_2_with_file_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, agent_component("a", free_port()), policy=BROKEN)
    p = healer_cli("run", "-c", str(cfg), timeout=20)
    assert p.returncode == 2
    where = tmp_path / "policies" / "default.yaml"
    assert (
        f"{where}:6:9: policies[0].steps[0].strategy: unknown strategy 'restrat' (did you mean 'restart'?)"
        in p.stderr
    )


def test_policy_check_reports_every_problem(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BROKEN)
    (tmp_path / "b.yaml").write_text("policies:\n  - name: x\n    match: {failures: []}\n    steps: []\n")
    (tmp_path / "c.yaml").write_text("policies: [\n")
    p = healer_cli("policy", "check", str(tmp_path))
    assert p.returncode == 1
    lines = p.stdout.splitlines()
    assert f"{tmp_path / 'a.yaml'}:6:9: policies[0].steps[0].strategy: unknown strategy 'restrat'" in lines[0]
    assert any(f"{tmp_path / 'b.yaml'}:3:13: policies[0].match.failures:" in ln for ln in lines)
    assert any(f"{tmp_path / 'b.yaml'}:4:5: policies[0].steps:" in ln for ln in lines)
    assert any(ln.startswith(f"{tmp_path / 'c.yaml'}:2:1: malformed YAML") for ln in lines)


def test_sighup_with_a_broken_policy_keeps_the_previous_set(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, agent_component("agent-p", free_port()))
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(state, "agent-p"))
        loaded = events(state, "policies.loaded")
        (tmp_path / "policies" / "default.yaml").write_text(BROKEN)
        d.proc.send_signal(signal.SIGHUP)
        rejected = wait_for(lambda: events(state, "policies.rejected"), what="rejection recorded")
        assert "unknown strategy 'restrat'" in rejected[0]["data"]["problems"][0]
        assert ":6:9:" in rejected[0]["data"]["problems"][0]
        assert "policy reload rejected" in d.output()
        # The previous policies still heal.
        os.kill(component_pid(state, "agent-p") or 0, signal.SIGKILL)
        wait_for(lambda: events(state, "incident.resolved"), what="healed under the old policy")
        planned = events(state, "incident.planned")[0]
        assert planned["data"]["policy"] == "restart-then-escalate"
        assert planned["data"]["policies_hash"] == loaded[0]["data"]["hash"]
        # A valid change is taken.
        (tmp_path / "policies" / "default.yaml").write_text(
            DEFAULT_POLICY.replace("restart-then-escalate", "v2")
        )
        d.proc.send_signal(signal.SIGHUP)
        reloaded = wait_for(lambda: [e for e in events(state, "policies.loaded") if e["data"]["reload"]])
        assert reloaded[0]["data"]["policies"] == ["v2"]
        assert d.stop() == 0
