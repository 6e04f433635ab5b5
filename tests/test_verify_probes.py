"""A step's verification names the probes that must pass (``verify.probes``), and for how long:
the loader checks the names against the config, and Analyze judges the step by those probes only
(the real control loop, store and analyzer, manual clock)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from healer.config import component_probes, load_config
from healer.errors import ConfigError, PolicyError
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.knowledge.store import rebuild_state
from healer.plan.policy import Member, fleet_of, load_policies
from tests.helpers import healer_cli
from tests.plan_harness import EXECUTE_ACTUATORS, Harness, harness, policies_from

NAMED = """\
version: 1
policies:
  - name: p
    match: {failures: [crash, hang]}
    steps:
      - {strategy: restart, cooldown: 0s, max_attempts: 1, verify: {probes: [http], timeout: 10s}}
      - {strategy: escalate}
"""


async def health(h: Harness, comp: str, kind: str, **statuses: str) -> None:
    """A component event from the Monitor, carrying every probe's status."""
    probes = {name: {"status": st, "type": "tcp"} for name, st in statuses.items()}
    data: dict[str, object] = {"probes": probes}
    failing = sorted(n for n, st in statuses.items() if st == "failing")
    if failing:
        data["failing"] = failing
    await h.submit(Event(kind, h.clock.wall(), comp, data=data))


async def probe(h: Harness, comp: str, name: str, status: str, previous: str = "unknown") -> None:
    data = {"probe": name, "previous": previous, "status": status, "type": "http"}
    await h.submit(Event(T.PROBE_TRANSITIONED, h.clock.wall(), comp, data=data))


async def test_named_probe_passing_verifies_while_another_still_fails(tmp_path: Path) -> None:
    async with harness(tmp_path, policies_from(tmp_path, NAMED)) as h:
        await h.started("a")
        await health(h, "a", T.COMPONENT_RECOVERED, http="passing", extra="passing")
        await h.crash("a")
        assert h.last(T.INCIDENT_PLANNED, "a").data["verify_probes"] == ["http"]
        await h.execute("a")  # restart: process.started, every probe starts over
        assert h.state.component("a").probes == {
            "http": ("unknown", h.clock.wall()),
            "extra": ("unknown", h.clock.wall()),
        }
        h.clock.advance(0.2)
        await health(h, "a", T.COMPONENT_FAILED, http="unknown", extra="failing")
        assert h.phase("a") == "verifying", "a probe the step does not name cannot fail it"
        h.clock.advance(0.3)
        await probe(h, "a", "http", "passing")
        verified = h.last(T.INCIDENT_VERIFIED, "a").data
        assert verified["probes"] == ["http"] and verified["still_failing"] == ["extra"]
        assert verified["verified_after"] == pytest.approx(0.5)
        assert h.last(T.INCIDENT_RESOLVED, "a").data["resolution"] == "remediated"
        assert len(h.of(T.INCIDENT_DETECTED, "a")) == 1, (
            "what was seen while the incident was open is not new"
        )
        # The component still fails `extra`; the named probe failing again is a new failure.
        await probe(h, "a", "http", "failing", previous="passing")
        assert len(h.of(T.INCIDENT_DETECTED, "a")) == 2
        evidence = h.last(T.INCIDENT_DIAGNOSED, "a").data["evidence"]
        assert evidence["failing_probes"] == ["extra", "http"]


async def test_named_probe_failing_fails_verification_and_the_chain_advances(tmp_path: Path) -> None:
    ps = policies_from(tmp_path, NAMED.replace("probes: [http]", "probes: [extra]"))
    async with harness(tmp_path, ps) as h:
        await h.started("a")
        await h.crash("a")
        await h.execute("a")
        h.clock.advance(0.5)
        # The unnamed probe passes, the named one fails: under the old rule (every probe) the
        # component is failing either way; here only `extra` counts.
        await health(h, "a", T.COMPONENT_FAILED, http="passing", extra="failing")
        await h.tick(5)
        assert h.phase("a") == "verifying"
        await h.tick(5)
        reason = h.last(T.VERIFICATION_FAILED, "a").data["reason"]
        assert reason == "probes not passing within the verification timeout (10.0s): extra failing"
        esc = h.last(T.INCIDENT_ESCALATED, "a").data["reason"]
        assert "1/1 attempts used" in esc and "extra failing" in esc
        assert not h.of(T.INCIDENT_VERIFIED)


