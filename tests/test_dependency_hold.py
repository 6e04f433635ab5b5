"""The hold-down: a dependent whose probes notice a failure before its dependency's do.

Pure Analyze, with the clock injected (``Fleet.now``/``advance``): a dependent failing while
its process is alive and its dependency still looks healthy waits for the dependency's
worst-case detection time. If the dependency fails in time the dependent is its symptom; if it
stays healthy, the dependent is diagnosed on its own at the end of the hold.
"""

from __future__ import annotations

import pytest

from healer.analyze import analyzer
from healer.config import ComponentConfig, ProbeConfig, detection_time
from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from tests.analysis_fleet import Fleet, http, process

AGENTS = ("agent-1", "agent-2")
FLEET = {"vector-db": [], **{a: ["vector-db"] for a in AGENTS}}
DETECT = 2.0  # the vector-db's probes' worst case
HOLD = DETECT + 0.25  # plus the analysis' margin


def fleet(**kw: object) -> Fleet:
    f = Fleet(FLEET, detection={"vector-db": DETECT}, **kw)  # type: ignore[arg-type]
    f.observe(*(f.healthy(c) for c in FLEET))
    return f


def test_dependency_staying_healthy_ends_the_hold_and_the_dependent_gets_its_own_incident() -> None:
    f = fleet()
    out = f.observe(f.failed("agent-1"))
    assert f.of_type(T.INCIDENT_DETECTED, out) == [], "held, not diagnosed as a root at once"
    [held] = f.of_type(T.SYMPTOM_SUPPRESSED, out)
    assert held.component == "agent-1" and held.incident is None
    assert held.data["late"] is True and held.data["hold_down_s"] == pytest.approx(HOLD)
    assert held.data["settle_until"] == pytest.approx(f.now + HOLD)
    assert held.data["wake"] == ["vector-db"] and held.data["roots"] == ["vector-db"]
    # Its own evidence, as seen: the dependency is not (yet) failing.
    assert held.data["failure_class"] == "unhealthy"
    assert "failing_dependencies" not in held.data["evidence"]
    assert "vector-db still looks healthy but its probes need up to 2.0s" in held.data["reason"]
    f.advance(HOLD - 0.01)
    assert f.tick() == [], "still within the hold-down"
    f.advance(0.02)
    out = f.tick()
    [rel] = f.of_type(T.SYMPTOM_RELEASED, out)
    assert rel.component == "agent-1" and rel.data["outcome"] == "still_failing"
    assert "hold-down while vector-db stayed healthy: diagnosed on its own" in rel.data["reason"]
    own = f.diagnosis("agent-1")
    assert own.data["root_cause"] == "agent-1" and own.data["failure_class"] == "unhealthy"
    assert f.open_roots() == {"agent-1"} and f.state.symptoms == {}


def test_dependency_failing_within_the_hold_takes_the_dependent_as_its_symptom() -> None:
    f = fleet()
    f.observe(f.failed("agent-1"))
    f.advance(0.5)
    f.observe(f.failed("agent-2"))
    f.advance(0.7)
    out = f.observe(f.failed("vector-db"))
    assert [r.component for r in f.of_type(T.INCIDENT_DETECTED, out)] == ["vector-db"]
    root = f.diagnosis("vector-db")
    attached = {r.component: r for r in f.of_type(T.SYMPTOM_SUPPRESSED, out)}
    assert set(attached) == set(AGENTS)
    for name, waited in (("agent-1", 1.2), ("agent-2", 0.7)):
        r = attached[name]
        assert r.incident == root.incident and "settle_until" not in r.data
        assert r.data["failure_class"] == "dependency_outage"
        assert r.data["held_for_s"] == pytest.approx(waited)
        assert f"held {waited:.1f}s of its {HOLD:.1f}s hold-down until vector-db failed" in r.data["reason"]
    assert f.symptom_roots() == {a: {"vector-db"} for a in AGENTS}
    f.advance(HOLD)
    assert f.tick() == [], "no hold left to expire: they belong to the open incident"
    assert [r.component for r in f.of_type(T.INCIDENT_DETECTED)] == ["vector-db"]


def test_dependent_recovering_during_the_hold_is_released_without_an_incident() -> None:
    f = fleet()
    f.observe(f.failed("agent-1"))
    f.advance(1.0)
    out = f.observe(f.healthy("agent-1"))
    [rel] = f.of_type(T.SYMPTOM_RELEASED, out)
    assert rel.data["outcome"] == "recovered" and "during its hold-down" in rel.data["reason"]
    f.advance(HOLD)
    assert f.tick() == [] and f.of_type(T.INCIDENT_DETECTED) == []


def test_no_hold_without_a_known_detection_time_or_with_the_hold_disabled() -> None:
    for f in (Fleet(FLEET), Fleet(FLEET, detection={"vector-db": DETECT}, max_hold=0.0)):
        f.observe(*(f.healthy(c) for c in FLEET))
        f.observe(f.failed("agent-1"))
        assert f.diagnosis("agent-1").data["root_cause"] == "agent-1"


