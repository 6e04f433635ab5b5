"""The planner and its guardrails through the real control loop, store and analyzer (manual clock)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.knowledge.store import rebuild_state
from healer.plan.policy import expand_step, load_policies
from tests.plan_harness import EXECUTE_ACTUATORS, Harness, harness, policies_from

CHAIN = """\
version: 1
policies:
  - name: agents
    match: {components: ["*"], failures: [crash]}
    steps:
      - strategy: restart
        max_attempts: 2
        cooldown: 0s
      - strategy: rollback
        checkpoint: latest
        max_attempts: 1
        cooldown: 0s
      - strategy: escalate
        message: page the agents on-call
"""


async def test_chain_restart_rollback_escalate_advances_with_reasons(tmp_path: Path) -> None:
    async with harness(tmp_path, policies_from(tmp_path, CHAIN)) as h:
        await h.started("a")
        await h.crash("a", 3)
        kinds = []
        for _ in range(3):
            planned = h.last(T.INCIDENT_PLANNED, "a")
            kinds.append(planned.data["strategy"])
            await h.execute("a")
            await h.crash("a", 3)  # dies again during verification
        assert kinds == ["restart", "restart", "rollback"]
        rollback = h.of(T.INCIDENT_PLANNED, "a")[-1].data
        assert [(a["actuator"], a["action"]) for a in rollback["actions"]] == [
            ("process", "stop"),
            ("dr", "restore"),
            ("dr", "compensate"),
            ("process", "start"),
        ]
        assert rollback["actions"][1]["params"] == {"checkpoint": "latest"}
        # Why the chain moved on: step 0's attempts were used, and the last failure is named.
        assert rollback["skipped"][0]["step"] == 0
        assert "2/2 attempts used in this incident" in rollback["skipped"][0]["reason"]
        assert "process exited during verification (exit status 3)" in rollback["skipped"][0]["reason"]
        esc = h.last(T.INCIDENT_ESCALATED, "a").data
        assert esc["policy"] == "agents" and esc["step"] == 2
        assert "step 0: 2 attempt(s), step 1: 1 attempt(s)" in esc["reason"]
        assert "step 1 (rollback): 1/1 attempts used" in esc["reason"]
        assert esc["reason"].endswith("page the agents on-call")
        failures = h.of(T.VERIFICATION_FAILED, "a")
        assert len(failures) == 3 and all("exit status 3" in f.data["reason"] for f in failures)
        # Every decision names the policy set it was made with.
        decisions = [*h.of(T.INCIDENT_PLANNED), h.last(T.INCIDENT_ESCALATED)]
        assert {e.data["policies_hash"] for e in decisions} == {h.loop.decider.policies.hash}


def test_every_strategy_expands_to_its_saga(tmp_path: Path) -> None:
    ps = policies_from(
        tmp_path,
        """\
        version: 1
        policies:
          - name: all
            match: {failures: ["*"]}
            steps:
              - {strategy: restart}
              - {strategy: restart, via: systemd, unit: agent.service}
              - strategy: rollback
                checkpoint: label:ckpt-42
                compensations: [{actuator: http, action: request, params: {url: "http://127.0.0.1:1/undo"}}]
              - strategy: failover
                standby: db-b
                promote: {actuator: http, action: request, params: {url: "http://127.0.0.1:2/promote"}}
              - strategy: failover
                standby: db-b
                fence: false
                promote: {actuator: exec, action: run, params: {argv: [promote]}}
              - {strategy: degrade, flags: {use_small_model: true}, params: {file: /tmp/flags.json}}
              - {strategy: swap_model, link: /srv/model/current, target: /srv/model/v41, restart: true}
              - strategy: compensate
                actions: [{actuator: mqtt_publish, action: publish, params: {topic: t}}]
              - {actuator: process, action: stop, timeout: 3s}
              - actions:
                  - {actuator: process, action: stop}
                  - {actuator: process, action: start, timeout: 9s}
              - {actuator: restart}
              - {strategy: escalate}
        """,
    )
    steps = ps.policies[0].steps

    def calls(i: int) -> list[tuple[str, str, dict[str, object]]]:
        return [(a["actuator"], a["action"], a["params"]) for a in expand_step(steps[i])]

    assert calls(0) == [("process", "restart", {})]
    assert calls(1) == [("systemd", "restart", {"unit": "agent.service"})]
    assert calls(2) == [
        ("process", "stop", {}),
        ("dr", "restore", {"checkpoint": "label:ckpt-42"}),
        ("dr", "compensate", {}),
        ("http", "request", {"url": "http://127.0.0.1:1/undo"}),
        ("process", "start", {}),
    ]
    assert calls(3) == [
        ("process", "stop", {}),
        ("http", "request", {"url": "http://127.0.0.1:2/promote", "standby": "db-b"}),
    ]
    assert calls(4) == [("exec", "run", {"argv": ["promote"], "standby": "db-b"})]
    assert calls(5) == [
        ("feature_flag", "set", {"flags": {"use_small_model": True}, "file": "/tmp/flags.json"})
    ]
    assert calls(6) == [
        ("symlink_swap", "swap", {"root": "/srv/model", "link": "current", "to": "v41"}),
        ("process", "restart", {}),
    ]
    assert calls(7) == [("mqtt_publish", "publish", {"topic": "t"})]
    assert calls(8) == [("process", "stop", {})]
    assert expand_step(steps[8])[0]["timeout"] == 3.0
    assert [a["timeout"] for a in expand_step(steps[9])] == [30.0, 9.0]
    assert steps[10].kind == "restart" and calls(10) == [("process", "restart", {})]
    assert calls(11) == []


COOLDOWN = """\
version: 1
policies:
  - name: p
    match: {failures: [crash]}
    steps:
      - strategy: restart
        max_attempts: 4
        cooldown: 10s
        backoff: 2
        max_cooldown: 30s
      - strategy: escalate