async def test_named_probes_must_keep_passing_for_stable_for(tmp_path: Path) -> None:
    ps = policies_from(
        tmp_path,
        """\
        version: 1
        policies:
          - name: p
            match: {failures: [crash]}
            steps:
              - strategy: restart
                cooldown: 0s
                max_attempts: 2
                verify: {probes: [http, heartbeat], stable_for: 5s, timeout: 30s}
              - {strategy: escalate}
        """,
    )
    async with harness(tmp_path, ps) as h:
        await h.started("a")
        await h.crash("a")
        await h.execute("a")
        h.clock.advance(1)
        await probe(h, "a", "http", "passing")
        assert h.phase("a") == "verifying", "heartbeat has not passed yet"
        h.clock.advance(1)
        await probe(h, "a", "heartbeat", "passing")
        await health(h, "a", T.COMPONENT_FAILED, http="passing", heartbeat="passing", extra="failing")
        await h.tick(4.9)
        assert h.phase("a") == "verifying", "passing for 4.9s of the 5s asked"
        await h.tick(0.2)
        verified = h.last(T.INCIDENT_VERIFIED, "a").data
        assert verified["stable_for"] == 5.0 and verified["verified_after"] == pytest.approx(2.0)
        assert verified["probes"] == ["http", "heartbeat"]

        # Next incident: a named probe fails inside the stable window -> the attempt fails.
        await h.crash("a")
        await h.execute("a")
        await probe(h, "a", "http", "passing")
        await probe(h, "a", "heartbeat", "passing")
        await h.tick(3)
        await probe(h, "a", "heartbeat", "failing", previous="passing")
        reason = h.last(T.VERIFICATION_FAILED, "a").data["reason"]
        assert reason == "probe heartbeat failed again before passing for 5s"
        assert h.last(T.INCIDENT_PLANNED, "a").data["attempt"] == 2
    # The probe statuses are part of the projection: a rebuilt snapshot agrees.
    rebuilt = await _rebuild(tmp_path)
    assert rebuilt.component("a").probes == h.state.component("a").probes
    assert rebuilt.component("a").probes["heartbeat"][0] == "failing"


async def _rebuild(tmp_path: Path) -> object:
    from healer.knowledge.store import SQLiteEventStore

    store = await SQLiteEventStore.open(tmp_path / "state", synchronous="NORMAL")
    try:
        return await rebuild_state(store)
    finally:
        await store.close()


async def test_unnamed_verification_is_unchanged(tmp_path: Path) -> None:
    """Without `probes`, every probe counts: a failing unnamed probe still fails the step."""
    ps = policies_from(tmp_path, NAMED.replace("probes: [http], ", ""))
    async with harness(tmp_path, ps) as h:
        await h.started("a")
        await h.crash("a")
        await h.execute("a")
        await health(h, "a", T.COMPONENT_FAILED, http="unknown", extra="failing")
        await probe(h, "a", "http", "passing")
        assert h.phase("a") == "verifying"
        await h.tick(10)
        assert "not healthy within the verification timeout" in h.last(T.VERIFICATION_FAILED).data["reason"]
        assert "verify_probes" not in h.of(T.INCIDENT_PLANNED)[0].data


# -- the loader: names checked against the components a policy matches -------------------------------
FLEET = {
    "web-1": Member({"role": "web"}, ("process#0", "http", "heartbeat")),
    "web-2": Member({"role": "web"}, ("process#0", "http")),
    "db": Member({"role": "db"}, ("tcp#0",)),
}


