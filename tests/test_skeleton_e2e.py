"""The walking skeleton end to end: real daemon process, real agents, real signals, real SQLite."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import psutil

from tests.helpers import (
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

CHAIN = [
    "incident.detected",
    "incident.diagnosed",
    "incident.planned",
    "step.started",
    "step.succeeded",
    "incident.verified",
    "incident.resolved",
]


def incident_chain(state: Path, incident: int) -> list[str]:
    return [e["type"] for e in events(state) if e["incident"] == incident]


def test_kill9_agent_is_restarted_verified_and_resolved(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, agent_component("agent-a", port))
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(d.state_dir, "agent-a"), what="agent-a healthy")
        old = component_pid(d.state_dir, "agent-a")
        assert old is not None
        os.kill(old, signal.SIGKILL)
        resolved = wait_for(lambda: events(d.state_dir, "incident.resolved"), what="incident resolved")
        new = component_pid(d.state_dir, "agent-a")
        assert new is not None and new != old
        assert http_ok(port), "a new process must answer its health endpoint"
        iid = resolved[0]["incident"]
        assert incident_chain(d.state_dir, iid) == CHAIN
        diag = events(d.state_dir, "incident.diagnosed")[0]
        assert diag["data"]["failure_class"] == "crash"
        assert diag["data"]["evidence"]["signal"] == "SIGKILL"
        assert d.stop() == 0

    out = healer_cli("incidents", "--state-dir", str(tmp_path / "state"), "--json")
    assert out.returncode == 0, out.stderr
    incidents = json.loads(out.stdout)
    assert len(incidents) == 1
    inc = incidents[0]
    assert {k: inc[k] for k in ("id", "component", "failure_class", "root_cause", "status")} == {
        "id": iid,
        "component": "agent-a",
        "failure_class": "crash",
        "root_cause": "agent-a",
        "status": "resolved",
    }
    assert inc["opened_at"] and inc["resolved_at"]
    assert [(a["actuator"], a["outcome"]) for a in inc["actions"]] == [("process", "succeeded")]
    assert inc["actions"][0]["started_at"]


def test_sigstop_is_a_hang_and_is_restarted(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, agent_component("agent-h", port))
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(d.state_dir, "agent-h"), what="agent-h healthy")
        old = component_pid(d.state_dir, "agent-h")
        assert old is not None
        os.kill(old, signal.SIGSTOP)
        try:
            resolved = wait_for(lambda: events(d.state_dir, "incident.resolved"), what="hang resolved")
        finally:
            try:
                os.kill(old, signal.SIGCONT)
            except ProcessLookupError:
                pass
        diag = events(d.state_dir, "incident.diagnosed")[0]
        assert diag["data"]["failure_class"] == "hang"
        assert diag["data"]["evidence"]["process_alive"] is True
        assert incident_chain(d.state_dir, resolved[0]["incident"]) == CHAIN
        new = component_pid(d.state_dir, "agent-h")
        assert new != old and http_ok(port)
        # The hung process was stopped by healer (SIGTERM reaches it because healer also sends SIGCONT).
        exits = [e for e in events(d.state_dir, "process.exited", "agent-h") if e["data"]["pid"] == old]
        assert exits and exits[0]["data"]["expected"] is True


def test_crash_loop_stops_at_the_attempt_limit_and_escalates(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, agent_component("flaky", port, "--crash-on-start"))
    with running_daemon(cfg) as d:
        esc = wait_for(lambda: events(d.state_dir, "incident.escalated"), timeout=30, what="escalation")
        starts_at_escalation = len(events(d.state_dir, "process.started", "flaky"))
        time.sleep(2.0)  # long enough for several more restarts, were any still coming
        starts = events(d.state_dir, "process.started", "flaky")
        assert len(starts) == starts_at_escalation == 1 + 3, "first start plus max_attempts restarts"
        assert len(events(d.state_dir, "step.started", "flaky")) == 3
        assert "attempts exhausted" in esc[0]["data"]["reason"]
        assert len(events(d.state_dir, "incident.detected")) == 1, "repeat crashes stay in one incident"
        failed = events(d.state_dir, "incident.verification_failed")
        assert len(failed) == 3 and all("exit status 3" in f["data"]["reason"] for f in failed)
        assert d.stop() == 0
    out = json.loads(healer_cli("incidents", "-c", str(cfg), "--json").stdout)
    assert [i["status"] for i in out] == ["escalated"]


def test_sigterm_exits_0_and_restart_rebuilds_the_same_projections(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, agent_component("agent-r", port))
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(state, "agent-r"))
        os.kill(component_pid(state, "agent-r") or 0, signal.SIGKILL)
        wait_for(lambda: events(state, "incident.resolved"))
        assert d.stop(signal.SIGTERM) == 0
    before = healer_cli("incidents", "--state-dir", str(state), "--json").stdout
    stopped = events(state, "daemon.stopped")[-1]

    with running_daemon(cfg) as d2:
        started = wait_for(lambda: events(state, "daemon.started")[1:], what="second start")[0]
        assert started["data"]["rebuilt_digest"] == stopped["data"]["digest"]
        assert started["data"]["rebuilt_position"] == stopped["position"]
        assert healer_cli("incidents", "--state-dir", str(state), "--json").stdout == before
        wait_for(lambda: is_healthy(state, "agent-r"), what="agent running again after restart")
        assert d2.stop() == 0
    positions = [e["position"] for e in events(state)]
    assert positions == list(range(1, len(positions) + 1)), "the log is gapless"


def test_daemon_killed_9_adopts_its_running_agents(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, agent_component("agent-k", port))
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(state, "agent-k"))
        pid = component_pid(state, "agent-k")
        d.proc.kill()
        d.proc.wait()
        assert http_ok(port), "agents outlive a crashed daemon"
        with running_daemon(cfg) as d2:
            wait_for(lambda: events(state, "process.adopted"), what="adoption")
            assert component_pid(state, "agent-k") == pid
            assert len(events(state, "process.started", "agent-k")) == 1, "no second copy was started"
            assert d2.stop() == 0
        assert not http_ok(port)


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    cfg = write_config(tmp_path, agent_component("agent-n", free_port()))
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"}
    got: list[str] = []

    def receive_until(marker: str) -> None:
        while not any(marker in m for m in got):
            got.append(sock.recv(4096).decode())

    with running_daemon(cfg, env=env) as d:
        receive_until("READY=1")
        receive_until("WATCHDOG=1")
        assert d.proc.poll() is None
        d.proc.send_signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert d.proc.wait(20) == 0
    sock.close()
    ready = next(m for m in got if "READY=1" in m)
    assert "STATUS=" in ready
    assert got.index(ready) < next(i for i, m in enumerate(got) if "STOPPING=1" in m)
    assert sum("WATCHDOG=1" in m for m in got) >= 1


STUBBORN = """
import http.server, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL stops this one
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_sigterm_during_an_action_records_it_interrupted_and_the_next_run_finishes_it(tmp_path: Path) -> None:
    import sys

    port = free_port()
    comp = f"""\
  stubborn:
    command:
      argv: {json.dumps([sys.executable, "-c", STUBBORN, str(port)])}
      stop_timeout: 60s
    probes:
      - type: http
        url: http://127.0.0.1:{port}/
        interval: 0.3s
        timeout: 0.3s
        failure_threshold: 2
"""
    cfg = write_config(tmp_path, comp)
    cfg.write_text(cfg.read_text().replace("shutdown_timeout: 5s", "shutdown_timeout: 1s"))
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(state, "stubborn"))
        pid = component_pid(state, "stubborn") or 0
        os.kill(
            pid, signal.SIGSTOP
        )  # a hang: healer restarts it; the stop waits on a process ignoring SIGTERM
        wait_for(lambda: events(state, "step.started"), what="restart under way")
        # The intent is durable a moment before the actuator runs; the stop's SIGCONT is the
        # sign it is running (SIGTERM is ignored), so the SIGTERM below lands mid-action.
        wait_for(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED, what="actuator called")
        t0 = time.monotonic()
        assert d.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 10, "shutdown is bounded by shutdown_timeout, not the action"
    interrupted = events(state, "step.interrupted")
    assert len(interrupted) == 1 and interrupted[0]["data"]["reason"] == "daemon stopping"
    assert events(state, "daemon.stopped")

    with running_daemon(cfg) as d2:
        resolved = wait_for(lambda: events(state, "incident.resolved"), what="finished after restart")
        assert resolved[0]["incident"] == interrupted[0]["incident"]
        keys = [e["data"]["idempotency_key"] for e in events(state, "step.started")]
        assert len(keys) == len(set(keys)) == 2, "the retry is a new attempt with its own key"
        assert http_ok(port)
        assert d2.stop() == 0


