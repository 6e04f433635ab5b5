"""Operator surfaces on a deterministically recorded incident: golden postmortems, the explained
decision log and its filters, replay --verify (and a tampered copy), backtest, generic rendering.

The log is written by the real control loop (tests/recorded_incident.py). Golden files live in
tests/golden/; regenerate them with HEALER_UPDATE_GOLDEN=1 after an intended change and review
the diff.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.store import SQLiteEventStore
from healer.logview import Since, parse_since, position_before
from healer.plan.policy import load_policies
from healer.report import postmortem
from healer.report.explain import explain
from healer.report.formats import render
from tests.helpers import healer_cli
from tests.recorded_incident import CONFIG, POLICY, T0, record

GOLDEN = Path(__file__).parent / "golden"
BASE = "<BASE>"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("recorded")
    asyncio.run(record(base))
    yield base


POLICIES_HASH = "<POLICIES_HASH>"


def cli(base: Path, *args: str) -> str:
    """The command's output with the fixture's directory and the policy set's hash as placeholders.

    The set's hash covers the policy files' paths, which are under a fresh temporary directory on
    every run; only that exact hash is replaced, so a different one still shows in the diff.
    """
    out = healer_cli(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout.replace(str(base), BASE).replace(load_policies([base / "policies"]).hash, POLICIES_HASH)


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HEALER_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"golden file {path} missing: run with HEALER_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"output differs from {path} (HEALER_UPDATE_GOLDEN=1 to accept)"


def rows(state: Path) -> list[RecordedEvent]:
    async def go() -> list[RecordedEvent]:
        store = await SQLiteEventStore.open(state, readonly=True)
        try:
            return await store.read(0)
        finally:
            await store.close()

    return asyncio.run(go())


# -- postmortems ------------------------------------------------------------------------------------
@pytest.mark.parametrize("incident", [1, 2])
def test_postmortem_markdown_and_json_match_golden(recorded: Path, incident: int) -> None:
    cfg = str(recorded / "healer.yaml")
    md = cli(recorded, "postmortem", str(incident), "-c", cfg, "--format", "md")
    golden(f"postmortem-{incident}.md", md)
    doc = json.loads(cli(recorded, "postmortem", str(incident), "-c", cfg, "--format", "json"))
    golden(f"postmortem-{incident}.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")


def test_postmortem_content(recorded: Path) -> None:
    """What the golden files must say, spelled out (so a wrong golden file cannot slip through)."""
    doc = json.loads(
        cli(recorded, "postmortem", "1", "-c", str(recorded / "healer.yaml"), "--format", "json")
    )
    assert doc["status"] == "resolved" and doc["failure_class"] == "crash" and doc["root_cause"] == "agent-a"
    # every event of the incident and of agent-a from the crash to the resolution, relative to detection
    assert [e["position"] for e in doc["timeline"]] == [
        7,
        8,
        9,
        10,
        11,
        12,
        13,
        14,
        15,
        16,
        17,
        18,
        19,
        20,
        25,
        26,
        27,
    ]
    assert doc["timeline"][0]["t"] == 0.0 and doc["timeline"][-1]["t"] == 2.5
    # #16 is the cooldown's incident.deferred, #17 the plan a tick made once it was over
    assert [(a["attempt"], a["outcome"]) for a in doc["actions"]] == [(1, "succeeded"), (2, "succeeded")]
    assert doc["objectives"]["rto"] == {"achieved_s": 2.5, "target_s": 5.0, "met": True}
    assert doc["objectives"]["rpo"]["achieved_s"] is None and doc["objectives"]["rpo"]["target_s"] == 60.0
    assert doc["guardrails"]["attempts_by_step"] == {"0": 2}
    assert doc["guardrails"]["cooldowns"][1]["waited_s"] == 0.15
    assert [d["decision"] for d in doc["decisions"]] == ["restart", "restart"]
    assert doc["decisions"][0]["policy_file"] == f"{BASE}/policies/default.yaml"
    phases = doc["phases"][0]["segments"]
    assert [p["phase"] for p in phases] == [
        "planned",
        "acting",
        "verifying",
        "deferred",
        "planned",
        "acting",
        "verifying",
        "resolved",
    ]
    two = json.loads(
        cli(recorded, "postmortem", "2", "-c", str(recorded / "healer.yaml"), "--format", "json")
    )
    assert two["objectives"]["rto"] == {"achieved_s": 2.0, "target_s": 1.0, "met": False}
    assert "MISSED" in two["summary"]


def test_postmortem_of_unknown_incident_is_a_clear_error(recorded: Path) -> None:
    out = healer_cli("postmortem", "99", "--state-dir", str(recorded / "state"))
    assert out.returncode == 1 and "no incident 99" in out.stderr


def test_html_escapes_event_text() -> None:
    evil = "<script>alert(1)</script>"
    events = [
        RecordedEvent(1, "process.exited", T0, "a", None, {"pid": 1, "signal": "SIGKILL"}),
        RecordedEvent(2, "incident.detected", T0, "a", 1, {"cause": 1, "evidence": {"x": evil}}),
        RecordedEvent(3, "incident.diagnosed", T0, "a", 1, {"failure_class": "crash", "root_cause": "a"}),
        RecordedEvent(
            4, "step.started", T0 + 1, "a", 1, {"idempotency_key": "k", "actuator": "p", "action": "r"}
        ),
        RecordedEvent(5, "step.failed", T0 + 2, "a", 1, {"idempotency_key": "k", "error": evil}),
    ]
    doc = postmortem.build(postmortem.IncidentRecord(1, events[1:], events))
    page = render(doc, "html")
    assert evil not in page and "&lt;script&gt;" in page
    assert "<script" not in page.lower()


# -- the decision log ---------------------------------------------------------------------------------
def test_log_verbose_explains_each_decision_golden(recorded: Path) -> None:
    text = cli(recorded, "log", "--state-dir", str(recorded / "state"), "-v", "--incident", "1")
    golden("log-incident-1-verbose.txt", text)


def test_decision_entries_carry_their_explanation(recorded: Path) -> None:
    lines = cli(recorded, "log", "--state-dir", str(recorded / "state"), "--json", "-v").splitlines()
    by_pos = {d["position"]: d for d in map(json.loads, lines)}
    assert sorted(by_pos) == list(range(1, 36))
    # the second restart of agent-a, after a failed verification: first held back by its cooldown
    # (#16 incident.deferred), then planned by the tick after the cooldown (#17)
    deferred = by_pos[16]["explain"]
    g = deferred["guardrails"]
    assert g["guardrail"] == "cooldown"
    assert (g["attempts_used"], g["cooldown_s"], g["wait_s"]) == (1, 1.0, 0.15)
    assert g["next_allowed"] == "2026-01-01T00:00:11.050+00:00"
    assert g["attempts_by_step"] == {"0": 1}
    assert deferred["decision"]["policy"] == "restart-then-escalate" and "details" not in deferred
    second = by_pos[17]["explain"]
    assert second["evidence"]["signal"] == "SIGKILL" and second["evidence"]["process_alive"] is False
    assert second["diagnosis"] == {"failure_class": "crash", "root_cause": "agent-a", "symptoms": []}
    assert second["decision"]["policy"] == "restart-then-escalate" and second["decision"]["step"] == 0
    assert second["decision"]["policy_file"].endswith("policies/default.yaml")
    import hashlib

    assert second["decision"]["policy_hash"] == hashlib.sha256(POLICY.encode()).hexdigest()[:16]
    g = second["guardrails"]
    assert (g["attempts_used"], g["max_attempts"], g["cooldown_s"], g["wait_s"]) == (1, 3, 1.0, 0.0)
    assert g["next_allowed"] == "2026-01-01T00:00:11.060+00:00"
    assert g["attempts_by_step"] == {"0": 1}
    assert second["rejected"] == [
        {
            "policy": "databases-first",
            "file": f"{BASE}/policies/default.yaml",
            "reason": "component 'agent-a' not in ['db-*']",
        }
    ]
    failed = by_pos[21]["explain"]["evidence"]  # agent-b's probes at the transition
    assert failed["http#1"] == {"status": "failing", "type": "http", "detail": "timed out after 0.3s"}
    assert failed["failing"] == ["http#1"]
    assert by_pos[15]["level"] == "warning" and "explain" in by_pos[15]


def test_log_filters(recorded: Path) -> None:
    state = str(recorded / "state")

    def positions(*args: str) -> list[int]:
        out = cli(recorded, "log", "--state-dir", state, "--json", *args)
        return [json.loads(line)["position"] for line in out.splitlines()]

    assert positions("--component", "agent-b") == [4, 6, 21, 22, 23, 24, 28, 29, 30, 31, 32, 33, 34]
    assert positions("--incident", "2") == [22, 23, 24, 28, 31, 33, 34]
    assert positions("--level", "warning") == [7, 8, 14, 15, 16, 21, 22]
    assert positions("--level", "error") == []
    assert positions("--since", "30") == [31, 32, 33, 34, 35]
    assert positions("--since", "2026-01-01T00:00:14Z") == [32, 33, 34, 35]
    assert positions("--since", "2026-01-01T00:00:13.999") == [32, 33, 34, 35]  # no zone: UTC, like the log
    assert positions("-n", "2") == [34, 35]
    assert positions("--since", "1m") == [], "everything in this log is older than a minute"
    bad = healer_cli("log", "--state-dir", state, "--since", "yesterday")
    assert bad.returncode == 1 and "expected a log position" in bad.stderr


def test_since_parsing_and_time_lookup(recorded: Path) -> None:
    assert parse_since("1200", 0) == Since(position=1200)
    assert parse_since("#7", 0) == Since(position=7)
    assert parse_since("10m", 1000.0) == Since(ts=400.0)
    assert parse_since("2h", 7200.0) == Since(ts=0.0)
    assert parse_since("2026-01-01T00:00:00Z", 0) == Since(ts=T0)

    async def lookups() -> list[int]:
        store = await SQLiteEventStore.open(recorded / "state", readonly=True)
        try:
            return [await position_before(store, T0 + t) for t in (-1.0, 0.0, 10.0, 10.9, 12.55, 99.0)]
        finally:
            await store.close()

    assert asyncio.run(lookups()) == [0, 0, 6, 13, 27, 35]


# -- replay ------------------------------------------------------------------------------------------
def test_replay_rebuilds_projections_into_a_scratch_store(recorded: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch" / "projections.db"
    out = healer_cli(
        "replay", "--state-dir", str(recorded / "state"), "--into", str(scratch), "--json", "--digest"
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    stopped = rows(recorded / "state")[-1]
    assert report["events"] == 35 and report["digest"] == stopped.data["digest"]
    assert report["verified"] is None
    conn = sqlite3.connect(scratch)
    names = dict(conn.execute("SELECT name, COUNT(*) FROM projections GROUP BY name").fetchall())
    inc1 = json.loads(
        conn.execute("SELECT value FROM projections WHERE name='fleet.incidents' AND key='1'").fetchone()[0]
    )
    conn.close()
    assert names["fleet.components"] == 2 and names["fleet.incidents"] == 2
    assert inc1["status"] == "resolved" and inc1["rto_achieved"] == 2.5
    assert oct(scratch.stat().st_mode & 0o777) == "0o600"


def test_replay_verify_passes_and_names_a_tampered_decision(recorded: Path, tmp_path: Path) -> None:
    ok = healer_cli("replay", "-c", str(recorded / "healer.yaml"), "--verify")
    assert ok.returncode == 0, ok.stderr
    assert "verified: 13 decisions re-made identically" in ok.stdout

    # #17: the second restart of agent-a, planned by the tick after its cooldown
    copy = tamper_copy(recorded, tmp_path, 17, lambda d: {**d, "max_attempts": 4})
    bad = healer_cli("replay", "-c", str(copy), "--verify")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "nondeterminism at log position 17: a decision made on a deadline tick differs" in bad.stderr
    assert '"max_attempts": 4' in bad.stderr and '"max_attempts": 3' in bad.stderr


def test_replay_verify_catches_a_decision_no_event_explains(recorded: Path, tmp_path: Path) -> None:
    # #13 step.succeeded becomes an incident.planned that nothing decided
    copy = tamper_copy(recorded, tmp_path, 13, None, new_type="incident.planned")
    bad = healer_cli("replay", "-c", str(copy), "--verify")
    assert bad.returncode == 1 and "nondeterminism at log position 13" in bad.stderr


def test_replay_verify_refuses_other_policies(recorded: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(recorded, other)
    (other / "policies" / "default.yaml").write_text(POLICY.replace("max_attempts: 3", "max_attempts: 5"))
    out = healer_cli("replay", "-c", str(other / "healer.yaml"), "--verify")
    assert out.returncode == 3 and "cannot verify from log position 2" in out.stderr


def tamper_copy(recorded: Path, tmp: Path, position: int, change: Any, new_type: str | None = None) -> Path:
    """A copy of the recorded fleet whose event at ``position`` was altered (triggers dropped)."""
    dst = tmp / "tampered"
    shutil.copytree(recorded, dst)
    conn = sqlite3.connect(dst / "state" / "events.db")
    conn.execute("DROP TRIGGER events_no_update")
    if change is not None:
        data = json.loads(
            conn.execute("SELECT data FROM events WHERE position = ?", (position,)).fetchone()[0]
        )
        conn.execute("UPDATE events SET data = ? WHERE position = ?", (json.dumps(change(data)), position))
    if new_type is not None:
        conn.execute("UPDATE events SET type = ? WHERE position = ?", (new_type, position))
    conn.commit()
    conn.close()
    # The policies stay where they were: the policy set's hash covers their paths.
    cfg = dst / "healer.yaml"
    cfg.write_text(
        f"state_dir: {dst / 'state'}\npolicies_dir: {recorded / 'policies'}\n" + CONFIG.split("\n", 2)[2]
    )
    return cfg


# -- backtest ------------------------------------------------------------------------------------------
def test_backtest_on_the_recorded_incidents(recorded: Path, tmp_path: Path) -> None:
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "p.yaml").write_text(POLICY.replace("max_attempts: 3", "max_attempts: 1"))
    out = healer_cli(
        "policy", "backtest", "-c", str(recorded / "healer.yaml"), "--policies", str(draft), "--json"
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    # only the second restart of agent-a changes: with one attempt allowed, it escalates. It is
    # two decisions in the log: the cooldown's deferral after the failed verification (#15 -> #16)
    # and the plan the tick made once the cooldown was over (#17); each is judged on the recorded
    # history, so both change.
    assert report["incidents_changed"] == [1] and report["decisions_examined"] == 4
    deferral, tick = report["changes"]
    assert (deferral["position"], deferral["recorded_position"]) == (15, 16)
    assert deferral["old"].startswith("defer restart (cooldown)") and deferral["new"].startswith("escalate")
    assert (tick["position"], tick["recorded_position"], tick["trigger"]) == (17, 17, "tick")
    assert tick["old"].startswith("restart attempt 2/3") and tick["new"].startswith("escalate")
    same = healer_cli(
        "policy", "backtest", "-c", str(recorded / "healer.yaml"), "--policies", str(recorded / "policies")
    )
    assert "summary: 0 of 4 decisions would change, in 0 of 2 incidents" in same.stdout


# -- generic rendering of event families other issues add -----------------------------------------------
def test_unknown_event_types_explain_and_describe_themselves() -> None:
    from healer.render import describe

    req = RecordedEvent(
        40,
        "approval.requested",
        T0,
        "agent-a",
        1,
        {
            "approval": 3,
            "deadline": T0 + 300,
            "default": "deny",
            "strategy": "restart",
            "reason": "needs a human",
        },
    )
    ex = explain(req)
    assert ex["approval"]["deadline_iso"] == "2026-01-01T00:05:00.000+00:00"
    assert ex["approval"]["default"] == "deny" and ex["decision"]["strategy"] == "restart"
    odd = RecordedEvent(43, "widget.frobbed", T0, "agent-a", None, {"count": 3, "nested": {"x": 1}})
    assert describe(odd) == "agent-a: widget.frobbed (count=3)"
    deferred = RecordedEvent(
        41,
        "incident.deferred",
        T0,
        "agent-a",
        1,
        {
            "guardrail": "budget.max_concurrent",
            "next_allowed_at": T0 + 5,
            "guardrails": [{"guardrail": "cooldown", "ok": True}],
        },
    )
    g = explain(deferred)["guardrails"]
    assert g["guardrail"] == "budget.max_concurrent" and g["guardrails"][0]["guardrail"] == "cooldown"
    assert g["next_allowed_at"] == T0 + 5 and "details" not in explain(deferred)
    breaker = RecordedEvent(
        42, "breaker.transitioned", T0, "agent-a", None, {"dependency": "llm", "state": "open"}
    )
    assert explain(breaker)["details"] == {"dependency": "llm", "state": "open"}


def test_status_shows_generic_families(tmp_path: Path) -> None:
    async def write() -> None:
        store = await SQLiteEventStore.open(tmp_path / "state")
        await store.append(
            [
                Event("process.started", T0, "agent-a", None, {"pid": 10}),
                Event("component.failed", T0 + 1, "agent-a", None, {"failing": ["http#1"], "probes": {}}),
                # Plan's schemas (healer/control.py, healer/plan/planner.py)
                Event("approval.requested", T0 + 2, "agent-a", 1, {"approval": 1, "deadline": T0 + 60}),
                Event("approval.requested", T0 + 2, "agent-b", 2, {"approval": 2, "deadline": T0 + 60}),
                Event(
                    "approval.granted",
                    T0 + 3,
                    "agent-b",
                    2,
                    {"approval": 2, "outcome": "granted", "by": {"user": "ops"}},
                ),
                Event(
                    "silence.created",
                    T0,
                    "agent-c",
                    None,
                    {"silence": 1, "component": "agent-c", "until": 4_102_444_800.0, "by": {"user": "ops"}},
                ),
                Event(
                    "silence.created",
                    T0,
                    "agent-d",
                    None,
                    {"silence": 2, "component": "agent-d", "until": T0 + 1, "by": {"user": "ops"}},
                ),
                Event("breaker.transitioned", T0, "agent-a", None, {"dependency": "llm", "state": "open"}),
            ]
        )
        await store.close()

    asyncio.run(write())
    out = healer_cli("status", "--state-dir", str(tmp_path / "state"), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["components"]["agent-a"]["health"] == "failing"
    assert doc["components"]["agent-a"]["failing_probes"] == ["http#1"]
    assert [a["key"] for a in doc["pending_approvals"]] == ["agent-a/1"]
    assert [s["key"] for s in doc["silences"]] == ["agent-c/1"], "the expired silence is not shown"
    assert [(b["key"], b["state"]) for b in doc["breakers"]] == [("agent-a/llm", "open")]
    table = healer_cli("status", "--state-dir", str(tmp_path / "state"))
    assert (
        table.returncode == 0 and "pending approvals (1)" in table.stdout and "breakers (1)" in table.stdout
    )


def test_verify_reproduces_deadline_ticks(tmp_path: Path) -> None:
    """Two verifications time out in one tick: the tick's roots and their subtrees replay exactly,
    and an altered tick decision is named."""
    from healer.analyze.taxonomy import load_taxonomy
    from healer.clock import ManualClock
    from healer.config import load_config
    from healer.knowledge.events import EventType as T
    from healer.knowledge.projections import FleetState
    from healer.loop import ControlLoop, decider_for
    from healer.plan.policy import load_policies
    from healer.replay import DecisionWalker, log_events, replay

    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(POLICY.replace("verify_timeout: 10s", "verify_timeout: 2s"))
    (tmp_path / "healer.yaml").write_text(CONFIG)
    cfg = load_config(tmp_path / "healer.yaml")

    async def run() -> None:
        clock = ManualClock(T0)
        store = await SQLiteEventStore.open(cfg.state_dir)
        loop = ControlLoop(
            store,
            FleetState(),
            decider_for(cfg, load_policies([cfg.policies_dir]), load_taxonomy()),
            clock,
            lambda r: None,
        )
        task = asyncio.create_task(loop.run())
        for comp, iid in (("agent-a", 1), ("agent-b", 2)):
            loop.submit(Event(T.PROCESS_STARTED, 0, comp, None, {"pid": iid}))
            loop.submit(
                Event(T.PROCESS_EXITED, 0, comp, None, {"pid": iid, "signal": "SIGKILL", "expected": False})
            )
            key = f"incident-{iid}/step-0/attempt-1"
            step = {
                "step": 0,
                "attempt": 1,
                "plan_key": key,
                "action_index": 0,
                "actuator": "process",
                "action": "restart",
                "idempotency_key": f"{key}/action-0",
            }
            loop.submit(Event(T.STEP_STARTED, 0, comp, iid, step))
            loop.submit(Event(T.STEP_SUCCEEDED, 0, comp, iid, {**step, "duration_s": 0.1}))
            await loop.flush()
            clock.advance(0.5)
        clock.advance(5.0)
        loop.tick()  # both verifications are overdue: one tick decides for both
        await loop.flush()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()

    asyncio.run(run())
    recorded = rows(cfg.state_dir)
    overdue = [r.position for r in recorded if r.type == "incident.verification_failed"]
    assert len(overdue) == 2 and recorded[overdue[0] - 1].ts == recorded[overdue[1] - 1].ts
    assert recorded[overdue[0]].type == "incident.planned", (
        "the first root's subtree comes before the second root"
    )
    dec = decider_for(cfg, load_policies([cfg.policies_dir]), load_taxonomy())
    ok = replay(log_events(cfg.state_dir), decider=dec)
    assert ok.verified and ok.divergence is None

    walker = DecisionWalker(dec)
    for rec in recorded:
        fed = rec
        if rec.position == overdue[1]:
            fed = RecordedEvent(
                rec.position, rec.type, rec.ts, rec.component, rec.incident, {"reason": "edited"}
            )
        divergence = walker.feed(fed)
        if divergence is not None:
            break
    assert divergence is not None and divergence.position == overdue[1]
    assert "deadline tick" in divergence.reason
