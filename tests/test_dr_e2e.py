"""Disaster recovery end to end: real agent processes (tests/dr_agent.py, using healer.agent.state),
a real daemon, and a real HTTP booking service (tests/ledger.py) whose own ledger is the judge.

The agent "detects corruption" by exiting 3 (a crash): the rollback policy matches it. (With the
Analyze merge, an ``agent.reported`` ``state_corruption`` opens the same incident class.)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healer.agent.state import AgentState
from healer.dr.store import CheckpointStore
from tests.helpers import events, free_port, running_daemon, wait_for, write_config
from tests.ledger import Ledger

AGENT = str(Path(__file__).resolve().parent / "dr_agent.py")

ROLLBACK = """\
version: 1
policies:
  - name: dr-rollback
    match:
      components: ["booker"]
      failures: [crash, hang]
    steps:
      - strategy: rollback
        checkpoint: {target}
        verify: {{timeout: 10s, stable_for: 0.3s}}
      - strategy: escalate
"""


@pytest.fixture
def booking(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path, free_port())
    led.start()
    try:
        yield led
    finally:
        led.stop()


def component(name: str, argv: list[str], extra: str = "") -> str:
    return (
        f"  {name}:\n"
        f"    command:\n"
        f"      argv: {json.dumps(argv)}\n"
        f"      stop_timeout: 2s\n"
        f"{extra}"
        f"    probes:\n"
        f"      - type: process\n"
    )


def booker(tmp: Path, booking: Ledger, *extra: str) -> str:
    argv = [
        sys.executable, AGENT, "--name", "booker", "--state-dir", str(tmp / "state"),
        "--booking", booking.base, "--resumed-file", str(tmp / "resumed.json"), *extra,
    ]  # fmt: skip
    return component("booker", argv, "    rpo: 120s\n    rto: 0.001s\n")


def resolved(state: Path) -> dict[str, Any] | None:
    evs = events(state, "incident.objectives_measured", "booker")
    return evs[-1] if evs else None


def undos(booking: Ledger) -> list[str]:
    return [name for op, name in booking.effects("undo")]


def test_rollback_restores_checkpoint_3_and_cancels_bookings_once_in_reverse(
    tmp_path: Path, booking: Ledger
) -> None:
    cfg = write_config(tmp_path, booker(tmp_path, booking), ROLLBACK.format(target="label:cp3"))
    with running_daemon(cfg) as d:
        measured = wait_for(lambda: resolved(d.state_dir), timeout=40, what="the rollback to resolve")
        resumed = json.loads((tmp_path / "resumed.json").read_text())
        assert resumed["seq"] == 3 and resumed["state"] == {"step": 3}
        # The booking service is the judge: C, B, A cancelled, once each; the quote was read-only.
        assert undos(booking) == ["order-C", "order-B", "order-A"]
        assert [n for op, n in booking.effects("apply")] == ["order-A", "order-B", "order-C"]
        comp = events(d.state_dir, "effect.compensated")
        assert [e["data"]["effect"] for e in comp] == ["book-C", "book-B", "book-A"]
        saga = [(e["data"]["actuator"], e["data"]["action"]) for e in events(d.state_dir, "step.succeeded")]
        assert saga == [("process", "stop"), ("dr", "restore"), ("dr", "compensate"), ("process", "start")]
        restore = next(e for e in events(d.state_dir, "step.succeeded") if e["data"]["action"] == "restore")
        assert restore["data"]["result"]["seq"] == 3
        done = next(e for e in events(d.state_dir, "step.succeeded") if e["data"]["action"] == "compensate")
        assert done["data"]["result"]["skipped_read_only"] == ["quote-1"]

        # RPO/RTO on the incident, consistent with the event timestamps and the checkpoint.
        data = measured["data"]
        detected = events(d.state_dir, "incident.detected", "booker")[0]
        resolved_ev = events(d.state_dir, "incident.resolved", "booker")[0]
        cp3 = CheckpointStore.in_state_dir(d.state_dir).get("booker", 3)
        assert data["rto_achieved"] == pytest.approx(resolved_ev["ts"] - detected["ts"], abs=1e-3)
        assert data["rpo_achieved"] == pytest.approx(detected["ts"] - cp3.created_at, abs=1e-3)
        assert 0 < data["rpo_achieved"] < 120 and data["rpo_missed"] is False
        assert data["rto_missed"] is True  # the 1 ms target cannot be met: the miss is flagged
    out = json.loads(
        __import__("subprocess").run(
            [sys.executable, "-m", "healer", "incidents", "--json", "--config", str(cfg)],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert out[0]["objectives"]["rto_missed"] is True
    assert out[0]["effects_undone"] == ["book-C", "book-B", "book-A"]


def test_kill_9_mid_compensation_cancels_each_booking_exactly_once(tmp_path: Path, booking: Ledger) -> None:
    cfg = write_config(tmp_path, booker(tmp_path, booking), ROLLBACK.format(target="label:cp3"))
    # SIGKILL after the second cancellation reached the service, before healer journaled it.
    with running_daemon(cfg, {"HEALER_EXECUTE__FAULT_EXIT_AT": "after-undo-effect:dr#1"}) as d:
        d.proc.wait(40)
        assert d.proc.returncode == -9
    assert undos(booking) == ["order-C", "order-B"]
    with running_daemon(cfg) as d2:
        wait_for(lambda: resolved(d2.state_dir), timeout=40, what="the resumed rollback to resolve")
        assert undos(booking) == ["order-C", "order-B", "order-A"]  # each exactly once
        # B's cancellation was re-sent once with the same key (in flight at the crash); C's was not.
        sent = [e["key"] for e in booking.entries() if e["op"] == "request" and e["via"] == "http-undo"]
        assert sent == [
            "undo/booker/book-C",
            "undo/booker/book-B",
            "undo/booker/book-B",
            "undo/booker/book-A",
        ]
        assert json.loads((tmp_path / "resumed.json").read_text())["seq"] == 3


def test_corrupt_checkpoint_is_detected_and_the_previous_good_one_used(
    tmp_path: Path, booking: Ledger
) -> None:
    go = tmp_path / "go"
    cfg = write_config(
        tmp_path,
        booker(tmp_path, booking, "--go", str(go)),
        ROLLBACK.format(target="latest"),
    )
    with running_daemon(cfg) as d:
        store = CheckpointStore.in_state_dir(d.state_dir)
        wait_for(lambda: len(store.list("booker")) == 5, what="five checkpoints")
        blob = store.blob_path(store.get("booker", 5).sha256)
        raw = bytearray(blob.read_bytes())
        raw[0] ^= 0x01  # flip one bit of checkpoint 5
        blob.write_bytes(bytes(raw))
        go.touch()
        wait_for(lambda: resolved(d.state_dir), timeout=40, what="the rollback to resolve")
        assert json.loads((tmp_path / "resumed.json").read_text())["seq"] == 4
        bad = events(d.state_dir, "checkpoint.corrupted")
        assert [e["data"]["seq"] for e in bad] == [5]
        obs = [e for e in events(d.state_dir, "agent.reported") if e["data"]["kind"] == "state_corruption"]
        assert obs and obs[0]["component"] == "booker" and obs[0]["data"]["value"] == 5
        assert store.corrupt_reason(store.get("booker", 5)) is not None
        assert undos(booking) == []  # the bookings came after 3, not after 4: nothing to undo


def test_pivot_stops_the_rollback_from_going_past_it(tmp_path: Path, booking: Ledger) -> None:
    cfg = write_config(
        tmp_path,
        booker(tmp_path, booking, "--pivot-after", "4", "--book-after5"),
        ROLLBACK.format(target="label:cp2"),
    )
    with running_daemon(cfg) as d:
        wait_for(lambda: resolved(d.state_dir), timeout=40, what="the rollback to resolve")
        # Asked for checkpoint 2; the payment captured after 4 cannot be undone: 5 is as far back as it goes.
        assert json.loads((tmp_path / "resumed.json").read_text())["seq"] == 5
        restore = next(e for e in events(d.state_dir, "step.succeeded") if e["data"]["action"] == "restore")
        assert restore["data"]["result"]["pivot_floor"] == 4
        assert undos(booking) == ["order-D"]  # A, B, C and the payment stay


def test_failover_fences_a_partitioned_primary(tmp_path: Path) -> None:
    acts = tmp_path / "acts.log"
    state = tmp_path / "state"
    # The primary runs outside healer's supervision ("partitioned": healer cannot stop it).
    import subprocess

    prim = AgentState("primary", state)
    prim.save(b'{"step": 7}', label="p7")
    fence = state / "fencing"
    fence.mkdir(parents=True, exist_ok=True, mode=0o700)
    (fence / "booking.json").write_text(json.dumps({"token": 1, "holder": "primary"}))
    primary = subprocess.Popen(
        [sys.executable, AGENT, "--name", "primary", "--state-dir", str(state), "--role", "booking",
         "--act-every", "0.1", "--acts-file", str(acts)]
    )  # fmt: skip
    standby_argv = [
        sys.executable, AGENT, "--name", "standby", "--state-dir", str(state), "--role", "booking",
        "--act-every", "0.1", "--acts-file", str(acts),
    ]  # fmt: skip
    trigger = tmp_path / "fail"
    policy = """\
