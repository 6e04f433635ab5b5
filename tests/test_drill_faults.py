"""Faults on real files and real processes, without a daemon: each inject is undone by revert."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from healer.config import HealerConfig
from healer.drill.faults import (
    CorruptCheckpointFault,
    FaultContext,
    HangFault,
    NetworkDelayFault,
    check_fault_class,
    fault_kinds,
)
from healer.drill.spec import FaultSpec
from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import FleetState


def _ctx(tmp: Path, state: FleetState | None = None) -> FaultContext:
    cfg = HealerConfig(state_dir=tmp / "state", policies_dir=tmp / "p", components={"agent": {}})
    work = tmp / "work"
    work.mkdir(mode=0o700)
    snapshot = state or FleetState()
    return FaultContext(cfg, lambda: snapshot, work)


def _running(pid: int) -> FleetState:
    created = psutil.Process(pid).create_time()
    return FleetState().apply_all(
        [
            RecordedEvent(
                1, T.PROCESS_STARTED, time.time(), "agent", None, {"pid": pid, "create_time": created}
            )
        ]
    )


def test_corrupt_checkpoint_restores_the_original(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    for name, created, body in (("old", 1.0, b"old state"), ("new", 2.0, b"the newest state, intact")):
        d = tmp_path / "state" / "checkpoints" / "agent" / name
        d.mkdir(parents=True)
        (d / "data").write_bytes(body)
        sha = hashlib.sha256(body).hexdigest()
        (d / "manifest.json").write_text(json.dumps({"name": name, "created_at": created, "sha256": sha}))
    data = tmp_path / "state" / "checkpoints" / "agent" / "new" / "data"
    spec = FaultSpec(kind="corrupt_checkpoint", target="agent", duration=1)
    fault = CorruptCheckpointFault(spec, CorruptCheckpointFault.Params(), ctx)
    fault.inject()
    assert data.read_bytes() != b"the newest state, intact"
    assert len(data.read_bytes()) == len(b"the newest state, intact")  # flipped, not truncated
    assert (tmp_path / "state" / "checkpoints" / "agent" / "old" / "data").read_bytes() == b"old state"
    assert "restored" in fault.revert()
    assert data.read_bytes() == b"the newest state, intact"
    assert list(ctx.workdir.iterdir()) == []


def test_hang_resumes_only_the_same_process(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ctx = _ctx(tmp_path, _running(child.pid))
        fault = HangFault(FaultSpec(kind="hang", target="agent"), HangFault.Params(), ctx)
        fault.inject()
        proc = psutil.Process(child.pid)
        deadline = time.monotonic() + 5
        while proc.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.status() == psutil.STATUS_STOPPED
        assert fault.revert() == f"SIGCONT to pid {child.pid}"
        assert proc.status() != psutil.STATUS_STOPPED
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert "gone" in fault.revert()  # never signals a pid that is no longer that process


def test_network_fault_on_the_hosts_namespace_is_skipped_with_the_reason(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ctx = _ctx(tmp_path, _running(child.pid))
        spec = FaultSpec(kind="network_delay", target="agent", duration=1)
        fault = NetworkDelayFault(spec, NetworkDelayFault.Params(delay_ms=100), ctx)
        reason = fault.unavailable()
        assert reason is not None
        assert any(
            s in reason for s in ("not installed", "CAP_NET_ADMIN", "shares the host's network namespace")
        ), reason
    finally:
        child.kill()
        child.wait()


def test_builtin_faults_pass_the_plugin_checks() -> None:
    kinds = fault_kinds()
    assert {"kill", "hang", "cpu_pressure", "memory_pressure", "dependency_outage", "broker_outage"} <= set(
        kinds
    )
    for name, cls in kinds.items():
        assert check_fault_class(cls, name) == [], name

    class Broken:
        kind = "other"

    assert len(check_fault_class(Broken, "broken")) >= 3