def test_log_follow_json_streams_an_incident_in_order(tmp_path: Path) -> None:
    import subprocess
    import sys

    port = free_port()
    cfg = write_config(tmp_path, agent_component("agent-l", port))
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(state, "agent-l"))
        follower = subprocess.Popen(
            [sys.executable, "-m", "healer", "log", "-f", "--json", "--state-dir", str(state)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            os.kill(component_pid(state, "agent-l") or 0, signal.SIGKILL)
            seen: list[dict[str, object]] = []
            assert follower.stdout is not None
            while not any(e["type"] == "incident.resolved" for e in seen):
                line = follower.stdout.readline()
                assert line, "follower ended early"
                seen.append(json.loads(line))
        finally:
            follower.terminate()
            follower.wait(10)
        positions = [int(str(e["position"])) for e in seen]
        assert positions == list(range(1, len(positions) + 1)), "in order, no gaps"
        status = json.loads(healer_cli("status", "--state-dir", str(state), "--json").stdout)
        assert status["components"]["agent-l"]["health"] == "healthy"
        assert d.stop() == 0


def test_a_spawn_the_dead_daemon_never_recorded_is_adopted_not_duplicated(tmp_path: Path) -> None:
    """The daemon can die between spawning a process and recording it: the next run must find it."""
    import subprocess
    import sys

    port = free_port()
    cfg = write_config(tmp_path, agent_component("agent-u", port))
    state = tmp_path / "state"
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(state, "agent-u"))
        recorded = component_pid(state, "agent-u") or 0
        d.proc.kill()
        d.proc.wait()
        # What a dying daemon leaves behind: the recorded process is gone, and a replacement it
        # spawned (same fleet markers in its environment) was never written to the log.
        os.kill(recorded, signal.SIGKILL)
        env = {
            **os.environ,
            "HEALER_SUPERVISED_COMPONENT": "agent-u",
            "HEALER_SUPERVISOR_INSTANCE": str(state),
            "HEALER_TEST_MARK": "unrecorded",
        }
        argv = [sys.executable, "-m", "healer.demo.fakeagent", "--name", "agent-u", "--port", str(port)]
        stray = subprocess.Popen(argv, env=env, start_new_session=True)
        wait_for(lambda: http_ok(port), what="unrecorded copy serving")
        with running_daemon(cfg) as d2:
            adopted = wait_for(
                lambda: events(state, "process.adopted"), what="adoption of the unrecorded copy"
            )
            assert adopted[0]["data"]["pid"] == stray.pid
            assert len(events(state, "process.started", "agent-u")) == 1, "no second copy was started"
            assert d2.stop() == 0
        assert stray.wait(10) is not None
