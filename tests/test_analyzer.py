"""Analyze, pure: root cause vs symptom, suppression, settling, dedup and classification.

Process- and probe-driven behaviour is also tested end to end with real processes in
tests/test_analyze_e2e.py; telemetry-driven classes (breakers, agent reports) are tested here on a
snapshot folded from events, because their MQTT plumbing belongs to the Monitor.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healer.analyze.analyzer import AnalysisContext, GraphCache, analyze
from healer.analyze.graph import DependencyGraph
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from tests.analysis_fleet import Fleet, http, process, taxonomy

AGENTS = ("agent-1", "agent-2", "agent-3")
FLEET = {"vector-db": [], **{a: ["vector-db"] for a in AGENTS}}


def fleet(**kw: object) -> Fleet:
    f = Fleet(FLEET, **kw)  # type: ignore[arg-type]
    f.observe(*(f.healthy(c) for c in FLEET))
    return f


# -- root cause vs symptom ----------------------------------------------------------------------


def test_shared_dependency_is_one_incident_and_three_suppressed_symptoms() -> None:
    f = fleet()
    out = f.observe(f.failed("agent-2"), f.failed("vector-db"), f.failed("agent-3"), f.failed("agent-1"))
    detected = f.of_type(T.INCIDENT_DETECTED, out)
    assert [r.component for r in detected] == ["vector-db"], "only the root opens an incident"
    assert [r.component for r in f.of_type(T.INCIDENT_DIAGNOSED, out)] == ["vector-db"]
    diag = f.diagnosis("vector-db")
    iid = diag.incident
    assert diag.data["root_cause"] == "vector-db"
    assert diag.data["symptoms"] == list(AGENTS)
    assert diag.data["blast_radius"] == list(AGENTS) and diag.data["blast_radius_complete"] is True
    suppressed = f.of_type(T.SYMPTOM_SUPPRESSED, out)
    assert sorted(r.component for r in suppressed) == list(AGENTS)
    for r in suppressed:
        assert r.incident == iid
        assert r.data["roots"] == ["vector-db"]
        assert r.data["failure_class"] == "dependency_outage"
        assert r.data["evidence"]["failing_dependencies"] == ["vector-db"]
        assert (
            r.data["reason"]
            == f"remediation of {r.component} suppressed: symptom of vector-db, incident {iid}"
        )
    inc = f.state.incidents[iid]
    assert inc.symptoms == list(AGENTS)
    assert set(f.state.symptoms) == set(AGENTS)


def test_symptom_seen_before_its_root_is_superseded_and_joins_the_root() -> None:
    f = fleet()
    first = f.observe(f.failed("agent-1"))
    own = f.diagnosis("agent-1")
    assert own.data["failure_class"] == "unhealthy" and own.data["root_cause"] == "agent-1"
    assert f.of_type(T.SYMPTOM_SUPPRESSED, first) == []
    f.advance(0.5)
    out = f.observe(f.failed("vector-db"))
    resolved = f.of_type(T.INCIDENT_RESOLVED, out)
    assert [(r.component, r.incident) for r in resolved] == [("agent-1", own.incident)]
    root = f.diagnosis("vector-db")
    assert resolved[0].data["merged_into"] == [root.incident]
    assert resolved[0].data["resolution"].startswith("superseded: symptom of vector-db")
    assert root.data["symptoms"] == ["agent-1"]
    [sup] = f.of_type(T.SYMPTOM_SUPPRESSED, out)
    assert (sup.component, sup.incident) == ("agent-1", root.incident)
    assert f.open_roots() == {"vector-db"}
    assert f.symptom_roots() == {"agent-1": {"vector-db"}}


def test_healthy_middle_breaks_the_chain() -> None:
    f = Fleet({"db": [], "api": ["db"], "ui": ["api"]})
    f.observe(*(f.healthy(c) for c in ("db", "api", "ui")))
    f.observe(f.failed("db"), f.failed("ui"))
    assert f.open_roots() == {"db", "ui"}
    assert f.state.symptoms == {}


def test_repeated_observations_extend_the_open_incident() -> None:
    f = fleet()
    f.observe(f.failed("vector-db"))
    iid = f.diagnosis("vector-db").incident
    for _ in range(3):
        f.advance(1)
        out = f.observe(f.failed("vector-db"))
        assert out == [], "a repeat decides nothing new"
    assert len(f.of_type(T.INCIDENT_DETECTED)) == 1
    inc = f.state.incidents[iid]
    assert inc.observations == 3 and inc.last_observed_at == f.now


def test_symptom_that_recovers_while_the_root_is_open_is_released() -> None:
    f = fleet()
    f.observe(f.failed("vector-db"), f.failed("agent-1"))
    iid = f.diagnosis("vector-db").incident
    out = f.observe(f.healthy("agent-1"))
    [rel] = f.of_type(T.SYMPTOM_RELEASED, out)
    assert rel.component == "agent-1" and rel.data["outcome"] == "recovered"
    assert f"incident {iid} still open" in rel.data["reason"]
    assert "agent-1" not in f.state.symptoms
    assert f.of_type(T.INCIDENT_DETECTED, out) == []


def test_symptoms_settle_after_the_root_recovers_and_only_the_broken_one_gets_an_incident() -> None:
    f = fleet(settle=3.0)
    f.observe(f.failed("vector-db"), *(f.failed(a) for a in AGENTS))
    iid = f.diagnosis("vector-db").incident
    f.advance(2)
    out = f.observe(f.healthy("vector-db"))
    assert [r.data["resolution"] for r in f.of_type(T.INCIDENT_RESOLVED, out)] == ["recovered without action"]
    settling = f.of_type(T.SYMPTOM_SETTLING, out)
    assert sorted(r.component for r in settling) == list(AGENTS)
    assert all(r.incident == iid and r.data["settle_until"] == f.now + 3.0 for r in settling)
    f.advance(0.5)
    out = f.observe(f.healthy("agent-1"), f.healthy("agent-2"))
    assert sorted(r.component for r in f.of_type(T.SYMPTOM_RELEASED, out)) == ["agent-1", "agent-2"]
    f.advance(2.0)
    assert f.tick() == [], "agent-3 is still settling"
    f.advance(0.6)
    out = f.tick()
    [rel] = f.of_type(T.SYMPTOM_RELEASED, out)
    assert rel.component == "agent-3" and rel.data["outcome"] == "still_failing"
    assert [r.component for r in f.of_type(T.INCIDENT_DETECTED, out)] == ["agent-3"]
    own = f.diagnosis("agent-3")
    assert own.data["root_cause"] == "agent-3" and own.data["failure_class"] == "unhealthy"
    assert own.data["evidence"]["observation"] == "settle"
    assert f.state.symptoms == {} and f.open_roots() == {"agent-3"}


def test_failure_seen_just_after_the_dependency_recovered_is_a_late_symptom() -> None:
    f = fleet(settle=3.0)
    f.observe(f.failed("vector-db"))
    iid = f.diagnosis("vector-db").incident
    f.advance(1)
    f.observe(f.healthy("vector-db"))
    f.advance(0.5)
    out = f.observe(f.failed("agent-2"))
    assert f.of_type(T.INCIDENT_DETECTED, out) == []
    [sup] = f.of_type(T.SYMPTOM_SUPPRESSED, out)
    assert sup.incident == iid and sup.data["late"] is True
    assert sup.data["settle_until"] == pytest.approx(f.now - 0.5 + 3.0)
    f.advance(2.6)
    out = f.tick()
    assert [r.component for r in f.of_type(T.INCIDENT_DETECTED, out)] == ["agent-2"]


def test_a_root_failing_again_while_symptoms_settle_takes_them_back() -> None:
    f = fleet(settle=3.0)
    f.observe(f.failed("vector-db"), f.failed("agent-1"))
    f.advance(1)
    f.observe(f.healthy("vector-db"))
    assert f.state.symptoms["agent-1"].settle_until is not None
    f.advance(1)
    out = f.observe(f.failed("vector-db"))
    second = f.diagnosis("vector-db").incident
    [sup] = f.of_type(T.SYMPTOM_SUPPRESSED, out)
    assert sup.component == "agent-1" and sup.incident == second
    assert f.state.symptoms["agent-1"].settle_until is None
    f.advance(10)
    assert f.of_type(T.INCIDENT_DETECTED, f.tick()) == [], "no settling while the root is open"


def test_symptom_of_two_roots_waits_for_both() -> None:
    f = Fleet({"db": [], "llm": [], "agent": ["db", "llm"]}, settle=1.0)
    f.observe(*(f.healthy(c) for c in ("db", "llm", "agent")))
    f.observe(f.failed("db"), f.failed("llm"), f.failed("agent"))
    assert f.symptom_roots() == {"agent": {"db", "llm"}}
    f.advance(1)
    out = f.observe(f.healthy("db"))
    assert f.of_type(T.SYMPTOM_SETTLING, out) == [], "llm's incident is still open"
    out = f.observe(f.healthy("llm"))
    assert [r.component for r in f.of_type(T.SYMPTOM_SETTLING, out)] == ["agent"]


# -- classification ---------------------------------------------------------------------------------


def supervised_fleet() -> Fleet:
    comps = {"svc": [], "peer-1": [], "peer-2": []}
    f = Fleet(comps, supervised=list(comps), hosts=dict.fromkeys(comps, "localhost"))
    for i, c in enumerate(comps):
        f.observe(f.started(c, 100 + i))
        f.observe(f.healthy(c, **{"process#1": process("passing", "sleeping", 100 + i)}))
    return f


def test_crash_hang_and_partition_are_told_apart() -> None:
    f = supervised_fleet()
    f.observe(f.exited("svc", 100), f.failed("svc", **{"process#1": process("failing", "sleeping")}))
    crash = f.diagnosis("svc")
    assert crash.data["failure_class"] == "crash" and crash.data["signature"] == "process-gone"
    assert crash.data["evidence"]["signal"] == "SIGKILL" and crash.data["evidence"]["process_alive"] is False

    f = supervised_fleet()
    f.observe(f.failed("svc", **{"http#0": http("failing"), "process#1": process("passing", "stopped")}))
    hang = f.diagnosis("svc")
    assert hang.data["failure_class"] == "hang" and hang.data["signature"] == "process-not-running"

    f = supervised_fleet()
    f.observe(f.failed("svc", **{"http#0": http("failing"), "process#1": process("passing", "sleeping")}))
    part = f.diagnosis("svc")
    assert part.data["failure_class"] == "network_partition", part.data
    ev = part.data["evidence"]
    assert ev["process_alive"] is True and ev["process_status"] == "sleeping"
    assert ev["only_network_probes_failing"] is True
    assert ev["peers_healthy"] == 2 and ev["peers_failing"] == 0 and ev["peers_healthy_ratio"] == 1.0


def _diagnose_http_timeout(os_status: str) -> dict[str, Any]:
    """svc and two healthy peers on one host, only http probes; svc's probe times out while the
    Monitor reads its process as ``os_status``."""
    comps = {"svc": [], "peer-1": [], "peer-2": []}
    f = Fleet(comps, supervised=list(comps), hosts=dict.fromkeys(comps, "localhost"))
    for i, c in enumerate(comps):
        f.observe(f.started(c, 100 + i), f.healthy(c))
    failed = f.failed("svc", **{"http#0": http("failing", "timed out after 0.4s")})
    failed.data["process"] = {"pid": 100, "status": os_status}
    f.observe(failed)
    return f.diagnosis("svc").data


def test_a_stopped_process_with_only_network_probes_is_a_hang_whatever_its_peers_say() -> None:
    """The Monitor reads a supervised process's OS state as its component fails: a component
    with only an http probe, stopped (SIGSTOP), is a hang even while its peers still answer --
    before that sample the verdict depended on whether its dependents had failed yet."""
    diag = _diagnose_http_timeout("stopped")
    assert diag["failure_class"] == "hang" and diag["signature"] == "process-not-running", diag
    assert diag["evidence"]["process_status"] == "stopped"
    # The same failure from a process the OS says is running is still a partition.
    assert _diagnose_http_timeout("sleeping")["failure_class"] == "network_partition"


def test_unreachable_process_without_healthy_peers_is_a_hang() -> None:
    f = supervised_fleet()
    f.observe(f.failed("peer-1"), f.failed("peer-2"))
    f.observe(f.failed("svc", **{"http#0": http("failing"), "process#1": process("passing", "sleeping")}))
    diag = f.diagnosis("svc")
    assert diag.data["failure_class"] == "hang" and diag.data["signature"] == "alive-not-answering"
    assert diag.data["evidence"]["peers_healthy"] == 0 and diag.data["evidence"]["peers_failing"] == 2


def test_peer_failing_because_of_the_component_does_not_count_against_partition() -> None:
    comps = {"svc": [], "peer": [], "user": ["svc"]}
    f = Fleet(comps, supervised=list(comps), hosts=dict.fromkeys(comps, "localhost"))
    for i, c in enumerate(comps):
        f.observe(f.started(c, 10 + i), f.healthy(c, **{"process#1": process("passing", "sleeping", 10 + i)}))
    f.observe(
        f.failed("user"),
        f.failed("svc", **{"http#0": http("failing"), "process#1": process("passing", "running")}),
    )
    diag = f.diagnosis("svc")
    assert diag.data["failure_class"] == "network_partition"
    assert diag.data["evidence"]["peers_failing"] == 0
    assert f.symptom_roots() == {"user": {"svc"}}


def test_local_check_failing_on_a_live_process_is_a_hang() -> None:
    f = supervised_fleet()
    probes = {
        "http#0": http("failing"),
        "beat": {"status": "failing", "type": "heartbeat_file", "detail": "stale for 12s"},
        "process#1": process("passing", "sleeping"),
    }
    f.observe(f.failed("svc", **probes))
    assert f.diagnosis("svc").data["signature"] == "local-check-failing"


def test_resource_threshold_is_resource_exhaustion_with_the_measured_values() -> None:
    f = supervised_fleet()
    res = {
        "status": "failing",
        "type": "resources",
        "detail": "rss 900 MB > 512 MB",
        "values": {"rss_bytes": 943718400, "threshold": {"rss_bytes": 536870912}},
    }
    f.observe(f.failed("svc", mem=res))
    diag = f.diagnosis("svc")
    assert diag.data["failure_class"] == "resource_exhaustion"
    assert diag.data["evidence"]["values.rss_bytes"] == 943718400
    assert diag.data["evidence"]["failing_probe_types"] == ["resources"]


def test_flapping_after_more_than_four_transitions_in_the_window() -> None:
    f = supervised_fleet()
    for _ in range(2):
        f.advance(1)
        f.observe(f.failed("svc", **{"http#0": http("failing"), "process#1": process("passing", "stopped")}))
        f.advance(1)
        f.observe(f.healthy("svc"))
    assert f.diagnosis("svc").data["failure_class"] == "hang"
    f.advance(1)
    f.observe(f.failed("svc", **{"http#0": http("failing"), "process#1": process("passing", "stopped")}))
    diag = f.diagnosis("svc")
    assert diag.data["failure_class"] == "flapping"
    assert diag.data["evidence"]["transitions"] == 5
    f.advance(120)
    f.observe(f.healthy("svc"))
    f.observe(f.failed("svc", **{"http#0": http("failing"), "process#1": process("passing", "stopped")}))
    assert f.diagnosis("svc").data["failure_class"] == "hang", "old transitions leave the window"


def test_breaker_open_with_the_dependency_green_is_a_dependency_outage() -> None:
    f = Fleet({"vector-db": [], "agent-a": ["vector-db"], "agent-b": []})
    f.observe(*(f.healthy(c) for c in ("vector-db", "agent-a", "agent-b")))
    out = f.observe(f.breaker("agent-a", "vector-db", "open", failures=5))
    [diag] = f.of_type(T.INCIDENT_DIAGNOSED, out)
    assert diag.component == "vector-db" and diag.data["failure_class"] == "dependency_outage"
    ev = diag.data["evidence"]
    assert ev["signature"] == "breakers-open-on-managed"
    assert ev["health"] == "healthy" and ev["open_breakers"] == 1
    assert ev["breakers"]["agent-a"]["state"] == "open" and ev["breakers"]["agent-a"]["failure_count"] == 5
    iid = diag.incident
    # agent-b has no configured dependency: its breaker teaches the edge, its failure is a symptom.
    out = f.observe(f.breaker("agent-b", "vector-db", "open"), f.failed("agent-b"))
    assert ("agent-b", "vector-db") in f.state.learned_edges
    [sup] = f.of_type(T.SYMPTOM_SUPPRESSED, out)
    assert sup.component == "agent-b" and sup.incident == iid
    assert f.state.incidents[iid].observations == 1, "the second breaker extends the incident"
    out = f.observe(f.breaker("agent-a", "vector-db", "closed", 0))
    assert f.of_type(T.INCIDENT_RESOLVED, out) == [], "agent-b's breaker is still open"
    out = f.observe(f.breaker("agent-b", "vector-db", "closed", 0))
    [res] = f.of_type(T.INCIDENT_RESOLVED, out)
    assert res.incident == iid and res.data["resolution"].startswith("breakers closed")
    assert [r.component for r in f.of_type(T.SYMPTOM_SETTLING, out)] == ["agent-b"]


def test_breaker_open_on_an_unmanaged_dependency_is_breaker_open() -> None:
    f = Fleet({"agent-a": []})
    f.observe(f.healthy("agent-a"))
    out = f.observe(f.breaker("agent-a", "llm-provider", "open"))
    [diag] = f.of_type(T.INCIDENT_DIAGNOSED, out)
    assert (diag.component, diag.data["failure_class"]) == ("llm-provider", "breaker_open")
    assert diag.data["evidence"]["managed"] is False


def test_half_open_breaker_is_not_a_failure_and_closed_breakers_change_nothing() -> None:
    f = Fleet({"db": [], "a": ["db"]})
    f.observe(f.healthy("db"), f.healthy("a"))
    assert f.observe(f.breaker("a", "db", "half_open")) == []
    assert f.observe(f.breaker("a", "db", "closed")) == []


def test_agent_reports_state_corruption_and_model_regression() -> None:
    f = fleet()
    out = f.observe(f.reported("agent-1", "state_corruption", True, "checksum mismatch in memory.db"))
    diag = f.diagnosis("agent-1")
    assert diag.data["failure_class"] == "state_corruption"
    assert diag.data["evidence"]["report_detail"] == "checksum mismatch in memory.db"
    assert len(f.of_type(T.INCIDENT_DETECTED, out)) == 1

    assert f.observe(f.reported("agent-2", "quality", 0.93)) == [], "good quality is not a failure"
    f.observe(f.reported("agent-2", "quality", 0.61, "eval pass rate"))
    reg = f.diagnosis("agent-2")
    assert reg.data["failure_class"] == "model_regression" and reg.data["evidence"]["report_value"] == 0.61
    out = f.observe(f.reported("agent-2", "quality", 0.9))
    [res] = f.of_type(T.INCIDENT_RESOLVED, out)
    assert res.incident == reg.incident and "condition cleared" in res.data["resolution"]


def test_agent_reports_are_never_suppressed_as_symptoms() -> None:
    f = fleet()
    f.observe(f.failed("vector-db"))
    f.observe(f.reported("agent-3", "state_corruption", True))
    assert f.diagnosis("agent-3").data["failure_class"] == "state_corruption"
    assert "agent-3" not in f.state.symptoms


# -- determinism: snapshot and replay -------------------------------------------------------------


def test_learned_edges_and_breakers_are_in_the_snapshot_and_replay_identically() -> None:
    f = Fleet({"db": [], "a": []})
    f.observe(f.healthy("db"), f.healthy("a"))
    f.observe(f.breaker("a", "db", "open"), f.failed("a"))
    snap = f.state.snapshot()
    assert snap["learned_edges"] == [["a", "db"]]
    assert snap["components"]["a"]["breakers"]["db"]["state"] == "open"
    assert set(snap["symptoms"]) == {"a"}
    rebuilt = FleetState().apply_all(f.log)
    assert rebuilt.digest() == f.state.digest()
    assert rebuilt.open_breakers_on == {"db": {"a"}} and rebuilt.failing == f.state.failing


def test_graph_cache_starts_over_when_the_snapshot_loses_learned_edges() -> None:
    cache = GraphCache({"db": [], "a": []})
    state = FleetState()
    state.learned_edges.extend([("a", "db")])
    assert cache.for_state(state).dependencies("a") == {"db"}
    shorter = FleetState()
    assert cache.for_state(shorter).dependencies("a") == set()
    other = FleetState()
    other.learned_edges.append(("db", "a"))
    assert cache.for_state(other).dependencies("db") == {"a"}


def test_per_event_entry_point_matches_the_batch() -> None:
    f = fleet()
    rec = f._apply(f.failed("vector-db"))
    out = analyze(f.state, rec, f.now, taxonomy(), frozenset(), f.ctx)
    assert [e.type for e in out] == [T.INCIDENT_DETECTED, T.INCIDENT_DIAGNOSED]
    assert analyze(f.state, f.log[0], f.now, taxonomy(), frozenset(), f.ctx) == []  # a recovery: nothing open
    # Without a context (no graph): every failure is its own root, as before the graph existed.
    alone = FleetState()
    alone.apply(rec)
    out = analyze(alone, rec, f.now, taxonomy(), frozenset())
    assert [(e.type, e.component) for e in out][-1] == (T.INCIDENT_DIAGNOSED, "vector-db")
    assert analyze(alone, rec, f.now, taxonomy(), frozenset(), AnalysisContext(taxonomy())) == out


# -- properties --------------------------------------------------------------------------------------


@st.composite
def storms(draw: st.DrawFn) -> tuple[dict[str, list[str]], list[str], list[list[str]]]:
    """A random DAG, a random failed set, and that set cut into batches in a random order."""
    size = draw(st.integers(min_value=1, max_value=14))
    names = [f"n{i}" for i in range(size)]
    density = draw(st.floats(min_value=0.0, max_value=0.6))
    rng = random.Random(draw(st.integers(min_value=0, max_value=2**32)))
    depends_on = {names[j]: [names[i] for i in range(j) if rng.random() < density] for j in range(size)}
    failed = draw(st.lists(st.sampled_from(names), unique=True, min_size=1))
    order = draw(st.permutations(failed))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=len(order))))
    batches, start = [], 0
    for cut in [*cuts, len(order)]:
        if cut > start:
            batches.append(list(order[start:cut]))
            start = cut
    return depends_on, failed, batches


def run_storm(depends_on: dict[str, list[str]], batches: list[list[str]]) -> Fleet:
    f = Fleet(depends_on)
    f.observe(*(f.healthy(c) for c in depends_on))
    for batch in batches:
        f.advance(0.1)
        f.observe(*(f.failed(c) for c in batch))
    return f


@settings(max_examples=200, deadline=None)
@given(storms())
def test_final_roots_and_symptoms_match_one_traversal_whatever_the_arrival_order(
    case: tuple[dict[str, list[str]], list[str], list[list[str]]],
) -> None:
    depends_on, failed, batches = case
    expected = DependencyGraph(depends_on).analyze(failed)
    one_batch = run_storm(depends_on, [sorted(failed)])
    arrived = run_storm(depends_on, batches)
    for f in (one_batch, arrived):
        assert f.open_roots() == set(expected.roots)
        assert f.symptom_roots() == {s: set(r) for s, r in expected.symptoms.items()}
        # No symptom ever reaches the planner: every diagnosis names its own component as the root.
        for diag in f.of_type(T.INCIDENT_DIAGNOSED):
            assert diag.data["root_cause"] == diag.component
    # In one batch nothing is diagnosed twice: no incident had to be superseded.
    assert len(one_batch.of_type(T.INCIDENT_DETECTED)) == len(expected.roots)
    assert one_batch.of_type(T.INCIDENT_RESOLVED) == []


@settings(max_examples=100, deadline=None)
@given(storms(), st.randoms(use_true_random=False))
def test_one_batch_gives_the_same_events_in_any_order(
    case: tuple[dict[str, list[str]], list[str], list[list[str]]], shuffler: random.Random
) -> None:
    depends_on, failed, _ = case
    shuffled = list(failed)
    shuffler.shuffle(shuffled)
    a = run_storm(depends_on, [sorted(failed)])
    b = run_storm(depends_on, [shuffled])
    decisions = {T.INCIDENT_DETECTED, T.INCIDENT_DIAGNOSED, T.SYMPTOM_SUPPRESSED}

    def decided(f: Fleet) -> list[tuple[str, str | None, int | None, dict[str, object]]]:
        # `cause` is the position of the triggering observation, which is the order under test.
        return [
            (r.type, r.component, r.incident, {k: v for k, v in r.data.items() if k != "cause"})
            for r in f.log
            if r.type in decisions
        ]

    assert decided(a) == decided(b)
    assert a.state.snapshot()["symptoms"] == b.state.snapshot()["symptoms"]
    assert a.state.snapshot()["active_incident"] == b.state.snapshot()["active_incident"]


def test_passing_probes_do_not_close_a_reported_corruption_or_an_open_breaker_outage() -> None:
    f = fleet()
    f.observe(f.reported("agent-1", "state_corruption", True))
    f.observe(f.failed("agent-1"))
    out = f.observe(f.healthy("agent-1"))
    assert f.of_type(T.INCIDENT_RESOLVED, out) == [], "a restart-free recovery does not cure corruption"
    assert f.state.active_for("agent-1") is not None

    f.observe(f.breaker("agent-2", "vector-db", "open"))
    iid = f.diagnosis("vector-db").incident
    f.observe(f.failed("vector-db"))
    out = f.observe(f.healthy("vector-db"))
    assert f.of_type(T.INCIDENT_RESOLVED, out) == [], "agent-2 still sees vector-db broken"
    out = f.observe(f.breaker("agent-2", "vector-db", "closed"))
    assert [r.incident for r in f.of_type(T.INCIDENT_RESOLVED, out)] == [iid]


@pytest.mark.parametrize(
    "data",
    [
        {"dependency": 5, "state": "open"},
        {"dependency": "", "state": "open"},
        {"dependency": "db", "state": "exploded"},
        {"state": "open"},
        {"dependency": ["db"], "state": "open"},
    ],
)
def test_malformed_breaker_telemetry_changes_nothing(data: dict[str, object]) -> None:
    f = Fleet({"db": [], "a": []})
    f.observe(f.healthy("db"), f.healthy("a"))
    out = f.observe(Event(T.BREAKER_TRANSITIONED, f.now, "a", data=data))
    assert out == []
    assert f.state.learned_edges == [] and f.state.open_breakers_on == {}
    assert f.state.snapshot()["components"]["a"]["breakers"] == {}


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "quality", "value": "terrible"},
        {"kind": 3},
        {"value": 0.1},
        {"kind": "quality", "value": None},
    ],
)
def test_malformed_agent_reports_open_nothing(data: dict[str, object]) -> None:
    f = Fleet({"a": []})
    f.observe(f.healthy("a"))
    assert f.observe(Event(T.AGENT_REPORTED, f.now, "a", data=data)) == []
    assert f.state.active_incident == {}
