"""DR around the rollback: retention, rollback "before the incident", degrade's flags put back
when the incident resolves, swap_model's lineage. Real daemon, real agent processes
(tests/dr_agent.py through healer.agent.state), real files."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from healer.dr.retention import to_remove
from healer.dr.store import Checkpoint, CheckpointStore
from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import FleetState
from tests.broker import Broker
from tests.helpers import events, running_daemon, wait_for, write_config
from tests.ledger import Ledger
from tests.test_dr_e2e import AGENT, booking, component

__all__ = ["booking"]  # the booking-service fixture, shared with test_dr_e2e

APPROVAL_ROLLBACK = """\
version: 1
policies:
  - name: dr-rollback
    match:
      components: ["booker"]
      failures: [crash, hang]
    steps:
      - strategy: rollback
        checkpoint: label:cp2
        approval: {timeout: 60s}
      - strategy: escalate
"""


def agent_argv(tmp: Path, *extra: str) -> list[str]:
    return [
        sys.executable, AGENT, "--name", "booker", "--state-dir", str(tmp / "state"),
        "--resumed-file", str(tmp / "resumed.json"), *extra,
    ]  # fmt: skip


# -- retention -------------------------------------------------------------------------------------
def test_retention_keeps_newest_n_head_and_what_a_pending_approval_names(tmp_path: Path) -> None:
    comps = component("booker", agent_argv(tmp_path, "--checkpoints", "8"))
    extra = "dr:\n  keep_checkpoints: 3\n  retention_interval: 2s\n"
    cfg = write_config(tmp_path, comps, APPROVAL_ROLLBACK, extra)
    with running_daemon(cfg) as d:
        # The agent saves 1..8 and crashes; the rollback to cp2 waits for a human.
        wait_for(lambda: events(d.state_dir, "approval.requested"), timeout=20, what="the approval request")
        removed = wait_for(
            lambda: (evs := events(d.state_dir, "checkpoint.removed")) and len(evs) >= 4 and evs,
            timeout=20,
            what="retention to run",
        )
        time.sleep(2.5)  # a later pass removes nothing more
        removed = events(d.state_dir, "checkpoint.removed")
        assert sorted(e["data"]["seq"] for e in removed) == [1, 3, 4, 5]
        assert all(e["data"]["keep"] == 3 and e["component"] == "booker" for e in removed)
        store = CheckpointStore.in_state_dir(d.state_dir)
        left = store.list("booker")
        assert [c.seq for c in left] == [2, 6, 7, 8]
        # The kept one still verifies (its blob was not removed with the others).
        assert store.verify(store.get("booker", 2)) is None
        for e in removed:
            assert e["data"]["blob_removed"] is True
            assert not store.blob_path(e["data"]["sha256"]).exists()
        appr = events(d.state_dir, "approval.requested")[0]
        assert appr["position"] < removed[0]["position"]
    log = healer_log(cfg)
    assert "checkpoint booker#1 (cp1) removed by retention" in log


def healer_log(cfg: Path) -> str:
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "healer", "log", "--config", str(cfg)],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip


def _rec(pos: int, type_: str, ts: float, comp: str | None, inc: int | None, **data: object) -> RecordedEvent:
    return RecordedEvent(pos, type_, ts, comp, inc, data)


def test_retention_decision_is_pure_over_the_snapshot() -> None:
    cps = [Checkpoint("a", i, 100.0 + i, f"{i:064x}", 1, 1, f"cp{i}") for i in range(1, 11)]
    other = [Checkpoint("b", i, 100.0 + i, f"{i + 50:064x}", 1) for i in range(1, 4)]
    state = FleetState()
    # An open incident on "a" opened at 104.5 with a restore of seq:2 started (in its intent).
    state.apply(_rec(1, T.INCIDENT_DETECTED, 104.5, "a", 1))
    state.apply(
        _rec(2, T.STEP_STARTED, 105.0, "a", 1, actuator="dr", action="restore", idempotency_key="k",
             before={"agent": "a", "seq": 2})
    )  # fmt: skip
    out = to_remove(state, {"a": cps, "b": other}, {"a": 9, "b": 3}, keep=3)
    # Kept on a: 8, 9, 10 (newest), 9 (HEAD), 2 (the restore), 4 (last before the incident opened).
    assert [(r.checkpoint.agent, r.checkpoint.seq) for r in out] == [
        ("a", 1),
        ("a", 3),
        ("a", 5),
        ("a", 6),
        ("a", 7),
    ]
    # Once the incident resolves, nothing protects 2 and 4 any more.
    state.apply(_rec(3, T.INCIDENT_RESOLVED, 106.0, "a", 1, resolution="verified"))
    out = to_remove(state, {"a": cps, "b": other}, {"a": 9, "b": 3}, keep=3)
    assert [r.checkpoint.seq for r in out] == [1, 2, 3, 4, 5, 6, 7]
    # HEAD is never removed, however old.
    out = to_remove(state, {"a": cps}, {"a": 1}, keep=2)
    assert 1 not in [r.checkpoint.seq for r in out]


# -- rollback to "before the incident" -------------------------------------------------------------
BEFORE_INCIDENT = """\
version: 1
policies:
  - name: dr-rollback
    match:
      components: ["booker"]
      failures: [unhealthy, crash, hang]
    steps:
      - strategy: rollback
        checkpoint: before-incident
        approval: {timeout: 2.5s, default: approve}
        verify: {timeout: 10s, stable_for: 0.3s}
      - strategy: escalate
