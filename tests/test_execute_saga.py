"""Sagas: actions in order, compensation in reverse on failure, retries, escalation, breakers.

Real parts: the SQLite store and control loop (tests/execute_harness.py), the installed
actuators, and an external ledger (tests/ledger.py: an HTTP server process and one-shot exec
processes) that records every effect on the world.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from healer.knowledge.events import EventType as T
from tests.execute_harness import harness
from tests.helpers import free_port
from tests.ledger import HERE, Ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path, free_port())
    led.start()
    try:
        yield led
    finally:
        led.stop()


async def test_third_action_fails_so_the_second_and_first_are_compensated_in_that_order_once(
    tmp_path: Path, ledger: Ledger
) -> None:
    actions = [
        ledger.exec_action("apply", "A", compensation=ledger.exec_action("undo", "A")),
        ledger.http_action("apply", "B", compensation=ledger.http_action("undo", "B")),
        ledger.exec_action("fail", "C"),
    ]
    async with harness(tmp_path) as h:
        iid = await h.plan("svc", actions)
        await h.settle()
        assert ledger.effects() == [("apply", "A"), ("apply", "B"), ("undo", "B"), ("undo", "A")]
        assert h.types(iid, "step.") + h.types(iid, "compensation.") + h.types(iid, "saga.") == [
            *["step.started", "step.succeeded"] * 2,
            "step.started",
            "step.failed",
            *["compensation.started", "compensation.succeeded"] * 2,
            "saga.compensated",
        ]
        failed = h.of(T.STEP_FAILED, iid)[0]
        assert failed.data["action_index"] == 2 and "exited 3" in failed.data["error"]
        base = f"incident-{iid}/step-0/attempt-1"
        assert [c["key"] for c in failed.data["compensations"]] == [
            f"{base}/action-1/compensate",
            f"{base}/action-0/compensate",
        ]
        started = [e.data["of"] for e in h.of(T.COMPENSATION_STARTED, iid)]
        assert started == [f"{base}/action-1", f"{base}/action-0"]
        # The intent of every action was durable before its effect: positions say so.
        intents = [e.data["idempotency_key"] for e in h.of(T.STEP_STARTED, iid)]
        assert intents == [f"{base}/action-{i}" for i in range(3)]
        inc = h.state.incidents[iid]
        assert inc.compensating is None
        assert [(c.of.rsplit("/", 1)[1], c.outcome, c.tries) for c in inc.compensations] == [
            ("action-1", "succeeded", 1),
            ("action-0", "succeeded", 1),
        ]
        # The idempotency key reaches the actuator: exec's env and http's header.
        entries = {(e["op"], e["name"]): e for e in ledger.entries() if e["op"] != "request"}
        assert entries[("apply", "A")]["env_key"] == f"{base}/action-0"
        assert entries[("apply", "B")]["key"] == f"{base}/action-1"
        assert entries[("undo", "B")]["key"] == f"{base}/action-1/compensate"
        assert (await h.rebuilt()).digest() == h.state.digest()


async def test_a_failing_compensation_is_retried_with_backoff_until_it_succeeds(
    tmp_path: Path, ledger: Ledger
) -> None:
    ledger.control(fail_undo=2)
    actions = [
        ledger.http_action("apply", "B", compensation=ledger.http_action("undo", "B")),
        ledger.exec_action("fail", "C"),
    ]
    async with harness(tmp_path) as h:
        iid = await h.plan("svc", actions)
        await h.settle()
        comp_events = [(e.type, e.data.get("try")) for e in h.recorded if e.type.startswith("compensation.")]
        assert comp_events == [
            ("compensation.started", 1),
            ("compensation.failed", 1),
            ("compensation.started", 2),
            ("compensation.failed", 2),
            ("compensation.started", 3),
            ("compensation.succeeded", 3),
        ]
        fails = h.of(T.COMPENSATION_FAILED, iid)
        assert all(not f.data["final"] and f.data["retry_in"] > 0 for f in fails)
        assert "503" in fails[0].data["error"]
        assert ledger.count("undo", "B") == 1 and ledger.count("request", "B") == 1 + 3
        assert h.types(iid)[-1] == "saga.compensated"
        assert h.state.incidents[iid].status == "open"


async def test_compensation_out_of_retries_escalates_and_stops_undoing(
    tmp_path: Path, ledger: Ledger
) -> None:
    ledger.control(fail_undo=True)
    actions = [
        ledger.exec_action("apply", "A", compensation=ledger.exec_action("undo", "A")),
        ledger.http_action("apply", "B", compensation=ledger.http_action("undo", "B")),
        ledger.exec_action("fail", "C"),
    ]
    async with harness(tmp_path) as h:
        iid = await h.plan("svc", actions)
        await h.settle()
        tries = [e.data["try"] for e in h.of(T.COMPENSATION_STARTED, iid)]
        assert tries == [1, 2, 3, 4], "attempts: 4 in the test settings"
        last = h.of(T.COMPENSATION_FAILED, iid)[-1]
        assert last.data["final"] is True and last.data["retry_in"] is None
        esc = h.of(T.INCIDENT_ESCALATED, iid)
        assert len(esc) == 1
        reason = esc[0].data["reason"]
        assert "after 4 tries" in reason and "action-0" in reason, reason
        assert ledger.count("undo", "A") == 0, "an earlier action is not undone once a later undo failed"
        assert not h.of(T.SAGA_COMPENSATED, iid)
        inc = h.state.incidents[iid]
        assert inc.status == "escalated" and inc.compensating is None
        assert (await h.rebuilt()).digest() == h.state.digest()


async def test_actions_without_an_undo_are_listed_as_not_compensated(tmp_path: Path, ledger: Ledger) -> None:
    actions = [
        ledger.http_action("apply", "A", compensation=ledger.http_action("undo", "A")),
        ledger.http_action("apply", "N"),  # no compensation given, http has no undo of its own
        ledger.http_action("apply", "K", compensate=False, compensation=ledger.http_action("undo", "K")),
        ledger.exec_action("fail", "C"),
    ]
    async with harness(tmp_path) as h:
        iid = await h.plan("svc", actions)
        await h.settle()
        failed = h.of(T.STEP_FAILED, iid)[0].data
        assert [c["of"].rsplit("/", 1)[1] for c in failed["compensations"]] == ["action-0"]
        assert {n["key"].rsplit("/", 1)[1]: n["reason"] for n in failed["not_compensated"]} == {
            "action-2": "the policy says not to compensate it",
            "action-1": "http.request has no compensation",
        }
        assert ledger.effects("undo") == [("undo", "A")]


async def test_the_next_attempt_waits_for_the_compensation_of_the_previous_one(
    tmp_path: Path, ledger: Ledger
) -> None:
    slow_undo = ledger.exec_action("undo", "A")
    slow_undo["params"]["argv"] += ["--sleep", "0.4"]
    actions = [
        ledger.exec_action("apply", "A", compensation=slow_undo),
        ledger.exec_action("fail", "C"),
    ]
    async with harness(tmp_path) as h:
        iid = await h.plan("svc", actions)
        async with asyncio.timeout(10):
            while not h.of(T.STEP_FAILED, iid):
                await asyncio.sleep(0.01)
        await h.plan("svc", [ledger.http_action("apply", "D")], attempt=2, incident=iid)
        await h.settle()
        pos = {(r.type, r.data.get("plan_key")): r.position for r in h.recorded}
        compensated = pos[(T.SAGA_COMPENSATED, f"incident-{iid}/step-0/attempt-1")]
        second = pos[(T.STEP_STARTED, f"incident-{iid}/step-0/attempt-2")]
        assert compensated < second, "one saga (or its compensation) at a time per incident"
        assert ledger.effects() == [("apply", "A"), ("undo", "A"), ("apply", "D")]


async def test_a_failing_actuator_trips_its_breaker_fails_fast_and_half_open_recovers(
    tmp_path: Path, ledger: Ledger
) -> None:
    ledger.control(fail_apply=True)
    settings = {"breaker": {"fail_max": 2, "reset_timeout": 0.5}}
    async with harness(tmp_path, settings) as h:
        for _ in range(2):
            await h.plan("svc", [ledger.http_action("apply", "B")])
            await h.settle()
        assert ledger.count("request", "B") == 2
        opened = h.of(T.BREAKER_OPENED)
        assert len(opened) == 1
        name = opened[0].data["breaker"]
        assert name == f"http:127.0.0.1:{ledger.port}"
        assert opened[0].data["failures"] == 2 and opened[0].incident == 2
        # Open: the step fails at once and the server sees nothing.
        t0 = time.monotonic()
        iid = await h.plan("svc", [ledger.http_action("apply", "B")])
        await h.settle()
        fast = h.of(T.STEP_FAILED, iid)[0].data
        assert fast["breaker"] == name and "is open" in fast["error"]
        assert time.monotonic() - t0 < 0.5
        assert ledger.count("request", "B") == 2, "no call while the breaker is open"
        assert h.state.actuator_breakers[name] == "open"
        # After the reset timeout one trial call goes through; it succeeds and closes the breaker.
        ledger.control(fail_apply=False)
        await asyncio.sleep(0.6)
        iid = await h.plan("svc", [ledger.http_action("apply", "B")])
        await h.settle()
        assert h.of(T.STEP_SUCCEEDED, iid)
        states = [
            (e.type, e.data["from"], e.data["state"]) for e in h.recorded if e.type.startswith("breaker.")
        ]
        assert states == [
            ("breaker.opened", "closed", "open"),
            ("breaker.half_opened", "open", "half-open"),
            ("breaker.closed", "half-open", "closed"),
        ]
        assert h.state.actuator_breakers[name] == "closed"
        assert ledger.count("apply", "B") == 1


async def test_a_failed_half_open_trial_opens_the_breaker_again(tmp_path: Path, ledger: Ledger) -> None:
    ledger.control(fail_apply=True)
    async with harness(tmp_path, {"breaker": {"fail_max": 1, "reset_timeout": 0.3}}) as h:
        await h.plan("svc", [ledger.http_action("apply", "B")])
        await h.settle()
        await asyncio.sleep(0.35)
        await h.plan("svc", [ledger.http_action("apply", "B")])
        await h.settle()
        states = [e.data["state"] for e in h.recorded if e.type.startswith("breaker.")]
        assert states == ["open", "half-open", "open"]
        assert ledger.count("request", "B") == 2
        # Breakers are per target: another target is unaffected.
        other = ledger.exec_action("apply", "E")
        iid = await h.plan("svc", [other])
        await h.settle()
        assert h.of(T.STEP_SUCCEEDED, iid)


async def test_every_call_runs_under_its_timeout_and_leaves_no_process_behind(
    tmp_path: Path, ledger: Ledger
) -> None:
    slow = ledger.exec_action("apply", "S")
    slow["params"]["argv"] += ["--sleep", "30"]
    slow["timeout"] = 0.5
    async with harness(tmp_path) as h:
        iid = await h.plan("svc", [slow])
        await h.settle()
        assert h.of(T.STEP_FAILED, iid)[0].data["error"] == "timed out after 0.5s"
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(HERE) in " ".join(p.info["cmdline"] or []) and "S" in (p.info["cmdline"] or [])
    ]
    assert not leftovers, "the timed-out command was killed with its process group"
    assert ledger.count("apply", "S") == 0


async def test_an_unknown_actuator_or_bad_params_fail_the_step_with_a_clear_error(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        iid = await h.plan("svc", [{"actuator": "teleport", "action": "go", "params": {}, "timeout": 1}])
        await h.settle()
        assert "no actuator named 'teleport' is installed" in h.of(T.STEP_FAILED, iid)[0].data["error"]
        iid = await h.plan(
            "svc", [{"actuator": "exec", "action": "run", "params": {"argv": []}, "timeout": 1}]
        )
        await h.settle()
        assert "argv" in h.of(T.STEP_FAILED, iid)[0].data["error"]
        iid = await h.plan(
            "svc",
            [
                {
                    "actuator": "exec",
                    "action": "run",
                    "params": {"argv": [sys.executable]},
                    "timeout": 1,
                    "compensation": {"actuator": "nope", "action": "x"},
                },
                {"actuator": "exec", "action": "fail", "params": {}},
            ],
        )
        await h.settle()
        # The compensation's actuator does not exist: a permanent failure, escalated at once.
        assert [e.data["try"] for e in h.of(T.COMPENSATION_FAILED, iid)] == [1]
        assert "permanently" in h.of(T.INCIDENT_ESCALATED, iid)[0].data["reason"]


async def test_an_open_breaker_stays_open_across_a_daemon_restart(tmp_path: Path, ledger: Ledger) -> None:
    from healer.execute.breakers import BreakerBoard

    ledger.control(fail_apply=True)
    async with harness(tmp_path, {"breaker": {"fail_max": 1, "reset_timeout": 30}}) as h:
        await h.plan("svc", [ledger.http_action("apply", "B")])
        await h.settle()
        name = f"http:127.0.0.1:{ledger.port}"
        rebuilt = await h.rebuilt()
        assert rebuilt.actuator_breakers == {name: "open"}
        # What the daemon does at start-up with the rebuilt state: a fresh board starts it open.
        board = BreakerBoard(h.executor.settings.breaker, h.loop.submit, h.clock)
        board.restore(rebuilt.actuator_breakers)
        assert board.states() == {name: "open"}
        before = len(h.of(T.BREAKER_OPENED))
        h.executor.breakers = board
        iid = await h.plan("svc", [ledger.http_action("apply", "B")])
        await h.settle()
        assert "is open" in h.of(T.STEP_FAILED, iid)[0].data["error"]
        assert ledger.count("request", "B") == 1
        assert len(h.of(T.BREAKER_OPENED)) == before, "restoring is not a new state change"