def test_hold_is_capped() -> None:
    f = Fleet(FLEET, detection={"vector-db": 90.0}, max_hold=10.0)
    f.observe(*(f.healthy(c) for c in FLEET))
    [held] = f.of_type(T.SYMPTOM_SUPPRESSED, f.observe(f.failed("agent-1")))
    assert held.data["hold_down_s"] == 10.0


def test_a_failure_of_the_component_itself_is_not_held() -> None:
    comps = {"db": [], "api": ["db"], "worker": ["db"]}
    f = Fleet(
        comps, supervised=list(comps), hosts=dict.fromkeys(comps, "localhost"), detection={"db": DETECT}
    )
    for i, c in enumerate(comps):
        f.observe(f.started(c, 100 + i))
        f.observe(f.healthy(c, **{"process#1": process("passing", "sleeping", 100 + i)}))
    # A crash: its process is gone.
    f.observe(f.exited("api", 101))
    assert f.diagnosis("api").data["failure_class"] == "crash"
    # A stopped process: hung itself, whatever its dependency does.
    stopped = {
        "process#1": process("passing", "stopped", 102),
        "http#0": {"status": "failing", "type": "http"},
    }
    f.observe(f.failed("worker", **stopped))
    assert f.diagnosis("worker").data["failure_class"] == "hang"
    assert f.of_type(T.SYMPTOM_SUPPRESSED) == []


def test_hold_waits_for_the_slowest_healthy_dependency_up_the_chain() -> None:
    f = Fleet({"db": [], "api": ["db"], "ui": ["api"]}, detection={"db": 6.0, "api": 1.0})
    f.observe(*(f.healthy(c) for c in ("db", "api", "ui")))
    [held] = f.of_type(T.SYMPTOM_SUPPRESSED, f.observe(f.failed("ui")))
    assert held.data["wake"] == ["api", "db"] and held.data["roots"] == ["db"]
    assert held.data["hold_down_s"] == pytest.approx(6.25)
    f.advance(1.0)
    f.observe(f.failed("api"))  # held in turn, for db
    f.advance(1.0)
    out = f.observe(f.failed("db"))
    assert [r.component for r in f.of_type(T.INCIDENT_DETECTED, out)] == ["db"]
    assert f.symptom_roots() == {"api": {"db"}, "ui": {"db"}}
    assert [r.component for r in f.of_type(T.INCIDENT_DETECTED)] == ["db"]


def test_detection_time_is_the_slowest_probe_worst_case() -> None:
    comp = ComponentConfig(
        probes=[
            ProbeConfig(type="http", interval=0.5, timeout=0.4, failure_threshold=2),
            ProbeConfig(type="tcp", interval=1.0, timeout=0.2, jitter=0.3, failure_threshold=3),
        ]
    )
    # threshold x (interval + jitter + timeout): each failed check of a hung target times out,
    # and the next starts an interval after it ended.
    assert detection_time(comp) == pytest.approx(max(2 * 0.9, 3 * 1.5))
    assert detection_time(ComponentConfig()) == 0.0


# -- classification memoised per evidence signature (one batch) ----------------------------------


def _mixed_storm() -> list[RecordedEvent]:
    """One batch: the same evidence on two hosts whose peers differ (partition vs hang), crashes,
    stopped processes, and components without a host."""
    hosts = {**{f"a{i}": "host-a" for i in range(6)}, **{f"b{i}": "host-b" for i in range(3)}}
    comps: dict[str, list[str]] = {**{n: [] for n in hosts}, "ext1": [], "ext2": []}
    supervised = list(hosts)
    f = Fleet(comps, supervised=supervised, hosts=hosts)
    for i, c in enumerate(supervised):
        f.observe(f.started(c, 100 + i))
        f.observe(f.healthy(c, **{"process#1": process("passing", "sleeping", 100 + i)}))
    f.observe(f.healthy("ext1"), f.healthy("ext2"))
    unreachable = {"http#0": http("failing"), "process#1": process("passing", "sleeping")}
    stopped = {"http#0": http("failing"), "process#1": process("passing", "stopped")}
    return f.observe(
        f.failed("a0", **unreachable),
        *(f.failed(f"b{i}", **unreachable) for i in range(3)),
        f.failed("a1", **stopped),
        f.exited("a2", 102),
        f.failed("a2", **{"process#1": process("failing", "sleeping")}),
        f.failed("ext1"),
        f.failed("ext2"),
    )


def test_memoised_classification_decides_exactly_as_classifying_each_component(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    memoised = _mixed_storm()
    classes = {r.component: r.data["failure_class"] for r in memoised if r.type == T.INCIDENT_DIAGNOSED}
    # Same evidence, different hosts: peers tell a partition (host-a answers) from a hang (all of
    # host-b fails) -- the peer facts are not in the memo's key, so it must not share the answer.
    assert classes["a0"] == "network_partition" and classes["b0"] == "hang"
    assert classes["a1"] == "hang" and classes["a2"] == "crash" and classes["ext1"] == "unhealthy"
    monkeypatch.setattr(analyzer, "_signature_key", lambda _names, _facts: None)
    assert _mixed_storm() == memoised
