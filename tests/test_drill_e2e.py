"""DR drills end to end: a real daemon, the real demo fleet, real signals, the real CLI.

This is how CI runs a drill: ``healer drill config/drills/kill-planner.yaml -c CONFIG`` against
a daemon supervising the fleet of ``healer demo`` (test_starter_drill_passes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from healer.demo.runner import DEMO_POLICY, demo_config
from tests.helpers import PY, events, healer_cli, running_daemon, wait_for

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "config" / "drills" / "kill-planner.yaml"


def _fleet(tmp: Path) -> Path:
    (tmp / "policies").mkdir(parents=True, exist_ok=True)
    (tmp / "policies" / "demo.yaml").write_text(DEMO_POLICY)
    cfg = tmp / "healer.yaml"
    # running_daemon's helpers read the state from tmp/state: the demo config keeps its state there.
    cfg.write_text(
        demo_config(tmp / "state").replace(
            f"policies_dir: {tmp / 'state' / 'policies'}", f"policies_dir: {tmp / 'policies'}"
        )
    )
    return cfg


def _healthy(state: Path) -> bool:
    last: dict[str, str] = {}
    for e in events(state):
        if e["type"] in ("component.recovered", "component.failed", "process.started", "process.exited"):
            last[e["component"]] = e["type"]
    return len(last) == 4 and all(v == "component.recovered" for v in last.values())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("drillfleet")
    cfg = _fleet(tmp)
    with running_daemon(cfg) as d:
        wait_for(lambda: _healthy(d.state_dir), 30, what="the demo fleet healthy")
        yield cfg


@pytest.fixture
def own_fleet(tmp_path: Path) -> Iterator[Path]:
    cfg = _fleet(tmp_path)
    with running_daemon(cfg) as d:
        wait_for(lambda: _healthy(d.state_dir), 30, what="the demo fleet healthy")
        yield cfg


def drill(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return healer_cli("drill", *args, timeout=timeout)


def _report(report_dir: Path) -> dict[str, Any]:
    found = sorted(report_dir.glob("*.json"))
    assert len(found) == 1, found
    assert found[0].with_suffix(".md").exists()
    doc: dict[str, Any] = json.loads(found[0].read_text())
    return doc


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return path


def test_starter_drill_passes(fleet: Path, tmp_path: Path) -> None:
    state = fleet.parent / "state"
    before = events(state)[-1]["position"]
    reports = tmp_path / "reports"
    r = drill(str(STARTER), "-c", str(fleet), "--report-dir", str(reports))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = _report(reports)
    assert doc["verdict"] == "passed" and doc["reasons"] == []
    (fault,) = doc["faults"]
    assert fault["kind"] == "kill" and fault["incident"] is not None
    assert 0 <= fault["detection_s"] <= fault["recovery_s"] <= fault["rto_s"] == 10.0
    assert fault["actions"] == ["process.restart"]
    # The drill is in the log, and the incident it caused is a drill incident, not a real one.
    mine = [e for e in events(state) if e["position"] > before]
    kinds = [e["type"] for e in mine if e["type"].startswith("drill.")]
    assert kinds == ["drill.started", "drill.fault_injected", "drill.fault_reverted", "drill.finished"]
    finished = next(e for e in mine if e["type"] == "drill.finished")
    assert finished["data"]["verdict"] == "passed"
    incidents = json.loads(healer_cli("incidents", "-c", str(fleet), "--json").stdout)
    inc = next(i for i in incidents if i["id"] == fault["incident"])
    assert inc["drill"] == doc["drill"] and inc["status"] == "resolved"


def test_vector_db_outage_starter_drill_passes_with_the_agents_as_symptoms(
    fleet: Path, tmp_path: Path
) -> None:
    """The demo fleet as users run it: the agents that notice the hung vector-db (often before
    its own probe does) are held for its verdict, then become its symptoms; only the vector-db
    is acted on. How many notice is a race with the restart, so this run may see from none to
    all three; tests/test_dependency_hold_e2e.py pins the timing so that every dependent fails."""
    state = fleet.parent / "state"
    before = events(state)[-1]["position"]
    reports = tmp_path / "reports"
    r = drill(
        str(ROOT / "config" / "drills" / "vector-db-outage.yaml"),
        "-c",
        str(fleet),
        "--report-dir",
        str(reports),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = _report(reports)
    assert doc["verdict"] == "passed" and doc["reasons"] == []
    mine = [e for e in events(state) if e["position"] > before]
    detected = [e for e in mine if e["type"] == "incident.detected"]
    assert [e["component"] for e in detected] == ["vector-db"], "one incident, the dependency's"
    iid = detected[0]["incident"]
    timeline = "\n".join(f"{e['type']} {e.get('component')} {e['data']}"[:200] for e in mine)
    attached = {e["component"] for e in mine if e["type"] == "symptom.suppressed" and e["incident"] == iid}
    # Which agents fail at all is a race with the restart (healer may have the vector-db back
    # before an agent reaches its failure threshold): every one that did is its symptom.
    failed = {e["component"] for e in mine if e["type"] == "component.failed"} - {"vector-db"}
    assert attached == failed, timeline
    acted = {e["component"] for e in mine if e["type"] == "step.started"}
    assert acted <= {"vector-db"}, f"only the root is acted on: {acted}\n{timeline}"


def test_tight_rto_fails_and_says_why(fleet: Path, tmp_path: Path) -> None:
    spec = _write(
        tmp_path,
        "tight.yaml",
        """\
        version: 1
        name: tight-rto
        blast_radius:
          components: [writer]
        faults:
          - kind: kill
            target: writer
        criteria:
          rto: {writer: 0.05s}
        """,
    )
    reports = tmp_path / "reports"
    r = drill(str(spec), "-c", str(fleet), "--report-dir", str(reports))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stdout and "exceeds the RTO of 0.05s" in r.stdout
    doc = _report(reports)
    assert doc["verdict"] == "failed"
    assert len(doc["reasons"]) == 1 and "exceeds the RTO of 0.05s" in doc["reasons"][0]
    assert doc["faults"][0]["recovery_s"] > 0.05


def _state(status: str) -> str:
    # What a fault could change: stopped (SIGSTOP) or dead. Running vs sleeping is the scheduler's.
    return status if status in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD) else "alive"


def _table(cfg: Path) -> tuple[set[tuple[int, float, str]], dict[str, tuple[int, int]], int]:
    procs = set()
    for p in psutil.process_iter(["pid", "create_time", "status", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(cfg) in cmd:  # the daemon, and every process it supervises
            for q in [p, *p.children(recursive=True)]:
                procs.add((q.pid, q.create_time(), _state(q.status())))
        elif "healer.drill.hog" in cmd:
            procs.add((p.info["pid"], p.info["create_time"], _state(p.info["status"])))
    files = {}
    for path in sorted(cfg.parent.rglob("*")):
        # Not compared: the fleet's own logs and the daemon's output (they write on their own), and
        # SQLite's -shm index, which every reader updates (this test's own read of the log too).
        skip = path.parent.name == "logs" or path.name.startswith("daemon-") or path.name.endswith("-shm")
        if path.is_file() and not skip:
            st = path.stat()
            files[str(path)] = (st.st_size, st.st_mtime_ns)
    return procs, files, events(cfg.parent / "state")[-1]["position"]


def test_dry_run_changes_nothing(fleet: Path, tmp_path: Path) -> None:
    before = _table(fleet)
    assert len(before[0]) >= 5  # the daemon and its four components
    cwd_before = set(os.listdir(tmp_path))
    for starter in sorted((ROOT / "config" / "drills").glob("*.yaml")):
        r = subprocess.run(
            [PY, "-m", "healer", "drill", str(starter), "-c", str(fleet), "--dry-run"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        assert "dry run: nothing is touched" in r.stdout and "fault 0" in r.stdout
    assert _table(fleet) == before
    assert set(os.listdir(tmp_path)) == cwd_before  # no report either


def _silence(cfg: Path, component: str) -> None:
    r = healer_cli(
        "silence", component, "--for", "5m", "--reason", "drill test: keep it frozen", "-c", str(cfg)
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _pid(state: Path, component: str) -> int:
    started = [e for e in events(state, "process.", component) if e["type"] == "process.started"]
    return int(started[-1]["data"]["pid"])


def _start_drill(spec: Path, cfg: Path, reports: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "healer", "drill", str(spec), "-c", str(cfg), "--report-dir", str(reports)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_failure_outside_blast_radius_aborts_and_reverts(own_fleet: Path, tmp_path: Path) -> None:
    state = own_fleet.parent / "state"
    _silence(own_fleet, "planner")  # healer leaves the hung planner alone: only the drill can resume it
    spec = _write(
        tmp_path,
        "abort.yaml",
        """\
        version: 1
        name: abort-me
        timeout: 60s
        blast_radius:
          components: [planner]
        faults:
          - kind: hang
            target: planner
        """,
    )
    planner = psutil.Process(_pid(state, "planner"))
    proc = _start_drill(spec, own_fleet, tmp_path / "reports")
    try:
        wait_for(lambda: events(state, "drill.fault_injected"), 30, what="the fault injected")
        assert planner.status() == psutil.STATUS_STOPPED
        os.kill(_pid(state, "writer"), signal.SIGKILL)  # outside the radius
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out
    assert "ABORT: writer, outside the blast radius" in out
    assert planner.status() != psutil.STATUS_STOPPED  # resumed, the same process
    doc = _report(tmp_path / "reports")
    assert doc["verdict"] == "aborted" and "writer" in doc["reasons"][0]
    assert doc["faults"][0]["reverted"] == f"SIGCONT to pid {planner.pid}"
    finished = events(state, "drill.finished")
    assert [e["data"]["verdict"] for e in finished] == ["aborted"]
    assert len(events(state, "drill.fault_reverted")) == 1


def test_sigint_reverts_every_fault(own_fleet: Path, tmp_path: Path) -> None:
    state = own_fleet.parent / "state"
    _silence(own_fleet, "planner")
    spec = _write(
        tmp_path,
        "interrupt.yaml",
        """\
        version: 1
        name: interrupt-me
        timeout: 60s
        blast_radius:
          components: [planner]
          max_concurrent: 2
        faults:
          - kind: hang
            target: planner
          - kind: cpu_pressure
            target: planner
            duration: 60s
        """,
    )
    planner = psutil.Process(_pid(state, "planner"))
    proc = _start_drill(spec, own_fleet, tmp_path / "reports")
    try:
        wait_for(lambda: len(events(state, "drill.fault_injected")) == 2, 30, what="both faults injected")
        hogs = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "healer.drill.hog" in " ".join(p.info["cmdline"] or [])
        ]
        assert hogs and planner.status() == psutil.STATUS_STOPPED
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert planner.status() != psutil.STATUS_STOPPED  # the SIGSTOPped process resumed
    _gone, alive = psutil.wait_procs(hogs, timeout=5)
    assert not alive
    reverted = events(state, "drill.fault_reverted")
    assert sorted(e["data"]["fault"]["kind"] for e in reverted) == ["cpu_pressure", "hang"]
    assert events(state, "drill.finished")[-1]["data"]["verdict"] == "aborted"
    assert "interrupted by SIGINT" in _report(tmp_path / "reports")["reasons"][0]


def test_daemon_refuses_a_fault_outside_the_radius(fleet: Path) -> None:
    from healer.control import request, socket_path

    sock = socket_path(fleet.parent / "state")
    started = request(sock, {"op": "drill.start", "name": "refusal", "radius": ["planner"], "duration": 5})
    assert started["ok"], started
    refused = request(
        sock,
        {
            "op": "drill.fault",
            "drill": started["drill"],
            "phase": "injected",
            "fault": {"index": 0, "kind": "kill", "target": "writer", "detail": ""},
        },
    )
    assert not refused["ok"] and "outside drill" in refused["error"]
    bad = request(sock, {"op": "drill.finish", "drill": started["drill"], "verdict": "great"})
    assert not bad["ok"] and "verdict" in bad["error"]
    done = request(
        sock, {"op": "drill.finish", "drill": started["drill"], "verdict": "aborted", "reasons": ["test"]}
    )
    assert done["ok"], done