"""


async def test_cooldown_with_backoff_is_recorded_and_replanned_on_time(tmp_path: Path) -> None:
    async with harness(tmp_path, policies_from(tmp_path, COOLDOWN)) as h:
        await h.started("a")
        await h.crash("a")
        assert h.phase("a") == "planned"  # nothing done on a yet: no cooldown
        waits = []
        for _ in range(3):
            await h.execute("a")
            done_at = h.clock.wall()
            await h.crash("a")
            deferred = h.last(T.INCIDENT_DEFERRED, "a").data
            assert deferred["guardrail"] == "cooldown"
            waits.append(deferred["next_allowed_at"] - done_at)
            await h.tick(waits[-1] - 0.5)
            assert h.phase("a") == "deferred", "not before the next allowed time"
            await h.tick(0.5)
            assert h.phase("a") == "planned"
        assert waits == [10.0, 20.0, 30.0]  # 10, 10*2, min(10*4, 30)
        # Re-checking on ticks records nothing new while the answer is the same.
        assert len(h.of(T.INCIDENT_DEFERRED, "a")) == 3
        assert h.of(T.INCIDENT_DEFERRED, "a")[0].data["state"]["attempts_used"] == 1


WINDOW = """\
version: 1
policies:
  - name: p
    match: {failures: [crash]}
    steps:
      - strategy: restart
        max_attempts: 2
        window: 1h
        cooldown: 0s
      - strategy: escalate
"""


async def test_attempts_per_window_count_across_incidents(tmp_path: Path) -> None:
    async with harness(tmp_path, policies_from(tmp_path, WINDOW)) as h:
        await h.started("a")
        for _ in range(2):
            await h.crash("a")
            await h.execute("a")
            await h.recovered("a")
            assert h.state.active_for("a") is None, "resolved"
            await h.tick(60)
        await h.crash("a")  # third incident within the hour: the window is used up
        esc = h.last(T.INCIDENT_ESCALATED, "a").data
        assert "2/2 attempts used in the last 3600s on a" in esc["reason"]
        assert len(h.of(T.STEP_STARTED, "a")) == 2
        # An hour after the first attempt, one attempt is free again: a new incident restarts.
        await h.recovered("a")
        await h.tick(3600)
        await h.crash("a")
        assert h.phase("a") == "planned"


BUDGET = """\
version: 1
budget:
  max_concurrent: 2
policies:
  - name: p
    match: {failures: [crash]}
    steps:
      - {strategy: restart, cooldown: 0s}
      - {strategy: escalate}
