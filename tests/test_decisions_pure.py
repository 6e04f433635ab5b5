"""Analyze and Plan are pure: same snapshot, event and time in, same decisions out."""

from __future__ import annotations

from pathlib import Path

from healer.analyze.analyzer import analyze_deadlines
from healer.analyze.taxonomy import load_taxonomy
from healer.knowledge.events import OBSERVATIONS, Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.loop import Decider
from healer.plan.policy import load_policies

POLICY = """\
policies:
  - name: only-agents
    match: {components: ["agent-*"], failures: [crash]}
    steps:
      - strategy: restart
        max_attempts: 2
        cooldown: 10s
        backoff: 3.0
        max_cooldown: 60s
        verify_timeout: 5s
      - strategy: escalate
"""


class Harness:
    """The control loop's decide step without I/O: apply, then ask the pure stages."""

    def __init__(self, tmp: Path, policy: str = POLICY) -> None:
        (tmp / "p.yaml").write_text(policy)
        self.decider = Decider(
            load_taxonomy(), load_policies([tmp / "p.yaml"]), {}, frozenset({"agent-a", "db"})
        )
        self.state = FleetState()
        self.log: list[RecordedEvent] = []

    def feed(self, ev: Event, now: float) -> list[RecordedEvent]:
        out: list[RecordedEvent] = []
        pending = [ev]
        while pending:
            e = pending.pop(0)
            rec = RecordedEvent(self.state.position + 1, e.type, e.ts, e.component, e.incident, dict(e.data))
            self.state.apply(rec)
            out.append(rec)
            if rec.type in OBSERVATIONS:  # as the loop does: observations are analysed as a batch
                pending.extend(self.decider.observed(self.state, [rec], now))
            else:
                pending.extend(self.decider.follow_ups(self.state, rec, now))
        self.log.extend(out)
        return out

    def types(self, recs: list[RecordedEvent]) -> list[str]:
        return [r.type for r in recs]


def started(h: Harness, comp: str, pid: int, now: float) -> None:
    h.feed(Event(T.PROCESS_STARTED, now, comp, data={"pid": pid, "create_time": now}), now)


