"""Plan end to end: real daemon, real agents, real signals, the real control socket and CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    agent_component,
    component_pid,
    events,
    free_port,
    healer_cli,
    running_daemon,
    settle,
    wait_for,
    write_config,
)


def policy(text: str) -> str:
    return textwrap.dedent(text)


def planned(state: Path, comp: str | None = None) -> list[dict[str, Any]]:
    return events(state, "incident.planned", comp)


def after(
    state: Path, mark: int, type_prefix: str | None = None, comp: str | None = None
) -> list[dict[str, Any]]:
    return [e for e in events(state, type_prefix, comp) if e["position"] > mark]


def kill(state: Path, comp: str) -> int:
    pid = component_pid(state, comp)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


CHAIN = policy(
    """\
    version: 1
    policies:
      - name: chain
        match: {failures: [crash, hang]}
        steps:
          - strategy: restart
            max_attempts: 1
            cooldown: 0s
            verify_timeout: 10s
          # Stands in for `strategy: rollback` (process.stop, checkpoint_restore.restore,
          # process.start): the checkpoint_restore actuator comes with the Execute/DR issues, so
          # this step is the same saga without the restore, through the installed process actuator.
          - name: rollback-stand-in
            actions:
              - {actuator: process, action: stop}
              - {actuator: process, action: start}
            max_attempts: 1
            cooldown: 0s
            verify_timeout: 10s
          - strategy: escalate
            message: the agent cannot start; look at its log
    """
)


def test_chain_restart_then_rollback_then_escalate_with_reasons(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, agent_component("looper", free_port(), "--crash-on-start"), CHAIN)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        esc = wait_for(lambda: events(state, "incident.escalated"), timeout=30, what="escalation")[0]
        steps = [(p["data"]["step"], p["data"]["strategy"]) for p in planned(state)]
        assert steps == [(0, "restart"), (1, "run")]
        saga = planned(state)[1]["data"]["actions"]
        assert [(a["actuator"], a["action"]) for a in saga] == [("process", "stop"), ("process", "start")]
        # Each step advanced on a verification failure, and said so.
        failed = events(state, "incident.verification_failed")
        assert len(failed) == 2 and all("exit status 3" in f["data"]["reason"] for f in failed)
        moved = planned(state)[1]["data"]["skipped"]
        assert moved == [
            {
                "step": 0,
                "strategy": "restart",
                "reason": "1/1 attempts used in this incident; last: process exited during verification "
                "(exit status 3)",
            }
        ]
        reason = esc["data"]["reason"]
        assert reason.startswith(
            "remediation attempts exhausted (step 0: 1 attempt(s), step 1: 1 attempt(s))"
        )
        assert "step 1 (rollback-stand-in): 1/1 attempts used" in reason
        assert reason.endswith("the agent cannot start; look at its log")
        assert [e["data"]["action"] for e in events(state, "step.started")] == ["restart", "stop", "start"]
        assert d.stop() == 0


BUDGET = policy(
    """\
    version: 1
    budget:
      max_concurrent: 2
    policies:
      - name: restart
        match: {failures: [crash, hang]}
        steps:
          - {strategy: restart, cooldown: 0s, verify_timeout: 15s}
          - {strategy: escalate}
    """
)


def test_budget_of_two_with_ten_components_failing_at_once(tmp_path: Path) -> None:
    names = [f"agent{i}" for i in range(10)]
    comps = "".join(agent_component(n, free_port(), probe_interval="0.2s") for n in names)
    cfg = write_config(tmp_path, comps, BUDGET)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        mark = settle(state, *names)
        pids = [component_pid(state, n) for n in names]
        for pid in pids:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

        def after_kill() -> list[dict[str, Any]]:
            return [e for e in events(state) if e["position"] > mark]

        wait_for(
            lambda: len([e for e in after_kill() if e["type"] == "incident.resolved"]) >= 10,
            timeout=60,
            what="all ten resolved",
        )
        log = after_kill()
        assert d.stop() == 0
    # From the log alone: an incident is in flight from its first plan until it closes.
    flying: set[int] = set()
    peak = 0
    for e in log:
        if e["type"] == "incident.planned":
            flying.add(e["incident"])
        elif e["type"] in ("incident.resolved", "incident.escalated"):
            flying.discard(e["incident"])
        peak = max(peak, len(flying))
    assert peak == 2, f"at most two at once, and the budget was used: peak {peak}"
    waited = [e for e in log if e["type"] == "incident.deferred"]
    assert {e["data"]["guardrail"] for e in waited} == {"budget.max_concurrent"}
    assert len({e["component"] for e in waited}) >= 7, "the rest waited"
    assert len([e for e in log if e["type"] == "step.started"]) == 10, "each restarted exactly once"
    assert not [e for e in log if e["type"] == "incident.escalated"]


SURVIVE = policy(
    """\
    version: 1
    policies:
      - name: restart
        match: {failures: [crash, hang]}
        steps:
          - {strategy: restart, max_attempts: 3, cooldown: 1.5s, backoff: 1, verify_timeout: 10s}
          - {strategy: escalate}
    """
)


def test_attempt_counters_survive_a_daemon_restart(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, agent_component("looper", free_port(), "--crash-on-start"), SURVIVE)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        wait_for(lambda: len(events(state, "step.started")) == 2, timeout=30, what="two attempts")
        wait_for(lambda: events(state, "incident.deferred"), what="waiting out the cooldown")
        d.proc.kill()  # no goodbye: the next daemon has only the log
        d.proc.wait(10)
    assert len(events(state, "step.started")) == 2
    with running_daemon(cfg) as d2:
        esc = wait_for(lambda: events(state, "incident.escalated"), timeout=30, what="escalation")[0]
        assert len(events(state, "step.started")) == 3, "one more attempt, not three more"
        assert "step 0: 3 attempt(s)" in esc["data"]["reason"]
        assert d2.stop() == 0
    starts = len(events(state, "process.started"))
    with running_daemon(cfg) as d3:
        wait_for(lambda: len(events(state, "daemon.started")) == 3, what="third start")
        time.sleep(2.0)  # several cooldowns: long enough for a restart, were one coming
        assert len(events(state, "process.started")) == starts, "an escalated component is not restarted"
        assert len(events(state, "step.started")) == 3
        assert d3.stop() == 0


APPROVALS = policy(
    """\
    version: 1
    policies:
      - name: quick-timeout
        match: {components: [agent-c], failures: [crash]}
        steps:
          - {strategy: restart, cooldown: 0s, approval: {timeout: 3s}}
          - {strategy: escalate}
      - name: ask-first
        match: {failures: [crash]}
        steps:
          - {strategy: restart, cooldown: 0s, verify_timeout: 15s, approval: {timeout: 5m, default: deny}}
          - {strategy: escalate}
    """
)


def test_approve_deny_and_timeout(tmp_path: Path) -> None:
    comps = "".join(agent_component(n, free_port()) for n in ("agent-a", "agent-b", "agent-c"))
    cfg = write_config(tmp_path, comps, APPROVALS)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        mark = settle(state, "agent-a", "agent-b", "agent-c")
        for n in ("agent-a", "agent-b", "agent-c"):
            kill(state, n)
        wait_for(lambda: len(after(state, mark, "approval.requested")) == 3, what="three approval requests")
        status = json.loads(healer_cli("status", "-c", str(cfg), "--json").stdout)
        pending = {a["component"]: a for a in status["approvals_pending"]}
        # agent-c's request lives 3 s: it may already have timed out by the time the CLI answers.
        assert {"agent-a", "agent-b"} <= set(pending) <= {"agent-a", "agent-b", "agent-c"}
        assert pending["agent-b"]["default"] == "deny" and pending["agent-b"]["strategy"] == "restart"
        listed = json.loads(healer_cli("approvals", "-c", str(cfg), "--json").stdout)
        assert {a["id"] for a in listed} >= {pending["agent-a"]["id"], pending["agent-b"]["id"]}
        text = healer_cli("status", "-c", str(cfg)).stdout
        assert f"approval {pending['agent-a']['id']} pending: restart on agent-a" in text

        ok = healer_cli("approve", str(pending["agent-a"]["id"]), "-c", str(cfg), "--reason", "go ahead")
        assert ok.returncode == 0, ok.stderr
        no = healer_cli(
            "deny", str(pending["agent-b"]["id"]), "-c", str(cfg), "--reason", "under investigation"
        )
        assert no.returncode == 0, no.stderr
        again = healer_cli("approve", str(pending["agent-b"]["id"]), "-c", str(cfg))
        assert again.returncode == 1 and "no longer pending: denied" in again.stderr

        wait_for(
            lambda: after(state, mark, "incident.resolved", "agent-a"), what="agent-a restarted, resolved"
        )
        wait_for(lambda: after(state, mark, "incident.escalated", "agent-b"), what="agent-b escalated")
        wait_for(
            lambda: after(state, mark, "incident.escalated", "agent-c"), timeout=10, what="agent-c timeout"
        )

        granted = events(state, "approval.granted")[0]["data"]
        assert granted["by"]["uid"] == os.getuid() and granted["by"]["user"]
        assert granted["reason"] == "go ahead"
        denied = events(state, "approval.denied")[0]["data"]
        assert denied["reason"] == "under investigation"
        expired = events(state, "approval.expired", "agent-c")[0]["data"]
        assert expired["outcome"] == "denied" and expired["by"] == {"timeout": True}
        assert [e["component"] for e in after(state, mark, "step.started")] == ["agent-a"]
        assert "denied by" in after(state, mark, "incident.escalated", "agent-b")[0]["data"]["reason"]
        log = healer_cli("log", "-c", str(cfg)).stdout
        assert "APPROVAL" in log and "denied by" in log and "expired" in log
        assert d.stop() == 0


def _as_nobody(sock_path: Path, payload: bytes) -> bytes:
    """Connect to the control socket from a forked child running as uid/gid 65534."""
    r, w = os.pipe()
    # Reach the socket through a directory fd opened as root, so the test's private temp
    # ancestors need no loosening: only the state dir's and the socket's own modes are checked.
    dir_fd = os.open(sock_path.parent, os.O_RDONLY | os.O_DIRECTORY)
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no imports, just the socket
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(f"/proc/self/fd/{dir_fd}/{sock_path.name}")
            s.sendall(payload)
            out = b""
            while chunk := s.recv(4096):
                out += chunk
            os.write(w, out or b"<closed>")
        except BaseException as exc:
            os.write(w, f"child error: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(dir_fd)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another uid")
def test_control_socket_refuses_other_users(tmp_path: Path) -> None:
    pol = APPROVALS.replace("timeout: 5m", "timeout: 60s")
    cfg = write_config(tmp_path, agent_component("agent-a", free_port()), pol)
    state = tmp_path / "state"
    sock = state / "control.sock"
    with running_daemon(cfg) as d:
        mark = settle(state, "agent-a")
        assert sock.stat().st_mode & 0o777 == 0o600
        kill(state, "agent-a")
        req = wait_for(lambda: after(state, mark, "approval.requested"), what="approval requested")[0]
        # Open the file-system path to everyone, so only the peer-credential check stands between
        # uid 65534 and the daemon.
        os.chmod(state, 0o711)
        os.chmod(sock, 0o666)
        answer = _as_nobody(
            sock, json.dumps({"op": "approve", "id": req["data"]["approval"]}).encode() + b"\n"
        )
        assert json.loads(answer) == {"ok": False, "error": "permission denied for uid 65534"}
        time.sleep(0.3)
        assert not events(state, "approval.granted"), "the refused request changed nothing"
        assert "refused uid 65534" in d.output()
        # Garbage from the owner gets an error, not a crash.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock))
            s.sendall(b"{not json\n")
            assert json.loads(s.recv(4096))["ok"] is False
        ok = healer_cli("approve", str(req["data"]["approval"]), "-c", str(cfg), "--reason", "owner")
        assert ok.returncode == 0, ok.stderr
        wait_for(lambda: after(state, mark, "incident.resolved"), what="resolved after the owner approved")
        assert d.stop() == 0


SIMPLE = policy(
    """\
    version: 1
    policies:
      - name: restart
        match: {failures: [crash, hang]}
        steps:
          - {strategy: restart, cooldown: 0s, verify_timeout: 15s}
          - {strategy: escalate}
    """
)


def test_silence_holds_actions_and_they_resume_after(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, agent_component("agent-s", free_port()), SIMPLE)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        mark = settle(state, "agent-s")
        bad = healer_cli("silence", "agent-x", "--for", "3s", "-c", str(cfg))
        assert bad.returncode == 1 and "no configured component matches 'agent-x'" in bad.stderr
        out = healer_cli("silence", "agent-s", "--for", "2s", "--reason", "deploying", "-c", str(cfg))
        assert out.returncode == 0, out.stderr
        created = events(state, "silence.created")[0]
        kill(state, "agent-s")
        held = wait_for(lambda: after(state, mark, "incident.deferred"), what="held by the silence")[0][
            "data"
        ]
        assert held["guardrail"] == "silence" and "deploying" in held["reason"]
        assert held["next_allowed_at"] == pytest.approx(created["data"]["until"])
        time.sleep(max(0.0, created["data"]["until"] - time.time() - 0.5))
        assert not after(state, mark, "step.started"), "no action during the silence"
        wait_for(
            lambda: after(state, mark, "incident.resolved"), timeout=15, what="resumed after the silence"
        )
        started = after(state, mark, "step.started")[0]
        assert started["ts"] >= created["data"]["until"]

        # A long silence, lifted by hand: actions resume at once.
        out = healer_cli("silence", "agent-*", "--for", "30m", "--reason", "long", "-c", str(cfg))
        assert out.returncode == 0, out.stderr
        listed = healer_cli("silence", "--list", "-c", str(cfg), "--json")
        rows = json.loads(listed.stdout)["silences"]
        assert [(r["component"], r["reason"]) for r in rows] == [("agent-*", "long")]
        status = json.loads(healer_cli("status", "-c", str(cfg), "--json").stdout)
        assert [s["component"] for s in status["silences"]] == ["agent-*"]
        mark = settle(state, "agent-s")
        kill(state, "agent-s")
        wait_for(lambda: after(state, mark, "incident.deferred"), what="held again")
        lift = healer_cli("silence", "--expire", str(rows[0]["id"]), "-c", str(cfg))
        assert lift.returncode == 0, lift.stderr
        wait_for(lambda: after(state, mark, "incident.resolved"), timeout=15, what="resumed when lifted")
        assert events(state, "silence.expired")[0]["data"]["by"]["uid"] == os.getuid()
        assert d.stop() == 0


EXPLAIN = policy(
    """\
    version: 1
    policies:
      - name: oom
        priority: 10
        match: {failures: [crash]}
        when: {evidence: {exit_code: 137}}
        steps: [{strategy: escalate, message: out of memory}]
      - name: crashes
        match: {failures: [crash]}
        steps:
          - {strategy: restart, cooldown: 0s, verify_timeout: 15s}
          - {strategy: escalate}
    """
)


def _essence(data: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "policy",
        "policy_hash",
        "policies_hash",
        "step",
        "strategy",
        "actions",
        "rejected",
        "skipped",
        "guardrail",
    )
    out = {k: data.get(k) for k in keep}
    out["checks"] = [(c["guardrail"], c["ok"]) for c in data.get("guardrails", [])]
    return out


def test_explain_matches_what_the_daemon_then_does(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, agent_component("agent-e", free_port()), EXPLAIN)
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        mark = settle(state, "agent-e")
        args = ("policy", "explain", "-c", str(cfg), "--component", "agent-e", "--failure", "crash")
        predicted = json.loads(healer_cli(*args, "--evidence", "signal=SIGKILL", "--json").stdout)
        assert predicted["decision"] == "planned"
        human = healer_cli(*args)
        assert "rejected oom" in human.stdout and "decision: PLAN restart attempt 1/3" in human.stdout
        kill(state, "agent-e")
        actual = wait_for(lambda: after(state, mark, "incident.planned"), what="the daemon's plan")[0]
        assert _essence(predicted["events"][0]["data"]) == _essence(actual["data"])
        assert [r["policy"] for r in actual["data"]["rejected"]] == ["oom"]
        wait_for(lambda: after(state, mark, "incident.resolved"), what="resolved")

        # With a silence in force, explain says what will hold the action back, and it does.
        assert healer_cli("silence", "agent-e", "--for", "20s", "-c", str(cfg)).returncode == 0
        mark = settle(state, "agent-e")
        predicted = json.loads(healer_cli(*args, "--json").stdout)
        assert predicted["decision"] == "deferred"
        assert predicted["blocked_by"]["guardrail"] == "silence"
        kill(state, "agent-e")
        actual = wait_for(lambda: after(state, mark, "incident.deferred"), what="held")[0]
        assert _essence(predicted["events"][0]["data"]) == _essence(actual["data"])
        assert d.stop() == 0


def test_reload_keeps_the_last_good_set_and_records_the_hash_used(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, agent_component("agent-r", free_port()), SIMPLE)
    state = tmp_path / "state"
    pol_dir = tmp_path / "policies"
    with running_daemon(cfg) as d:
        mark = settle(state, "agent-r")
        first_hash = events(state, "policies.loaded")[0]["data"]["hash"]
        (pol_dir / "zz-broken.yaml").write_text(
            "policies:\n  - name: bad\n    match: {failures: [crash]}\n"
            "    steps:\n      - strategy: restrat\n"
        )
        out = healer_cli("reload", "-c", str(cfg))
        assert out.returncode == 1
        assert (
            f"{pol_dir / 'zz-broken.yaml'}:5:9: policies[0].steps[0].strategy: unknown strategy 'restrat'"
            in out.stderr
        )
        rejected = events(state, "policies.rejected")
        assert rejected and "zz-broken.yaml:5:9" in rejected[0]["data"]["problems"][0]
        kill(state, "agent-r")
        plan1 = wait_for(lambda: after(state, mark, "incident.planned"), what="plan with the old set")[0]
        assert plan1["data"]["policies_hash"] == first_hash
        wait_for(lambda: after(state, mark, "incident.resolved"))

        (pol_dir / "zz-broken.yaml").unlink()
        (pol_dir / "default.yaml").write_text(SIMPLE.replace("cooldown: 0s", "cooldown: 0.1s"))
        d.proc.send_signal(signal.SIGHUP)
        loaded = wait_for(lambda: events(state, "policies.loaded")[1:], what="SIGHUP reload")[0]["data"]
        assert loaded["reload"] is True and loaded["hash"] != first_hash
        out = healer_cli("reload", "-c", str(cfg))
        assert out.returncode == 0 and loaded["hash"] in out.stdout
        mark = settle(state, "agent-r")
        kill(state, "agent-r")
        plan2 = wait_for(lambda: after(state, mark, "incident.planned"), what="plan with the new set")[0]
        assert plan2["data"]["policies_hash"] == loaded["hash"]
        assert d.stop() == 0