def _write(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "pol"
    d.mkdir(exist_ok=True)
    (d / "p.yaml").write_text(textwrap.dedent(text))
    return d


def test_unknown_probe_names_are_errors_with_file_line_column(tmp_path: Path) -> None:
    d = _write(
        tmp_path,
        """\
        version: 1
        policies:
          - name: web
            match: {labels: {role: web}, failures: [crash]}
            steps:
              - strategy: restart
                verify:
                  probes: [http, heartbeat, htp]
          - name: db
            match: {components: [db], failures: [crash]}
            steps:
              - {strategy: restart, verify: {probes: ["tcp#0", "tcp#0"]}}
        """,
    )
    with pytest.raises(PolicyError) as err:
        load_policies([d], installed=EXECUTE_ACTUATORS, fleet=FLEET)
    f = d / "p.yaml"
    assert err.value.problems == [
        f"{f}:8:26: policies[0].steps[0].verify.probes[1]: unknown probe 'heartbeat': "
        "not a probe of web-2, matched by this policy (web-2 has: process#0, http)",
        f"{f}:8:37: policies[0].steps[0].verify.probes[2]: unknown probe 'htp': "
        "not a probe of web-1, web-2, matched by this policy (did you mean 'http'?)",
        f"{f}:12:56: policies[1].steps[0].verify.probes[1]: probe 'tcp#0' is listed twice",
    ]
    # Without the config nothing is known about probe names: only the list itself is checked.
    with pytest.raises(PolicyError) as err:
        load_policies([d], installed=EXECUTE_ACTUATORS)
    assert [p.split(": ", 1)[1] for p in err.value.problems] == [
        "policies[1].steps[0].verify.probes[1]: probe 'tcp#0' is listed twice"
    ]
    # A policy that matches no configured component names probes of nobody: nothing to check.
    fixed = (d / "p.yaml").read_text().replace(', "tcp#0"]', "]").replace("role: web", "role: cache")
    (d / "p.yaml").write_text(fixed)
    assert len(load_policies([d], installed=EXECUTE_ACTUATORS, fleet=FLEET).policies) == 2


def test_probe_names_come_from_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "healer.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            state_dir: {tmp_path / "state"}
            policies_dir: {tmp_path / "pol"}
            components:
              agent:
                command: {{argv: [sleep, "100"]}}
                probes:
                  - {{type: http, url: "http://127.0.0.1:1/health"}}
                  - {{type: heartbeat_file, name: heartbeat, path: /tmp/x, max_age: 5s}}
            """
        )
    )
    config = load_config(cfg)
    assert [n for n, _ in component_probes(config.components["agent"])] == [
        "process#0",
        "http#1",
        "heartbeat",
    ]
    assert fleet_of(config)["agent"].probes == ("process#0", "http#1", "heartbeat")
    d = _write(
        tmp_path,
        """\
        version: 1
        policies:
          - name: p
            match: {failures: [crash]}
            steps:
              - {strategy: restart, verify: {probes: [http, heartbeat]}}
        """,
    )
    out = healer_cli("policy", "check", "--no-plugins", "-c", str(cfg), str(d))
    assert out.returncode == 1
    assert f"{d / 'p.yaml'}:6:47: policies[0].steps[0].verify.probes[0]: unknown probe 'http'" in out.stdout
    assert "did you mean 'http#1'?" in out.stdout
    assert healer_cli("policy", "check", "--no-plugins", str(d)).returncode == 0, "no config, no probe check"
    # With the names the config gives, the check passes and explain says what will be verified.
    (d / "p.yaml").write_text(
        (d / "p.yaml").read_text().replace("[http, heartbeat]", '["http#1", heartbeat]')
    )
    assert healer_cli("policy", "check", "-c", str(cfg), str(d)).returncode == 0
    out = healer_cli("policy", "explain", "-c", str(cfg), "--component", "agent", "--failure", "crash")
    assert out.returncode == 0, out.stderr
    assert "verify: probes http#1, heartbeat pass within 30s" in out.stdout
    # Two probes of one component with one name could not be told apart.
    cfg.write_text(cfg.read_text().replace("type: http,", "type: http, name: heartbeat,"))
    with pytest.raises(
        ConfigError, match=r"components.agent.probes\[1\].name: duplicate probe name 'heartbeat'"
    ):
        load_config(cfg)


# -- the Monitor records one probe's change when its component's health does not change -------------
async def test_monitor_records_probe_changes_the_component_event_does_not_show(tmp_path: Path) -> None:
    import asyncio

    import httpx

    from healer.clock import SystemClock
    from healer.config import HealerConfig
    from healer.monitor.probes import ProbeRegistry
    from healer.monitor.scheduler import Monitor
    from healer.supervisor import Supervisor
    from tests.test_scheduler import Script, ScriptedProbe, SteadyProbe

    Script.answer, Script.calls = False, 0
    cfg = HealerConfig(
        state_dir=tmp_path / "state",
        policies_dir=tmp_path / "policies",
        components={
            "comp": {
                "probes": [
                    {"type": "scripted", "name": "flaky", "interval": "20ms", "failure_threshold": 5},
                    {"type": "steady", "name": "http", "interval": "20ms"},
                ]
            }
        },
    )
    got: list[Event] = []
    registry = ProbeRegistry({"scripted": ScriptedProbe, "steady": SteadyProbe})
    async with httpx.AsyncClient(trust_env=False) as http:
        monitor = Monitor(
            cfg, registry, Supervisor({}, tmp_path / "logs", lambda *a: None), got.append, SystemClock(), http
        )
        task = asyncio.create_task(monitor.run())
        try:

            async def until(pred: Callable[[], bool], what: str) -> None:
                async with asyncio.timeout(5):
                    while not pred():
                        await asyncio.sleep(0.01)

            await until(lambda: any(e.type == T.COMPONENT_FAILED for e in got), "failed")
            Script.answer = True
            await until(lambda: any(e.type == T.COMPONENT_RECOVERED for e in got), "recovered")
            Script.answer = False
            await until(lambda: sum(e.type == T.COMPONENT_FAILED for e in got) == 2, "failed again")
            await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    seen = [(e.type, e.data.get("probe"), e.data.get("previous"), e.data.get("status")) for e in got]
    # `http` passes before `flaky` has failed five times: the component is still unknown, so that change
    # is recorded on its own; every later one rides on a component event that lists every probe.
    assert seen[0] == (T.PROBE_TRANSITIONED, "http", "unknown", "passing")
    assert [s[0] for s in seen[1:]] == [T.COMPONENT_FAILED, T.COMPONENT_RECOVERED, T.COMPONENT_FAILED]
    assert got[1].data["probes"]["http"]["status"] == "passing" and got[1].data["failing"] == ["flaky"]
