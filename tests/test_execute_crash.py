"""kill -9 the daemon between an action's intent and its outcome, restart it: nothing runs twice.

A real ``healer run`` process SIGKILLs itself at a named point (``execute.fault_exit_at``, set
through ``HEALER_EXECUTE__FAULT_EXIT_AT``); a second daemon on the same state directory must
finish or escalate every saga. The external ledger (tests/ledger.py) counts every effect: the
``http`` actions are idempotent (the ledger honours their Idempotency-Key), the ``exec``
actions are not (each run appends), and ``process.restart`` brings the component back so the
incident can verify and resolve.

The saga is seeded into the store as the planner would have recorded it (incident detected,
diagnosed, planned), since the policy language that expands strategies into several actions
belongs to the Plan stage.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.knowledge.store import SQLiteEventStore
from tests.execute_harness import harness
from tests.helpers import agent_component, events, free_port, running_daemon, wait_for, write_config
from tests.ledger import Ledger

FAST = """\
execute:
  compensation:
    attempts: 3
    wait_initial: 0.05
    wait_max: 0.1
    wait_jitter: 0
"""
RESTART = {"actuator": "process", "action": "restart", "params": {}, "timeout": 10}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path, free_port())
    led.start()
    try:
        yield led
    finally:
        led.stop()


def seed(state_dir: Path, component: str, actions: list[dict[str, Any]]) -> None:
    async def go() -> None:
        store = await SQLiteEventStore.open(state_dir)
        now = time.time()
        await store.append(
            [
                Event(
                    T.INCIDENT_DETECTED,
                    now,
                    component,
                    1,
                    {"observation": "test", "evidence": {"seeded": True}},
                ),
                Event(
                    T.INCIDENT_DIAGNOSED,
                    now,
                    component,
                    1,
                    {"failure_class": "crash", "root_cause": component, "symptoms": [], "evidence": {}},
                ),
                Event(
                    T.INCIDENT_PLANNED,
                    now,
                    component,
                    1,
                    {
                        "policy": "restart-then-escalate",
                        "step": 0,
                        "strategy": "restart",
                        "actions": actions,
                        "attempt": 1,
                        "max_attempts": 3,
                        "not_before": now,
                        "cooldown": 0,
                        "timeout": 10,
                        "verify_timeout": 10,
                        "idempotency_key": "incident-1/step-0/attempt-1",
                    },
                ),
            ]
        )
        await store.close()

    asyncio.run(go())


def ending(state: Path) -> list[dict[str, Any]]:
    return [
        e
        for e in events(state, "incident.")
        if e["incident"] == 1 and e["type"] in ("incident.resolved", "incident.escalated")
    ]


def crash_then_recover(tmp_path: Path, ledger: Ledger, actions: list[dict[str, Any]], fault: str) -> Path:
    cfg = write_config(tmp_path, agent_component("svc", free_port()), extra=FAST)
    state = tmp_path / "state"
    seed(state, "svc", actions)
    with running_daemon(cfg, env={"HEALER_EXECUTE__FAULT_EXIT_AT": fault}) as d:
        assert d.proc.wait(30) == -signal.SIGKILL, d.output()
        assert "fault injection: SIGKILL at" in d.output()
    assert not ending(state), "the first daemon died before the saga ended"
    with running_daemon(cfg) as d2:
        wait_for(lambda: ending(state), timeout=30, what=f"saga resolved or escalated after {fault}")
        stop_after_startup(d2, state)
    assert events(state, "actuators.loaded")
    return state


def stop_after_startup(d: Any, state: Path) -> None:
    # A monitor transition of this run: the daemon is past start-up and handles SIGTERM.
    started_at = events(state, "daemon.started")[-1]["position"]
    wait_for(lambda: [e for e in events(state, "component.") if e["position"] > started_at])
    assert d.stop() == 0, d.output()


def no_effect_twice(ledger: Ledger) -> None:
    seen = Counter((e["op"], e["name"], e["key"]) for e in ledger.entries() if e["op"] != "request")
    assert all(n == 1 for n in seen.values()), seen


def saga(ledger: Ledger) -> list[dict[str, Any]]:
    return [ledger.http_action("apply", "X"), ledger.exec_action("apply", "Y"), RESTART]


@pytest.mark.parametrize(
    ("fault", "x_requests", "resumed"),
    [
        ("after-intent:http", 1, True),  # idempotent, not yet called: run once, with its key
        ("after-effect:http", 2, True),  # idempotent, already done: run again, the key dedups
        ("after-effect:exec", 1, False),  # not idempotent, done: verified, not run again
        ("after-outcome:exec", 1, False),  # outcome recorded: the saga continues at the next action
        ("before-intent:exec", 1, False),  # nothing recorded for exec yet: it starts normally
    ],
)
def test_killed_mid_saga_the_restarted_daemon_finishes_it_without_repeating_effects(
    tmp_path: Path, ledger: Ledger, fault: str, x_requests: int, resumed: bool
) -> None:
    state = crash_then_recover(tmp_path, ledger, saga(ledger), fault)
    no_effect_twice(ledger)
    assert ledger.count("apply", "X") == 1 and ledger.count("apply", "Y") == 1
    assert ledger.count("request", "X") == x_requests
    end = ending(state)
    assert [e["type"] for e in end] == ["incident.resolved"], end
    assert bool(events(state, "step.resumed")) is resumed
    keys = [e["data"]["idempotency_key"] for e in events(state, "step.started")]
    assert len(keys) == len(set(keys)) == 3, "each action's intent is recorded once, whatever the crash"
    succeeded = {e["data"]["action_index"]: e["data"] for e in events(state, "step.succeeded")}
    assert sorted(succeeded) == [0, 1, 2]
    if fault == "after-effect:exec":
        assert succeeded[1]["recovered"] == "verified"
    if fault == "after-intent:http":
        x = [e for e in ledger.entries() if e["name"] == "X"]
        assert x[-1]["key"] == "incident-1/step-0/attempt-1/action-0", "re-run with the same key"


def test_killed_after_a_non_idempotent_intent_it_is_not_run_but_escalated_with_the_uncertainty(
    tmp_path: Path, ledger: Ledger
) -> None:
    state = crash_then_recover(tmp_path, ledger, saga(ledger), "after-intent:exec")
    assert ledger.count("apply", "Y") == 0, "never re-run blindly"
    assert ledger.count("apply", "X") == 1
    end = ending(state)
    assert [e["type"] for e in end] == ["incident.escalated"]
    reason = end[0]["data"]["reason"]
    assert "uncertain whether exec.run" in reason and "NOT in place" in reason, reason
    assert "done before it: incident-1/step-0/attempt-1/action-0" in reason
    abandoned = events(state, "step.abandoned")
    assert [a["data"]["idempotency_key"] for a in abandoned] == ["incident-1/step-0/attempt-1/action-1"]
    assert not events(state, "process.started", "svc"), "the saga stopped: the restart never ran"


def compensating_saga(ledger: Ledger) -> list[dict[str, Any]]:
    return [
        ledger.http_action("apply", "X", compensation=ledger.http_action("undo", "X")),
        ledger.exec_action("apply", "Y", compensation=ledger.exec_action("undo", "Y")),
        ledger.exec_action("fail", "Z"),
    ]


@pytest.mark.parametrize(
    ("fault", "undo_x_requests"),
    [
        ("after-compensation-effect:exec", 1),  # not idempotent, done: verified, the next one runs
        ("after-compensation-intent:http", 1),  # idempotent, not called: run with its key
    ],
)
def test_killed_during_compensation_the_restarted_daemon_finishes_it_once(
    tmp_path: Path, ledger: Ledger, fault: str, undo_x_requests: int
) -> None:
    state = crash_then_recover(tmp_path, ledger, compensating_saga(ledger), fault)
    no_effect_twice(ledger)
    assert ledger.effects() == [("apply", "X"), ("apply", "Y"), ("undo", "Y"), ("undo", "X")]
    assert ledger.count("request", "X") == 1 + undo_x_requests
    compensated = events(state, "saga.compensated")
    assert len(compensated) == 1 and compensated[0]["data"]["plan_key"] == "incident-1/step-0/attempt-1"
    # The planner's next attempt (a plain restart) ran only after the compensation, and healed it.
    started2 = [e for e in events(state, "step.started") if e["data"]["attempt"] == 2]
    assert started2 and started2[0]["position"] > compensated[0]["position"]
    assert [e["type"] for e in ending(state)] == ["incident.resolved"]


def test_killed_after_a_non_idempotent_compensation_intent_it_escalates_instead_of_guessing(
    tmp_path: Path, ledger: Ledger
) -> None:
    state = crash_then_recover(tmp_path, ledger, compensating_saga(ledger), "after-compensation-intent:exec")
    assert ledger.count("undo", "Y") == 0 and ledger.count("undo", "X") == 0
    end = ending(state)
    assert [e["type"] for e in end] == ["incident.escalated"]
    assert "uncertain whether compensation exec.run" in end[0]["data"]["reason"]
    assert events(state, "compensation.abandoned")
    assert not [e for e in events(state, "step.started") if e["data"]["attempt"] == 2], (
        "the planned next attempt never started on an escalated incident"
    )


def test_a_plan_decided_before_recovery_waits_behind_it_and_does_not_run_on_the_escalation(
    tmp_path: Path, ledger: Ledger
) -> None:
    """A restarted daemon's first batches may plan the next attempt (its cooldown ran out while no
    daemon ran) before start-up reaches recovery. CI once saw that plan dispatched first: recovery
    then took the incident as being worked on, the uncertain compensation was never settled, and
    the new attempt "resolved" an incident whose saga was half undone. Here the plan comes first
    for certain: it must wait, and not run once recovery has escalated."""
    cfg = write_config(tmp_path, agent_component("svc", free_port()), extra=FAST)
    state = tmp_path / "state"
    seed(state, "svc", compensating_saga(ledger))
    with running_daemon(cfg, env={"HEALER_EXECUTE__FAULT_EXIT_AT": "after-compensation-intent:exec"}) as d:
        assert d.proc.wait(30) == -signal.SIGKILL, d.output()

    async def restarted() -> list[str]:
        async with harness(tmp_path, resume_first=True) as h:
            assert h.state.incidents[1].compensating is not None
            await h.plan("svc", [RESTART], attempt=2, incident=1)  # dispatched, so held
            h.executor.recover(h.state)
            await h.settle()
            return h.types(1)

    after = asyncio.run(restarted())
    assert after[-1] == "incident.escalated", after
    assert "compensation.abandoned" in after
    assert (
        "uncertain whether compensation exec.run" in events(state, "incident.escalated")[-1]["data"]["reason"]
    )
    assert not [e for e in events(state, "step.started") if e["data"]["attempt"] == 2]
    assert ledger.count("undo", "Y") == 0 and ledger.count("undo", "X") == 0


def test_sigterm_during_a_non_idempotent_action_leaves_it_for_the_next_start_to_verify(
    tmp_path: Path, ledger: Ledger
) -> None:
    slow = ledger.exec_action("apply", "Y")
    slow["params"]["argv"] += ["--sleep", "5"]
    cfg = write_config(tmp_path, agent_component("svc", free_port()), extra=FAST)
    cfg.write_text(cfg.read_text().replace("shutdown_timeout: 5s", "shutdown_timeout: 0.5s"))
    state = tmp_path / "state"
    seed(state, "svc", [slow, RESTART])
    with running_daemon(cfg) as d:
        wait_for(lambda: events(state, "step.started"), what="the slow action under way")
        stop_after_startup(d, state)
    assert not events(state, "step.interrupted"), "not safe to retry: no interruption recorded"
    assert ledger.count("apply", "Y") == 0, "the cut-short command was killed before its effect"
    with running_daemon(cfg) as d2:
        end = wait_for(lambda: ending(state), timeout=30)
        stop_after_startup(d2, state)
    assert [e["type"] for e in end] == ["incident.escalated"]
    assert "NOT in place" in end[0]["data"]["reason"]
    assert ledger.count("apply", "Y") == 0