def test_crash_is_diagnosed_and_planned_then_repeat_observations_are_folded(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    started(h, "agent-a", 10, 100.0)
    out = h.feed(Event(T.PROCESS_EXITED, 101.0, "agent-a", data={"pid": 10, "signal": "SIGKILL"}), 101.0)
    assert h.types(out) == [T.PROCESS_EXITED, T.INCIDENT_DETECTED, T.INCIDENT_DIAGNOSED, T.INCIDENT_PLANNED]
    assert out[2].data["failure_class"] == "crash"
    planned = out[3].data
    assert planned["actions"] == [{"actuator": "process", "action": "restart", "params": {}, "timeout": 30.0}]
    assert planned["not_before"] == 101.0, "no earlier action: no cooldown"
    # A probe failure for the same outage joins the open incident.
    more = h.feed(Event(T.COMPONENT_FAILED, 101.5, "agent-a", data={"failing": ["http"]}), 101.5)
    assert h.types(more) == [T.COMPONENT_FAILED]
    assert len(h.state.incidents) == 1


def test_cooldown_backs_off_then_escalates(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    started(h, "agent-a", 10, 0.0)
    h.feed(Event(T.PROCESS_EXITED, 1.0, "agent-a", data={"pid": 10, "exit_code": 3}), 1.0)
    iid = h.state.active_incident["agent-a"]
    key = h.state.incidents[iid].plan["idempotency_key"]  # type: ignore[index]
    base = {"step": 0, "action_index": 0, "actuator": "process", "action": "restart"}
    h.feed(Event(T.STEP_STARTED, 1.0, "agent-a", iid, {**base, "idempotency_key": key + "/action-0"}), 1.0)
    h.feed(Event(T.STEP_SUCCEEDED, 1.1, "agent-a", iid, {**base, "idempotency_key": key + "/action-0"}), 1.1)
    started(h, "agent-a", 11, 1.1)
    assert h.state.incidents[iid].phase == "verifying"
    out = h.feed(Event(T.PROCESS_EXITED, 1.3, "agent-a", data={"pid": 11, "exit_code": 3}), 1.3)
    assert h.types(out)[1:] == [T.VERIFICATION_FAILED, T.INCIDENT_DEFERRED]
    held = out[-1].data
    assert held["guardrail"] == "cooldown"
    assert held["next_allowed_at"] == 1.0 + 10.0, "cooldown counts from the last action on the component"
    # On a tick the waiting incident is decided again: still held at 10.9 (and the same block is
    # not recorded twice), planned at 11.0.
    assert h.decider.due(h.state, 10.9) == [iid]
    assert h.decider.revisit(h.state, iid, 10.9) == []
    replanned = h.decider.revisit(h.state, iid, 11.0)
    out = h.feed(replanned[0], 11.0)
    assert h.types(out) == [T.INCIDENT_PLANNED]
    second = out[-1].data
    assert second["attempt"] == 2
    key2 = second["idempotency_key"]
    h.feed(Event(T.STEP_STARTED, 11.0, "agent-a", iid, {**base, "idempotency_key": key2 + "/action-0"}), 11.0)
    out = h.feed(
        Event(T.STEP_FAILED, 11.2, "agent-a", iid, {**base, "idempotency_key": key2 + "/action-0"}), 11.2
    )
    assert h.types(out) == [T.STEP_FAILED, T.INCIDENT_ESCALATED]
    assert "attempts exhausted" in out[-1].data["reason"]
    assert h.state.incidents[iid].status == "escalated"


def test_no_matching_policy_escalates_with_the_rejections(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    started(h, "db", 5, 0.0)
    out = h.feed(Event(T.PROCESS_EXITED, 1.0, "db", data={"pid": 5, "exit_code": 1}), 1.0)
    esc = out[-1]
    assert esc.type == T.INCIDENT_ESCALATED
    assert "no policy handles 'crash' on 'db'" in esc.data["reason"]
    assert esc.data["rejected"][0]["policy"] == "only-agents"
    assert "not in ['agent-*']" in esc.data["rejected"][0]["reason"]


def test_verification_deadline_fails_the_attempt(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    started(h, "agent-a", 10, 0.0)
    h.feed(Event(T.PROCESS_EXITED, 1.0, "agent-a", data={"pid": 10}), 1.0)
    iid = h.state.active_incident["agent-a"]
    key = h.state.incidents[iid].plan["idempotency_key"] + "/action-0"  # type: ignore[index]
    base = {"step": 0, "action_index": 0, "idempotency_key": key}
    h.feed(Event(T.STEP_STARTED, 1.0, "agent-a", iid, base), 1.0)
    h.feed(Event(T.STEP_SUCCEEDED, 2.0, "agent-a", iid, base), 2.0)
    assert analyze_deadlines(h.state, 6.9) == []
    late = analyze_deadlines(h.state, 7.0)
    assert [e.type for e in late] == [T.VERIFICATION_FAILED]
    assert "verification timeout (5.0s)" in late[0].data["reason"]


def test_recovery_without_action_resolves(tmp_path: Path) -> None:
    h = Harness(tmp_path, POLICY.replace("cooldown: 10s", "cooldown: 100s"))
    started(h, "agent-a", 10, 0.0)
    h.feed(Event(T.COMPONENT_FAILED, 1.0, "agent-a", data={"failing": ["http"]}), 1.0)
    # classified as hang: no policy for hang on this test policy -> escalated; recovery then resolves it.
    assert h.state.incidents[1].status == "escalated"
    out = h.feed(Event(T.COMPONENT_RECOVERED, 2.0, "agent-a", data={}), 2.0)
    assert out[-1].type == T.INCIDENT_RESOLVED
    assert out[-1].data["resolution"] == "recovered after escalation"


def test_decisions_are_deterministic(tmp_path: Path) -> None:
    def run() -> list[tuple[str, dict[str, object]]]:
        h = Harness(tmp_path)
        started(h, "agent-a", 10, 0.0)
        h.feed(Event(T.PROCESS_EXITED, 1.0, "agent-a", data={"pid": 10}), 1.0)
        h.feed(Event(T.COMPONENT_FAILED, 1.2, "agent-a", data={"failing": ["x"]}), 1.2)
        return [(r.type, dict(r.data)) for r in h.log]

    assert run() == run()


def test_live_and_rebuilt_state_are_equal(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    started(h, "agent-a", 10, 0.0)
    h.feed(Event(T.PROCESS_EXITED, 1.0, "agent-a", data={"pid": 10}), 1.0)
    rebuilt = FleetState().apply_all(h.log)
    assert rebuilt.digest() == h.state.digest()
    assert rebuilt.snapshot() == h.state.snapshot()