version: 1
policies:
  - name: failover
    match:
      components: ["primary"]
      failures: [unhealthy]
    steps:
      - strategy: failover
        standby: standby
        fence: false
        promote: {actuator: dr, action: promote, params: {role: booking}}
        verify: {timeout: 10s, stable_for: 0.3s}
      - strategy: escalate
"""
    comps = (
        "  primary:\n"
        "    probes:\n"
        "      - type: exec\n"
        f'        argv: ["test", "!", "-e", "{trigger}"]\n'
        "        interval: 0.2s\n"
        "        failure_threshold: 1\n"
        + component("standby", standby_argv).replace("  standby:\n", "  standby:\n", 1)
    )
    cfg = write_config(tmp_path, comps, policy)
    try:
        with running_daemon(cfg) as d:
            wait_for(lambda: acts.exists() and "acted primary" in acts.read_text(), what="the primary acting")
            trigger.touch()  # the primary looks dead to healer, but it is still running
            wait_for(lambda: events(d.state_dir, "failover.fenced"), timeout=30, what="the fence")
            wait_for(lambda: "acted standby" in acts.read_text(), timeout=20, what="the standby acting")
            wait_for(lambda: "fenced primary" in acts.read_text(), what="the primary refusing")
            assert primary.poll() is None, "the partitioned primary is still alive"
            time.sleep(0.5)
            lines = acts.read_text().splitlines()
            # Never both active: after the standby's first act, the primary never acts again.
            first_standby = next(i for i, ln in enumerate(lines) if ln.startswith("acted standby"))
            assert not [ln for ln in lines[first_standby:] if ln.startswith("acted primary")]
            store = CheckpointStore.in_state_dir(d.state_dir)
            handed = store.list("standby")
            assert handed and store.read(handed[-1]) == b'{"step": 7}'
    finally:
        primary.terminate()
        primary.wait(5)