"""


async def test_budget_first_come_first_served_never_more_than_two(tmp_path: Path) -> None:
    names = [f"c{i}" for i in range(6)]
    async with harness(tmp_path, policies_from(tmp_path, BUDGET), {n: {} for n in names}) as h:
        for n in names:
            await h.started(n)
        for n in names:
            await h.crash(n)
        assert [n for n in names if h.phase(n) == "planned"] == ["c0", "c1"]
        waiting = h.of(T.INCIDENT_DEFERRED)
        assert [e.component for e in waiting] == names[2:]
        assert waiting[-1].data["guardrail"] == "budget.max_concurrent"
        assert waiting[-1].data["state"]["in_flight"] == ["c0", "c1"]
        assert waiting[-1].data["state"]["queued_ahead"] == ["c2", "c3", "c4"]
        order = []
        while len(order) < len(names):
            flying = [n for n in names if h.phase(n) in ("planned", "acting", "verifying")]
            assert len(flying) <= 2
            n = flying[0]
            await h.execute(n)
            await h.recovered(n)
            order.append(n)
            await h.tick()
        assert order == names  # in the order they failed
        assert all(i.status == "resolved" for i in h.state.incidents.values())


async def test_max_actions_per_window_and_min_healthy(tmp_path: Path) -> None:
    ps = policies_from(
        tmp_path,
        """\
        version: 1
        budget: {max_actions: 3, window: 10m, min_healthy: 0.5, group_by: tier}
        policies:
          - name: p
            match: {failures: [crash]}
            steps: [{strategy: restart, cooldown: 0s}, {strategy: escalate}]
        """,
    )
    comps = {"w1": {"tier": "web"}, "w2": {"tier": "web"}, "w3": {"tier": "web"}, "x": {}, "y": {}}
    async with harness(tmp_path, ps, comps) as h:
        for n in comps:
            await h.started(n)
            await h.recovered(n)
        # min_healthy: one web node down leaves 2/3 healthy: allowed.
        await h.crash("w1")
        assert h.phase("w1") == "planned"
        await h.execute("w1")
        await h.recovered("w1")
        # w2 down leaves 2/3 healthy: allowed; w3 down too leaves 1/3, below half: no automatic action.
        await h.crash("w2")
        assert h.phase("w2") == "planned"
        await h.crash("w3")
        blocked = h.last(T.INCIDENT_DEFERRED, "w3").data
        assert blocked["guardrail"] == "budget.min_healthy"
        assert blocked["state"] == {
            "group": "web",
            "healthy": 1,
            "members": 3,
            "fraction": 0.3333,
            "min_healthy": 0.5,
        }
        assert blocked["next_allowed_at"] is None
        # x (no group) goes through min_healthy, and uses the third action of the window.
        await h.crash("x")
        assert h.phase("x") == "planned"
        await h.execute("x")
        await h.recovered("x")
        await h.crash("y")
        rate = h.last(T.INCIDENT_DEFERRED, "y").data
        assert rate["guardrail"] == "budget.max_actions"
        assert rate["state"]["used"] == 3
        first_plan = h.of(T.INCIDENT_PLANNED)[0].ts
        assert rate["next_allowed_at"] == first_plan + 600
        await h.tick(600)
        assert h.phase("y") == "planned"


async def test_silence_blocks_until_it_ends_and_resumes(tmp_path: Path) -> None:
    async with harness(tmp_path, policies_from(tmp_path, BUDGET)) as h:
        await h.started("a")
        now = h.clock.wall()
        await h.submit(
            Event(
                T.SILENCE_CREATED,
                now,
                "a",
                None,
                {
                    "silence": 1,
                    "component": "a",
                    "until": now + 1800,
                    "reason": "migrating",
                    "by": {"uid": 0},
                },
            )
        )
        await h.crash("a")
        d = h.last(T.INCIDENT_DEFERRED, "a").data
        assert d["guardrail"] == "silence" and d["next_allowed_at"] == now + 1800
        assert "migrating" in d["reason"]
        await h.tick(1799)
        assert h.phase("a") == "deferred" and not h.of(T.STEP_STARTED)
        await h.tick(1)
        assert h.phase("a") == "planned"


async def test_maintenance_windows_cron_and_explicit(tmp_path: Path) -> None:
    # 2023-11-14T22:13:20Z is the harness's start; Tuesday.
    ps = policies_from(
        tmp_path,
        """\
        version: 1
        timezone: Europe/Berlin
        maintenance:
          - name: nightly
            components: ["db*"]
            cron: "0 23 * * *"
            duration: 2h
          - name: migration
            components: ["web"]
            start: 2023-11-15T08:00:00
            end: 2023-11-15T09:00:00
        policies:
          - name: p
            match: {failures: [crash]}
            steps: [{strategy: restart, cooldown: 0s}, {strategy: escalate}]
        """,
    )
    start = dt.datetime(2023, 11, 14, 22, 30, tzinfo=dt.UTC).timestamp()  # 23:30 in Berlin
    async with harness(tmp_path, ps, {"db1": {}, "web": {}}, start=start) as h:
        await h.started("db1")
        await h.crash("db1")
        d = h.last(T.INCIDENT_DEFERRED, "db1").data
        assert d["guardrail"] == "maintenance" and d["state"]["windows"] == ["nightly"]
        assert (
            d["next_allowed_at"] == dt.datetime(2023, 11, 15, 0, 0, tzinfo=dt.UTC).timestamp()
        )  # 01:00 Berlin
        await h.tick(5399)  # 00:59:59 Berlin
        assert h.phase("db1") == "deferred"
        await h.tick(1)
        assert h.phase("db1") == "planned"
        await h.started("web")
        h.clock.advance(dt.datetime(2023, 11, 15, 7, 30, tzinfo=dt.UTC).timestamp() - h.clock.wall())
        await h.crash("web")  # 08:30 Berlin: inside the explicit window
        assert h.last(T.INCIDENT_DEFERRED, "web").data["state"]["windows"] == ["migration"]
        await h.tick(1800)
        assert h.phase("web") == "planned"


APPROVAL = """\
version: 1
policies:
  - name: p
    match: {failures: [crash]}
    steps:
      - strategy: restart
        cooldown: 0s
        approval: {timeout: 10m, default: %s}
      - strategy: escalate