"""


def sick_component(tmp: Path, *extra: str) -> str:
    sick = tmp / "sick"
    argv = agent_argv(tmp, "--checkpoints", "3", "--sick-file", str(sick), *extra)
    return (
        "  booker:\n"
        f"    command:\n      argv: {json.dumps(argv)}\n      stop_timeout: 2s\n"
        "    probes:\n"
        "      - type: process\n"
        "      - type: exec\n"
        f'        argv: ["test", "!", "-e", "{sick}"]\n'
        "        interval: 0.2s\n"
        "        failure_threshold: 1\n"
    )


def test_rollback_before_the_incident_passes_over_checkpoints_saved_after_it_opened(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, sick_component(tmp_path, "--after-sick", "2"), BEFORE_INCIDENT)
    with running_daemon(cfg) as d:
        wait_for(lambda: events(d.state_dir, "incident.resolved", "booker"), timeout=40, what="the rollback")
        detected = events(d.state_dir, "incident.detected", "booker")[0]["ts"]
        store = CheckpointStore.in_state_dir(d.state_dir)
        cps = {c.seq: c for c in store.list("booker")}
        # 4 and 5 were saved while the incident was open (the approval gate held the rollback).
        assert cps[3].created_at < detected < cps[4].created_at < cps[5].created_at
        restore = next(e for e in events(d.state_dir, "step.succeeded") if e["data"]["action"] == "restore")
        res = restore["data"]["result"]
        assert res["seq"] == 3 and res["target"] == "before-incident"
        assert res["incident_opened_at"] == detected
        assert json.loads((tmp_path / "resumed.json").read_text())["state"] == {"step": 3}
        assert store.head("booker") == 3


def test_before_incident_never_goes_before_a_pivot(tmp_path: Path) -> None:
    from healer.agent.state import AgentState
    from healer.dr.actuator import pick

    store = CheckpointStore.in_state_dir(tmp_path / "state")
    cps = [store.save("a", f"{i}".encode(), label=f"cp{i}", created_at=1000.0 + i) for i in range(1, 6)]
    assert pick(store, "a", "before-incident", 1003.5)[0].seq == 3
    # A pivot after checkpoint 3: nothing at or before 3 may be restored; 4 is as far back as it goes.
    store.set_head("a", cps[2])
    with AgentState("a", tmp_path / "state").effect("pay", "capture payment", kind="pivot"):
        pass
    cp, _, floor = pick(store, "a", "before-incident", 1003.5)
    assert (cp.seq, floor) == (4, 3)


# -- degrade: flags put back when the incident resolves ----------------------------------------------
DEGRADE = """\
version: 1
policies:
  - name: degrade-on-provider-outage
    match: {{components: [chat], failures: [unhealthy]}}
    steps:
      - strategy: degrade
        flags: {{use_local_model: true, web_browsing: false}}
        params: {{file: {flags}}}
        max_attempts: 1
        verify: {{timeout: 10s, stable_for: 0.5s}}
      - strategy: escalate
