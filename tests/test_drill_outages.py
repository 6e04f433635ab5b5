"""Drills with the faults that need more than a fleet of plain processes, end to end: a real daemon,
the real ``healer drill`` CLI, and the real thing each fault breaks — a real Mosquitto
(broker_outage), a dependency the daemon probes (dependency_outage), a component in a network
namespace of its own reached over a veth pair (network_drop), and the DR checkpoint store of a
real agent process with a rollback policy (corrupt_checkpoint, RPO grading).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from healer.dr.store import CheckpointStore
from healer.drill.faults import NetworkDropFault
from tests.broker import Broker
from tests.helpers import (
    PY,
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
from tests.ledger import Ledger
from tests.test_mqtt_e2e import mqtt_component, mqtt_section

ROOT = Path(__file__).resolve().parents[1]


def _drill(tmp: Path, cfg: Path, text: str, name: str = "drill.yaml") -> tuple[int, str, dict[str, Any]]:
    spec = tmp / name
    spec.write_text(textwrap.dedent(text))
    reports = tmp / f"reports-{name}"
    r = healer_cli("drill", str(spec), "-c", str(cfg), "--report-dir", str(reports), timeout=90)
    found = sorted(reports.glob("*.json"))
    assert len(found) == 1, r.stdout + r.stderr
    return r.returncode, r.stdout + r.stderr, json.loads(found[0].read_text())


def _after(state: Path, type_: str, position: int, component: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events(state, type_, component) if e["position"] > position]


def _one(state: Path, type_: str) -> dict[str, Any]:
    (ev,) = events(state, type_)
    return ev


def _silence(cfg: Path, component: str) -> None:
    # healer would otherwise restart the component: only the fault's revert may bring it back here.
    r = healer_cli("silence", component, "--for", "5m", "--reason", "drill test", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr


# -- dependency_outage ---------------------------------------------------------------------------------
def test_dependency_outage_is_seen_by_the_daemon_and_ends_with_the_revert(tmp_path: Path) -> None:
    db, app = free_port(), free_port()
    # app's /health fails as soon as its own check of db times out; a higher threshold lets db's
    # probe see the outage first, so app is judged db's symptom from the start (a dependent
    # detected first would be classified on its own, and escalated by this policy).
    app_comp = agent_component("app", app, "--depends-on", f"http://127.0.0.1:{db}/health", deps=["db"])
    comps = agent_component("db", db) + app_comp.replace("failure_threshold: 2", "failure_threshold: 5")
    cfg = write_config(tmp_path, comps)
    with running_daemon(cfg) as d:
        state = d.state_dir
        wait_for(lambda: is_healthy(state, "db") and is_healthy(state, "app"), 30, what="fleet healthy")
        _silence(cfg, "db")
        pid = component_pid(state, "db")
        rc, out, doc = _drill(
            tmp_path,
            cfg,
            """\
            version: 1
            name: db-outage
            timeout: 30s
            blast_radius:
              components: [db, app]
            faults:
              - kind: dependency_outage
                target: db
                duration: 2s
            """,
        )
        assert rc == 0, out
        injected = _one(state, "drill.started")["position"]  # the effect may precede the record of it
        reverted = _one(state, "drill.fault_reverted")["position"]
        # The outage is the daemon's observation, between injection and revert ...
        failed = _after(state, "component.failed", injected, "db")
        assert failed and failed[0]["position"] < reverted
        assert _after(state, "component.failed", injected, "app"), "the dependent saw it too"
        # ... and the revert (SIGCONT to the very same process) is what ended it.
        assert doc["faults"][0]["reverted"] == f"SIGCONT to pid {pid}"
        assert component_pid(state, "db") == pid
        # (Recovered once SIGCONT lands, which may be recorded just before the revert itself is.)
        assert _after(state, "component.recovered", failed[-1]["position"], "db")
        assert psutil.Process(pid).status() != psutil.STATUS_STOPPED
        assert doc["verdict"] == "passed"


# -- broker_outage -------------------------------------------------------------------------------------
def _listener(port: int) -> psutil.Process | None:
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def test_broker_outage_disconnects_the_daemon_and_the_revert_brings_the_broker_back(
    tmp_path: Path,
) -> None:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    broker.start()
    agent = None
    try:
        cfg = write_config(tmp_path, mqtt_component("agent-o", max_age="2s"), extra=mqtt_section(broker))
        with running_daemon(cfg) as d:
            state = d.state_dir
            wait_for(lambda: events(state, "mqtt.connected"), what="healer connected")
            ready = tmp_path / "agent.ready"
            agent = subprocess.Popen(
                [
                    *(PY, "-m", "tests.mqtt_agent", "--name", "agent-o", "--port", str(broker.port)),
                    *("--heartbeat-interval", "0.2", "--ready-file", str(ready)),
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for(lambda: is_healthy(state, "agent-o"), 30, what="agent-o healthy")
            rc, out, doc = _drill(
                tmp_path,
                cfg,
                """\
                version: 1
                name: broker-outage
                timeout: 30s
                blast_radius:
                  components: [agent-o]
                faults:
                  - kind: broker_outage
                    duration: 2s
                """,
            )
            assert rc == 0, out
            assert broker.proc is not None and broker.proc.poll() is not None, "the broker was stopped"
            injected = _one(state, "drill.started")["position"]  # the effect may precede the record of it
            reverted = _one(state, "drill.fault_reverted")["position"]
            down = _after(state, "mqtt.disconnected", injected)
            assert down and down[0]["position"] < reverted, "the daemon's link saw the outage"
            back = _after(state, "mqtt.connected", down[0]["position"])
            assert back and back[0]["data"]["session"] == 2
            # Started again with the same command line (its config: the same port).
            new = _listener(broker.port)
            assert new is not None and new.pid != broker.proc.pid
            assert new.cmdline() == [broker.exe, "-c", str(broker.conf)]
            assert doc["faults"][0]["reverted"] == f"broker started again, pid {new.pid}"
            wait_for(lambda: is_healthy(state, "agent-o"), 10, what="agent-o healthy again")
    finally:
        if agent is not None:
            agent.kill()
            agent.wait(10)
        broker.kill()
        restarted = _listener(broker.port)
        if restarted is not None and str(broker.conf) in " ".join(restarted.cmdline()):
            restarted.kill()


# -- network_drop --------------------------------------------------------------------------------------
class Netns:
    """A network namespace joined to the host by a veth pair: 10.250.X.1 (host) <-> 10.250.X.2."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"healer-test-{tag}"
        self.host_if, self.ns_if = f"hd{tag}h", f"hd{tag}n"
        net = int(tag[:2], 16)
        self.host_ip, self.ip = f"10.250.{net}.1", f"10.250.{net}.2"

    def run(self, *argv: str, ns: bool = False) -> str:
        ip = shutil.which("ip") or "ip"
        cmd = [ip, "netns", "exec", self.name, *argv] if ns else list(argv)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout

    def up(self) -> None:
        ip = shutil.which("ip") or "ip"
        self.run(ip, "netns", "add", self.name)
        self.run(ip, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self.run(ip, "link", "set", self.ns_if, "netns", self.name)
        self.run(ip, "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        self.run(ip, "link", "set", self.host_if, "up")
        self.run(ip, "addr", "add", f"{self.ip}/30", "dev", self.ns_if, ns=True)
        self.run(ip, "link", "set", self.ns_if, "up", ns=True)
        self.run(ip, "link", "set", "lo", "up", ns=True)

    def down(self) -> None:
        ip = shutil.which("ip") or "ip"
        subprocess.run([ip, "link", "del", self.host_if], capture_output=True, timeout=10, check=False)
        subprocess.run([ip, "netns", "del", self.name], capture_output=True, timeout=10, check=False)


@pytest.fixture
def netns() -> Iterator[Netns]:
    reason = NetworkDropFault.platform_unavailable()
    if reason is not None:
        pytest.skip(f"network_drop cannot run on this machine: {reason}")
    ns = Netns()
    try:
        ns.up()
    except (OSError, subprocess.CalledProcessError) as exc:
        ns.down()
        pytest.skip(f"cannot create a network namespace with a veth pair here: {exc}")
    try:
        yield ns
    finally:
        ns.down()


def test_network_drop_cuts_a_namespaced_component_off_and_the_revert_removes_only_its_rules(
    tmp_path: Path, netns: Netns
) -> None:
    port = free_port()
    (tmp_path / "www").mkdir()
    ip = shutil.which("ip") or "ip"
    argv = [ip, "netns", "exec", netns.name, PY, "-m", "http.server", "--bind", netns.ip, str(port)]
    argv += ["--directory", str(tmp_path / "www")]
    comp = (
        "  edge:\n"
        "    command:\n"
        f"      argv: {json.dumps(argv)}\n"
        "      stop_timeout: 2s\n"
        "    probes:\n"
        "      - type: http\n"
        f"        url: http://{netns.ip}:{port}/\n"
        "        interval: 0.3s\n"
        "        timeout: 0.3s\n"
        "        failure_threshold: 2\n"
    )
    # The namespace's own rules, which the drill must leave exactly as they are.
    nft = shutil.which("nft") or "nft"
    netns.run(nft, "add", "table", "inet", "keepme", ns=True)
    netns.run(nft, "add", "chain", "inet", "keepme", "c", "{ type filter hook input priority 0 ; }", ns=True)
    rules_before = netns.run(nft, "list", "ruleset", ns=True)
    cfg = write_config(tmp_path, comp)
    with running_daemon(cfg) as d:
        state = d.state_dir
        wait_for(lambda: is_healthy(state, "edge"), 30, what="edge healthy over the veth pair")
        _silence(cfg, "edge")
        pid = component_pid(state, "edge")
        assert pid is not None
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        rc, out, doc = _drill(
            tmp_path,
            cfg,
            """\
            version: 1
            name: edge-drop
            timeout: 30s
            blast_radius:
              components: [edge]
            faults:
              - kind: network_drop
                target: edge
                percent: 100
                duration: 2.5s
            """,
        )
        assert rc == 0, out
        fault = doc["faults"][0]
        assert fault["status"] == "settled" and "healer_drill_" in fault["injected"], fault
        injected = _one(state, "drill.started")["position"]  # the effect may precede the record of it
        reverted = _one(state, "drill.fault_reverted")["position"]
        failed = _after(state, "component.failed", injected, "edge")
        assert failed and failed[0]["position"] < reverted, "the daemon's probe lost the component"
        assert _after(state, "component.recovered", failed[-1]["position"], "edge")
        assert component_pid(state, "edge") == pid  # the network, not the process, was cut
    assert netns.run(nft, "list", "ruleset", ns=True) == rules_before


def test_network_faults_this_machine_cannot_do_are_skipped_up_front_and_in_the_dry_run(
    tmp_path: Path,
) -> None:
    from healer.drill.faults import NetworkDelayFault

    reason = NetworkDelayFault.platform_unavailable()
    if reason is None:
        pytest.skip("this kernel has netem: network_delay is not skipped here")
    port = free_port()
    cfg = write_config(tmp_path, agent_component("svc", port))
    spec = tmp_path / "delay.yaml"
    spec.write_text(
        textwrap.dedent(
            """\
            version: 1
            name: svc-delay
            timeout: 20s
            blast_radius:
              components: [svc]
            faults:
              - kind: network_delay
                target: svc
                delay_ms: 200
                duration: 1s
            """
        )
    )
    dry = healer_cli("drill", str(spec), "-c", str(cfg), "--dry-run")
    assert dry.returncode == 0 and f"would be SKIPPED on this machine: {reason}" in dry.stdout, dry.stdout
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(d.state_dir, "svc"), 30, what="svc healthy")
        r = healer_cli("drill", str(spec), "-c", str(cfg), "--report-dir", str(tmp_path / "r"), timeout=60)
        assert f"will be SKIPPED: {reason}" in r.stdout, r.stdout
        assert r.returncode == 1 and "every fault was skipped on this machine" in r.stdout, r.stdout
        assert not events(d.state_dir, "drill.fault_injected")
        doc = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
        assert doc["faults"][0]["status"] == "skipped" and doc["faults"][0]["skipped_reason"] == reason
        crit = next(c for c in doc["criteria"] if c["criterion"].startswith("fault 0"))
        assert crit["passed"] is None  # n/a, not passed


# -- corrupt_checkpoint and RPO ------------------------------------------------------------------------
ROLLBACK = """\
version: 1
policies:
  - name: dr-rollback
    match:
      components: ["booker"]
      failures: [crash, hang]
    steps:
      - strategy: rollback
        checkpoint: latest
        verify: {timeout: 10s, stable_for: 0.3s}
      - strategy: escalate
"""


def test_corrupt_checkpoint_and_kill_drill_grades_rpo_and_leaves_the_checkpoint_verifying(
    tmp_path: Path,
) -> None:
    booking = Ledger(tmp_path, free_port())
    booking.start()
    try:
        argv = [
            sys.executable, str(ROOT / "tests" / "dr_agent.py"), "--name", "booker",
            "--state-dir", str(tmp_path / "state"), "--booking", booking.base,
            "--resumed-file", str(tmp_path / "resumed.json"), "--go", str(tmp_path / "never"),
        ]  # fmt: skip
        comp = (
            f"  booker:\n    command:\n      argv: {json.dumps(argv)}\n      stop_timeout: 2s\n"
            "    rpo: 120s\n    rto: 30s\n    probes:\n      - type: process\n"
        )
        cfg = write_config(tmp_path, comp, ROLLBACK)
        with running_daemon(cfg) as d:
            state = d.state_dir
            store = CheckpointStore.in_state_dir(state)
            wait_for(lambda: len(store.list("booker")) == 5, 30, what="five checkpoints")
            wait_for(lambda: is_healthy(state, "booker"), 30, what="booker healthy")
            cp5 = store.get("booker", 5)
            blob = store.blob_path(cp5.sha256).read_bytes()
            rc, out, doc = _drill(
                tmp_path,
                cfg,
                """\
                version: 1
                name: rollback-past-a-corrupt-checkpoint
                timeout: 40s
                blast_radius:
                  components: [booker]
                  max_concurrent: 2
                faults:
                  - kind: corrupt_checkpoint
                    target: booker
                    duration: 6s
                  - kind: kill
                    target: booker
                    after: 0.3s
                """,
            )
            assert rc == 0, out
            # The daemon's restore found the damaged checkpoint 5 and rolled back to 4 instead.
            assert [e["data"]["seq"] for e in events(state, "checkpoint.corrupted")] == [5]
            assert json.loads((tmp_path / "resumed.json").read_text())["seq"] == 4
            # RPO graded from the daemon's measurement: the age of checkpoint 4 at detection.
            (measured,) = events(state, "incident.objectives_measured", "booker")
            kill = doc["faults"][1]
            assert kill["incident"] == measured["incident"]
            assert kill["rpo_s"] == measured["data"]["rpo_achieved"] > 0
            assert kill["daemon_rto_s"] == measured["data"]["rto_achieved"] <= kill["recovery_s"]
            rpo = next(c for c in doc["criteria"] if c["criterion"].startswith("booker RPO"))
            assert rpo["passed"] is True and "within the component's rpo of 120s" in rpo["detail"], rpo
            # The revert put checkpoint 5 back exactly: it verifies again, with the real CLI.
            assert "booker#5 restored" in doc["faults"][0]["reverted"]
            assert store.blob_path(cp5.sha256).read_bytes() == blob
            verify = healer_cli("checkpoint", "verify", "booker", "-c", str(cfg))
            assert verify.returncode == 0, verify.stdout + verify.stderr

            # The same recovery against a tighter RPO in the drill file fails, and says why.
            rc, out, doc = _drill(
                tmp_path,
                cfg,
                """\
                version: 1
                name: tight-rpo
                timeout: 40s
                blast_radius:
                  components: [booker]
                faults:
                  - kind: kill
                    target: booker
                criteria:
                  rpo: {booker: 0.01s}
                """,
                name="tight.yaml",
            )
            assert rc == 1, out
            (reason,) = doc["reasons"]
            assert reason.startswith("booker RPO") and "exceeds the drill's criteria.rpo of 0.01s" in reason
    finally:
        booking.stop()


def test_sigint_puts_a_corrupted_checkpoint_back_exactly(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, agent_component("svc", free_port()))
    with running_daemon(cfg) as d:
        state = d.state_dir
        wait_for(lambda: is_healthy(state, "svc"), 30, what="svc healthy")
        store = CheckpointStore.in_state_dir(state)
        store.save("svc", b"older memory")
        head = store.save("svc", b'{"memory": "the latest, good"}')
        blob = store.blob_path(head.sha256)
        before = (blob.read_bytes(), blob.stat().st_mode, blob.stat().st_mtime_ns)
        spec = tmp_path / "corrupt.yaml"
        spec.write_text(
            textwrap.dedent(
                """\
                version: 1
                name: corrupt-then-interrupt
                timeout: 60s
                blast_radius:
                  components: [svc]
                faults:
                  - kind: corrupt_checkpoint
                    target: svc
                    duration: 60s
                """
            )
        )
        proc = subprocess.Popen(
            [PY, "-m", "healer", "drill", str(spec), "-c", str(cfg), "--report-dir", str(tmp_path / "r")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(lambda: events(state, "drill.fault_injected"), 30, what="the checkpoint corrupted")
            assert blob.read_bytes() != before[0]
            found = healer_cli("checkpoint", "verify", "svc", "-c", str(cfg))
            assert found.returncode == 1 and "CORRUPT" in found.stdout, found.stdout
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, out
        assert (blob.read_bytes(), blob.stat().st_mode, blob.stat().st_mtime_ns) == before
        assert f"svc#{head.seq} restored" in out
        again = healer_cli("checkpoint", "verify", "svc", "-c", str(cfg))
        assert again.returncode == 0, again.stdout