"""


async def _request(h: Harness, comp: str) -> int:
    await h.started(comp)
    await h.crash(comp)
    req = h.last(T.APPROVAL_REQUESTED, comp).data
    assert h.phase(comp) == "awaiting_approval"
    return int(req["approval"])


async def test_approval_granted_denied_and_timeouts(tmp_path: Path) -> None:
    async with harness(
        tmp_path, policies_from(tmp_path, APPROVAL % "deny"), {"a": {}, "b": {}, "c": {}}
    ) as h:
        req_a = await _request(h, "a")
        ad = h.last(T.APPROVAL_REQUESTED, "a").data
        assert ad["default"] == "deny" and ad["deadline"] == h.clock.wall() + 600
        assert ad["actions"] == [{"actuator": "process", "action": "restart", "params": {}, "timeout": 30.0}]
        who = {"uid": 1000, "user": "ops", "pid": 1}
        await h.submit(
            Event(T.APPROVAL_GRANTED, h.clock.wall(), "a", 1, {"approval": req_a, "by": who, "reason": "ok"})
        )
        assert h.phase("a") == "planned"
        assert h.last(T.INCIDENT_PLANNED, "a").data["approval"] == req_a

        req_b = await _request(h, "b")
        await h.submit(
            Event(
                T.APPROVAL_DENIED, h.clock.wall(), "b", 2, {"approval": req_b, "by": who, "reason": "not now"}
            )
        )
        esc = h.last(T.INCIDENT_ESCALATED, "b").data
        assert "approval 2 denied by ops: not now" in esc["reason"]
        assert not h.of(T.INCIDENT_PLANNED, "b")

        await _request(h, "c")
        await h.tick(599)
        assert h.phase("c") == "awaiting_approval"
        await h.tick(1)
        exp = h.last(T.APPROVAL_EXPIRED, "c").data
        assert exp["outcome"] == "denied" and exp["by"] == {"timeout": True}
        assert "timeout (default deny)" in h.last(T.INCIDENT_ESCALATED, "c").data["reason"]
        assert h.state.approvals[3].status == "expired"


async def test_approval_timeout_with_default_approve_acts(tmp_path: Path) -> None:
    async with harness(tmp_path, policies_from(tmp_path, APPROVAL % "approve")) as h:
        await _request(h, "a")
        await h.tick(600)
        assert h.last(T.APPROVAL_EXPIRED, "a").data["outcome"] == "granted"
        assert h.phase("a") == "planned"


async def test_pending_approval_is_cancelled_when_the_component_recovers(tmp_path: Path) -> None:
    async with harness(tmp_path, policies_from(tmp_path, APPROVAL % "approve")) as h:
        aid = await _request(h, "a")
        await h.recovered("a")
        assert h.state.approvals[aid].status == "cancelled"
        await h.tick(600)
        assert not h.of(T.APPROVAL_EXPIRED), "a cancelled approval never times out into an action"
        assert not h.of(T.INCIDENT_PLANNED)


CONDITIONS = """\
version: 1
timezone: Europe/Berlin
policies:
  - name: oom-at-night
    priority: 10
    match: {failures: [crash]}
    when:
      evidence: {exit_code: {in: [137, 9]}}
      time: {between: ["22:00", "06:00"]}
    steps: [{strategy: escalate, message: "night OOM: leave it for the day shift"}]
  - name: flappy
    priority: 5
    match: {failures: [crash]}
    when:
      history: {within: 1h, incidents: {gte: 3}}
    steps: [{strategy: escalate, message: "third incident this hour"}]
  - name: default
    match: {failures: [crash]}
    steps:
      - strategy: restart
        cooldown: 0s
        when: {time: {days: [mon, tue, wed, thu, fri]}}
      - {actuator: process, action: start, cooldown: 0s}
      - {strategy: escalate}