"""

# Healthy while the provider is up, or while the agent uses the local model.
CHAT_PROBE = (
    "import json, os, sys; f = json.load(open(sys.argv[1])); "
    "sys.exit(0 if f.get('use_local_model') or not os.path.exists(sys.argv[2]) else 1)"
)


def probe_only(name: str, argv: list[str]) -> str:
    return (
        f"  {name}:\n"
        "    probes:\n"
        "      - type: exec\n"
        f"        argv: {json.dumps(argv)}\n"
        "        interval: 0.2s\n"
        "        failure_threshold: 1\n"
    )


def test_degrade_restores_its_flags_when_the_incident_resolves(tmp_path: Path) -> None:
    flags = tmp_path / "state" / "agent-flags" / "agents.json"
    flags.parent.mkdir(parents=True, mode=0o700)
    original = {"use_local_model": False, "temperature": 0.2}
    flags.write_text(json.dumps(original))
    down = tmp_path / "provider-down"
    comps = probe_only("chat", [sys.executable, "-c", CHAT_PROBE, str(flags), str(down)])
    cfg = write_config(tmp_path, comps, DEGRADE.format(flags=flags))
    with running_daemon(cfg) as d:
        wait_for(lambda: events(d.state_dir, "component.recovered", "chat"), what="chat healthy")
        down.touch()
        wait_for(lambda: events(d.state_dir, "step.succeeded", "chat"), timeout=20, what="the degrade")
        degraded = json.loads(flags.read_text())
        assert degraded == {"use_local_model": True, "web_browsing": False, "temperature": 0.2}
        down.unlink()  # the provider is back
        restored = wait_for(lambda: events(d.state_dir, "flags.restored", "chat"), timeout=20, what="restore")
        # Exactly the values it replaced; the flag it added is gone again.
        assert json.loads(flags.read_text()) == original
        resolved = events(d.state_dir, "incident.resolved", "chat")[0]
        r = restored[0]
        assert r["incident"] == resolved["incident"] and r["position"] > resolved["position"]
        assert r["data"]["restored"] == {"use_local_model": False}
        assert r["data"]["removed"] == ["web_browsing"]
        assert r["data"]["where"] == str(flags)
    # A restart finds the restore recorded: it is not done twice.
    with running_daemon(cfg) as d2:
        wait_for(lambda: events(d2.state_dir, "component.recovered", "chat")[1:], what="chat healthy again")
        assert len(events(d2.state_dir, "flags.restored")) == 1
    assert "flags restored at" in healer_log(cfg)


# -- swap_model: atomic link move with its lineage ----------------------------------------------------
SWAP = """\
version: 1
policies:
  - name: model-rollback
    match: {{components: [summarizer], failures: [unhealthy]}}
    steps:
      - strategy: swap_model
        link: {link}
        max_attempts: 1
        verify: {{timeout: 10s, stable_for: 0.3s}}
      - strategy: escalate
"""

# v42 regressed: the summarizer is unhealthy while `current` points at it.
MODEL_PROBE = "import os, sys; sys.exit(1 if os.readlink(sys.argv[1]) == 'v42' else 0)"


def test_swap_model_moves_current_back_and_records_the_lineage(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for v in ("v41", "v42"):
        (models / v).mkdir(parents=True)
    (models / "current").symlink_to("v42")
    (models / "previous").symlink_to("v41")
    link = models / "current"
    comps = probe_only("summarizer", [sys.executable, "-c", MODEL_PROBE, str(link)])
    extra = f"execute:\n  allowed_roots: [{models}]\n"
    cfg = write_config(tmp_path, comps, SWAP.format(link=link), extra)
    with running_daemon(cfg) as d:
        swapped = wait_for(lambda: events(d.state_dir, "model.swapped"), timeout=20, what="the swap")
        wait_for(lambda: events(d.state_dir, "incident.resolved", "summarizer"), timeout=20, what="resolve")
        assert os.readlink(link) == "v41" and os.readlink(models / "previous") == "v42"
        data = swapped[0]["data"]
        assert (data["link"], data["from"], data["to"]) == (str(link), "v42", "v41")
        assert data["why"]["incident"] == swapped[0]["incident"] == 1
        assert data["why"]["failure_class"] == "unhealthy" and data["why"]["policy"] == "model-rollback"
    import subprocess

    pm = json.loads(
        subprocess.run(
            [sys.executable, "-m", "healer", "postmortem", "1", "--format", "json", "--config", str(cfg)],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout
    )  # fmt: skip
    assert pm["model_lineage"][0]["from"] == "v42" and pm["model_lineage"][0]["to"] == "v41"
    md = subprocess.run(
        [sys.executable, "-m", "healer", "postmortem", "1", "--config", str(cfg)],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert "Model lineage:" in md and "v42 → v41" in md


# -- rollback halting the agent by an MQTT pause -------------------------------------------------------
PAUSE_ROLLBACK = """\
version: 1
policies:
  - name: dr-rollback-paused
    match: {{components: [booker], failures: [unhealthy, crash, hang]}}
    steps:
      - strategy: rollback
        halt: pause
        checkpoint: label:cp3
        params: {{timeout: {timeout}, fallback: stop}}
        verify: {{timeout: 10s, stable_for: 0.3s}}
      - strategy: escalate
