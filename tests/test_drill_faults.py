"""Faults on real files and real processes, without a daemon: each inject is undone by revert."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from healer.config import HealerConfig
from healer.dr.store import CheckpointStore
from healer.drill.faults import (
    CorruptCheckpointFault,
    FaultContext,
    FaultError,
    HangFault,
    NetworkDelayFault,
    NetworkDropFault,
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


def _verify(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "healer", "checkpoint", "verify", "--state-dir", str(state), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_corrupt_checkpoint_damages_the_head_and_restores_it_exactly(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    state = tmp_path / "state"
    store = CheckpointStore.in_state_dir(state)
    store.save("agent", b"old state", label="old")
    head = store.save("agent", b"the newest state, intact", label="new")
    store.save("other", b"the newest state, intact")  # shares the blob (content-addressed)
    blob = store.blob_path(head.sha256)
    before = blob.stat()
    assert _verify(state).returncode == 0

    spec = FaultSpec(kind="corrupt_checkpoint", target="agent", duration=1)
    fault = CorruptCheckpointFault(spec, CorruptCheckpointFault.Params(), ctx)
    assert f"agent#{head.seq}" in fault.inject()
    damaged = blob.read_bytes()
    assert damaged != b"the newest state, intact" and len(damaged) == len(b"the newest state, intact")
    assert store.read(store.get("agent", 1)) == b"old state"  # only the latest one

    # The real CLI detects it (and marks it, and the other agent's checkpoint sharing the blob).
    found = _verify(state)
    assert found.returncode == 1, found.stdout + found.stderr
    bad = {(r["agent"], r["seq"]) for r in json.loads(found.stdout) if r["corrupt"]}
    assert bad == {("agent", head.seq), ("other", 1)}

    done = fault.revert()
    assert "restored" in done and "agent#2" in done and "other#1" in done, done
    assert blob.read_bytes() == b"the newest state, intact"
    after = blob.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    ok = _verify(state)
    assert ok.returncode == 0, ok.stdout
    assert all(r["corrupt"] is None for r in json.loads(ok.stdout))
    assert store.read(head) == b"the newest state, intact"
    assert list(ctx.workdir.iterdir()) == []
    assert fault.revert() == "nothing was corrupted"


def test_corrupt_checkpoint_by_label_truncates_and_leaves_a_replaced_blob_alone(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    store = CheckpointStore.in_state_dir(tmp_path / "state")
    first = store.save("agent", b"0123456789", label="first")
    store.save("agent", b"later")
    spec = FaultSpec(kind="corrupt_checkpoint", target="agent", duration=1)
    params = CorruptCheckpointFault.Params(checkpoint="label:first", mode="truncate")
    fault = CorruptCheckpointFault(spec, params, ctx)
    fault.inject()
    blob = store.blob_path(first.sha256)
    assert blob.read_bytes() == b"01234"
    blob.write_bytes(b"someone else's repair")
    assert "replaced meanwhile" in fault.revert()
    assert blob.read_bytes() == b"someone else's repair"


def test_corrupt_checkpoint_refuses_what_is_already_corrupt_or_missing(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    spec = FaultSpec(kind="corrupt_checkpoint", target="agent", duration=1)
    fault = CorruptCheckpointFault(spec, CorruptCheckpointFault.Params(), ctx)
    with pytest.raises(FaultError, match="no checkpoint"):
        fault.inject()
    store = CheckpointStore.in_state_dir(tmp_path / "state")
    cp = store.save("agent", b"state")
    store.blob_path(cp.sha256).write_bytes(b"rotten")
    with pytest.raises(FaultError, match="already corrupt"):
        fault.inject()
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


@pytest.mark.parametrize(
    ("cls", "params"),
    [(NetworkDelayFault, {"delay_ms": 100}), (NetworkDropFault, {"percent": 100})],
)
def test_network_fault_on_the_hosts_namespace_is_skipped_with_the_reason(
    tmp_path: Path, cls: Any, params: dict[str, Any]
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ctx = _ctx(tmp_path, _running(child.pid))
        fault = cls(FaultSpec(kind=cls.kind, target="agent", duration=1), cls.Params(**params), ctx)
        platform = cls.platform_unavailable()
        reason = fault.unavailable()
        if platform is not None:  # this machine cannot do it at all: that is the reason given
            assert reason == platform
        else:
            assert reason is not None and "shares the host's network namespace" in reason, reason
            with pytest.raises(FaultError, match="host's network namespace"):
                fault.inject()  # and inject refuses it too, should anyone call it regardless
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    ("percent", "interface"),
    [(100, None), (0.5, None), (33.3, "eth0")],
    ids=["all", "half-percent", "one-if"],
)
def test_network_drop_rules_load_into_nftables(tmp_path: Path, percent: float, interface: str | None) -> None:
    reason = NetworkDropFault.platform_unavailable()
    if reason is not None:
        pytest.skip(reason)
    params = NetworkDropFault.Params(percent=percent, interface=interface)
    fault = NetworkDropFault(
        FaultSpec(kind="network_drop", target="agent", duration=1), params, _ctx(tmp_path)
    )
    # Loaded, then listed back, in a namespace of its own that vanishes with the command.
    both = (
        "import subprocess, sys; "
        "subprocess.run(['nft', '-f', '-'], input=sys.stdin.read(), text=True, check=True); "
        f"subprocess.run(['nft', 'list', 'table', 'inet', '{fault.table}'], check=True)"
    )
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", both],
        input=fault.ruleset(),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    rules = [line.strip() for line in done.stdout.splitlines() if line.strip().endswith("drop")]
    assert len(rules) == 2, done.stdout
    if percent == 100:
        assert rules == ["drop", "drop"]  # every packet, no sampling
    else:
        assert all(f"numgen random mod 10000 < {round(percent * 100)}" in r for r in rules)
    assert all((f'"{interface}"' in r) == (interface is not None) for r in rules)


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