"""


async def test_conditions_evidence_time_history_and_precedence(tmp_path: Path) -> None:
    # Saturday 2023-11-18 12:00 Berlin.
    start = dt.datetime(2023, 11, 18, 11, 0, tzinfo=dt.UTC).timestamp()
    async with harness(tmp_path, policies_from(tmp_path, CONDITIONS), start=start) as h:
        await h.started("a")
        await h.crash("a", 137)  # an OOM kill, but at noon
        planned = h.last(T.INCIDENT_PLANNED, "a").data
        assert planned["policy"] == "default"
        assert [r["policy"] for r in planned["rejected"]] == ["oom-at-night", "flappy"]
        assert (
            "local time 12:00 (Europe/Berlin) is not between 22:00 and 06:00"
            in planned["rejected"][0]["reason"]
        )
        assert "1 incidents in the last 3600s" in planned["rejected"][1]["reason"]
        # Saturday: the weekday-only restart step is passed over, with the reason.
        assert planned["step"] == 1 and planned["strategy"] == "run"
        assert "sat is not one of" in planned["skipped"][0]["reason"]
        await h.execute("a")
        await h.recovered("a")
        await h.crash("a", 1)
        await h.execute("a")
        await h.recovered("a")
        await h.crash("a", 1)  # third incident within the hour
        assert "third incident this hour" in h.last(T.INCIDENT_ESCALATED, "a").data["reason"]
        await h.recovered("a")
        h.clock.advance(10 * 3600)  # 22:00 Berlin
        await h.crash("a", 137)
        esc = h.last(T.INCIDENT_ESCALATED, "a").data
        assert esc["policy"] == "oom-at-night"


async def test_stable_for_needs_health_to_last(tmp_path: Path) -> None:
    ps = policies_from(
        tmp_path,
        """\
        version: 1
        policies:
          - name: p
            match: {failures: [crash]}
            steps:
              - {strategy: restart, cooldown: 0s, verify: {timeout: 30s, stable_for: 20s}}
              - {strategy: escalate}
        """,
    )
    async with harness(tmp_path, ps) as h:
        await h.started("a")
        await h.crash("a")
        await h.execute("a")
        await h.recovered("a")
        await h.tick(19)
        assert h.phase("a") == "verifying" and not h.of(T.INCIDENT_RESOLVED)
        await h.failed("a")  # flaps within the stable window
        assert "before staying healthy for 20s" in h.last(T.VERIFICATION_FAILED, "a").data["reason"]
        await h.execute("a")
        await h.recovered("a")
        await h.tick(20)
        assert h.last(T.INCIDENT_RESOLVED, "a").data["resolution"] == "remediated"
        assert h.last(T.INCIDENT_VERIFIED, "a").data["stable_for"] == 20.0


async def test_counters_survive_rebuild_and_policy_reload(tmp_path: Path) -> None:
    ps = policies_from(tmp_path, COOLDOWN)
    state_dir = tmp_path / "state"
    async with harness(tmp_path, ps, state_dir=state_dir) as h:
        await h.started("a")
        await h.crash("a")
        for _ in range(2):
            await h.execute("a")
            await h.crash("a")
            await h.tick(60)
        live = h.state.digest()
        clock_at = h.clock.wall()
    # A new daemon: the state is the fold of the log, the counters with it.
    reloaded = policies_from(tmp_path, COOLDOWN.replace("max_cooldown: 30s", "max_cooldown: 31s"))
    assert reloaded.hash != ps.hash
    async with harness(tmp_path, reloaded, state_dir=state_dir, start=clock_at) as h2:
        assert h2.state.digest() == live
        assert h2.state.incidents[1].attempts == {0: 2}
        await h2.execute("a")
        await h2.crash("a")
        await h2.tick(60)
        await h2.execute("a")
        await h2.crash("a")
        esc = h2.last(T.INCIDENT_ESCALATED, "a").data
        assert "step 0: 4 attempt(s)" in esc["reason"], "attempts 3 and 4 only: the count went on"
        assert esc["policies_hash"] == reloaded.hash
        rebuilt = await rebuild_state(h2.store)
        assert rebuilt.digest() == h2.state.digest()


async def test_no_policy_escalates_with_rejections(tmp_path: Path) -> None:
    ps = policies_from(
        tmp_path,
        """\
        version: 1
        policies:
          - name: only-db
            match: {components: ["db-*"], failures: [crash]}
            steps: [{strategy: restart}]
          - name: only-labelled
            match: {labels: {tier: agents}, failures: [crash]}
            steps: [{strategy: restart}]
          - name: only-hang
            match: {failures: [hang]}
            steps: [{strategy: restart}]
        """,
    )
    async with harness(tmp_path, ps, {"a": {"tier": "web"}}) as h:
        await h.started("a")
        await h.crash("a")
        esc = h.last(T.INCIDENT_ESCALATED, "a").data
        assert esc["reason"] == "no policy handles 'crash' on 'a'"
        assert [r["reason"] for r in esc["rejected"]] == [
            "component 'a' not in ['db-*']",
            "label tier='agents' not set on 'a'",
            "failure 'crash' not in ['hang']",
        ]


def test_precedence_priority_then_file_then_order(tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    body = (
        "  - name: {n}\n    priority: {p}\n    match: {{failures: [crash]}}\n"
        "    steps: [{{strategy: escalate}}]\n"
    )
    (d / "b.yaml").write_text("policies:\n" + body.format(n="b1", p=0) + body.format(n="b2", p=5))
    (d / "a.yaml").write_text("policies:\n" + body.format(n="a1", p=0) + body.format(n="a2", p=0))
    ps = load_policies([d], installed=EXECUTE_ACTUATORS)
    assert [p.name for p in ps.policies] == ["b2", "a1", "a2", "b1"]


async def test_starter_agents_policy_never_restarts_more_than_six_times_an_hour(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    ps = load_policies([root / "policies"])  # the shipped set, checked against the installed actuators
    async with harness(tmp_path, ps, {"agent": {}}) as h:
        await h.started("agent")
        await h.crash("agent")
        while h.state.active_for("agent") is not None and h.state.active_for("agent").is_open:  # type: ignore[union-attr]
            if h.phase("agent") == "deferred":
                deferred = h.last(T.INCIDENT_DEFERRED, "agent").data
                assert deferred["guardrail"] == "cooldown"
                await h.tick(deferred["next_allowed_at"] - h.clock.wall())
                continue
            await h.execute("agent")
            await h.crash("agent", 1)
        gaps = [b.ts - a.ts for a, b in zip(h.of(T.STEP_STARTED), h.of(T.STEP_STARTED)[1:], strict=False)]
        assert len(h.of(T.STEP_STARTED)) == 6
        assert gaps == [5.0, 10.0, 60.0, 60.0, 60.0]
        esc = h.last(T.INCIDENT_ESCALATED, "agent").data
        assert esc["policy"] == "agents-restart" and "restarts did not bring the agent back" in esc["reason"]
        # Back by itself, then down again ten minutes later: no seventh restart within the hour.
        await h.recovered("agent")
        await h.tick(600)
        await h.crash("agent")
        assert len(h.of(T.STEP_STARTED)) == 6
        second = h.last(T.INCIDENT_ESCALATED, "agent").data
        assert "6/6 attempts used in the last 3600s on agent" in second["reason"]


async def test_a_planner_bug_escalates_instead_of_stopping_the_loop(tmp_path: Path, monkeypatch: Any) -> None:
    from healer.plan import guardrails

    def broken(*_: object) -> object:
        raise RuntimeError("simulated planner bug")

    async with harness(tmp_path, policies_from(tmp_path, COOLDOWN)) as h:
        monkeypatch.setattr(guardrails, "check_silence", broken)
        await h.started("a")
        await h.crash("a")
        esc = h.last(T.INCIDENT_ESCALATED, "a").data
        assert esc["reason"] == "planner error, no automatic action: RuntimeError: simulated planner bug"
        monkeypatch.undo()
        await h.started("b")  # the loop is still alive and deciding
        assert h.last(T.PROCESS_STARTED, "b")