"""

MQTT_AGENT = str(Path(__file__).resolve().parent / "dr_mqtt_agent.py")


def mqtt_booker(tmp: Path, booking: Ledger, port: int, *extra: str) -> str:
    sick = tmp / "sick"
    argv = [
        sys.executable, MQTT_AGENT, "--name", "booker", "--state-dir", str(tmp / "state"),
        "--booking", booking.base, "--mqtt-port", str(port), "--sick-file", str(sick),
        "--acts-file", str(tmp / "acts.log"), "--resumed-file", str(tmp / "resumed.json"), *extra,
    ]  # fmt: skip
    return (
        "  booker:\n"
        f"    command:\n      argv: {json.dumps(argv)}\n      stop_timeout: 2s\n"
        "    probes:\n"
        "      - type: process\n"
        "      - type: exec\n"
        f'        argv: ["test", "!", "-e", "{sick}"]\n'
        "        interval: 0.2s\n"
        "        failure_threshold: 1\n"
    )


def test_rollback_pauses_the_agent_over_mqtt_and_waits_for_its_ack(
    tmp_path: Path, booking: Ledger, broker: Broker
) -> None:
    comps = mqtt_booker(tmp_path, booking, broker.port, "--pause-delay", "0.3")
    extra = f"execute:\n  mqtt_port: {broker.port}\n"
    cfg = write_config(tmp_path, comps, PAUSE_ROLLBACK.format(timeout="5s"), extra)
    with running_daemon(cfg) as d:
        wait_for(lambda: events(d.state_dir, "incident.resolved", "booker"), timeout=40, what="the rollback")
        saga = [(e["data"]["actuator"], e["data"]["action"]) for e in events(d.state_dir, "step.succeeded")]
        assert saga == [("dr", "pause"), ("dr", "restore"), ("dr", "compensate"), ("dr", "resume")]
        paused = events(d.state_dir, "agent.paused")
        assert len(paused) == 1 and paused[0]["data"]["agent"] == "booker"
        assert paused[0]["data"]["waited_s"] >= 0.3  # the ack came once the agent reached a safe point
        pause = next(e for e in events(d.state_dir, "step.succeeded") if e["data"]["action"] == "pause")
        restore = next(e for e in events(d.state_dir, "step.succeeded") if e["data"]["action"] == "restore")
        assert pause["data"]["result"]["paused"] is True and pause["position"] < restore["position"]
        # The paused agent acted no more until healer restarted it from checkpoint 3.
        lines = [ln.split() for ln in (tmp_path / "acts.log").read_text().splitlines()]
        first_pid = lines[0][1]
        mine = [ln for ln in lines if ln[1] == first_pid]
        at = next(i for i, ln in enumerate(mine) if ln[0] == "paused")
        assert all(ln[0] != "acted" for ln in mine[at + 1 :])
        assert json.loads((tmp_path / "resumed.json").read_text())["seq"] == 3
        assert [name for op, name in booking.effects("undo")] == ["order-C", "order-B", "order-A"]
        assert any(ln[1] != first_pid and ln[0] == "acted" for ln in lines), "the restarted agent acts"


def test_pause_without_an_acknowledgement_falls_back_to_stopping_the_agent(
    tmp_path: Path, booking: Ledger, broker: Broker
) -> None:
    comps = mqtt_booker(tmp_path, booking, broker.port, "--no-mqtt")
    extra = f"execute:\n  mqtt_port: {broker.port}\n"
    cfg = write_config(tmp_path, comps, PAUSE_ROLLBACK.format(timeout="0.5s"), extra)
    with running_daemon(cfg) as d:
        wait_for(lambda: events(d.state_dir, "incident.resolved", "booker"), timeout=40, what="the rollback")
        pause = next(e for e in events(d.state_dir, "step.succeeded") if e["data"]["action"] == "pause")
        res = pause["data"]["result"]
        assert res["paused"] is False and res["fallback"] == "stopped"
        assert "no acknowledgement within 0.5s" in res["why"]
        assert events(d.state_dir, "agent.paused") == []
        assert json.loads((tmp_path / "resumed.json").read_text())["seq"] == 3
        assert [name for op, name in booking.effects("undo")] == ["order-C", "order-B", "order-A"]
