"""Root-cause analysis over the dependency graph: concrete cases and properties."""

from __future__ import annotations

import random

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healer.analyze.graph import DependencyCycleError, DependencyGraph, RootCauseResult

# --- concrete cases ---------------------------------------------------------------


def fleet() -> DependencyGraph:
    return DependencyGraph(
        {
            "vector-db": [],
            "llm-gateway": [],
            "agent-1": ["vector-db"],
            "agent-2": ["vector-db"],
            "agent-3": ["vector-db", "llm-gateway"],
        }
    )


def test_shared_dependency_is_the_single_root() -> None:
    result = fleet().analyze(["agent-2", "vector-db", "agent-1", "agent-3"])
    assert result.roots == {"vector-db"}
    assert dict(result.symptoms) == {
        "agent-1": {"vector-db"},
        "agent-2": {"vector-db"},
        "agent-3": {"vector-db"},
    }
    assert result.incident_groups() == {"vector-db": {"agent-1", "agent-2", "agent-3"}}
    assert result.blast_radius["vector-db"] == {"agent-1", "agent-2", "agent-3"}


def test_blast_radius_includes_healthy_dependents() -> None:
    result = fleet().analyze(["vector-db"])
    assert result.roots == {"vector-db"}
    assert dict(result.symptoms) == {}
    assert result.incident_groups() == {"vector-db": frozenset()}
    assert dict(result.blast_radius) == {"vector-db": {"agent-1", "agent-2", "agent-3"}}


def test_healthy_middle_breaks_the_chain() -> None:
    # a depends on b depends on c; b is healthy, so a's failure is not c's fault.
    graph = DependencyGraph({"a": ["b"], "b": ["c"], "c": []})
    result = graph.analyze(["a", "c"])
    assert result.roots == {"a", "c"}
    assert dict(result.symptoms) == {}
    assert result.blast_radius["c"] == {"a", "b"}
    assert result.blast_radius["a"] == frozenset()


def test_failed_chain_has_one_root() -> None:
    graph = DependencyGraph({"a": ["b"], "b": ["c"], "c": []})
    result = graph.analyze(["a", "b", "c"])
    assert result.roots == {"c"}
    assert dict(result.symptoms) == {"a": {"c"}, "b": {"c"}}


def test_symptom_with_two_independent_roots() -> None:
    result = fleet().analyze(["vector-db", "llm-gateway", "agent-3"])
    assert result.roots == {"vector-db", "llm-gateway"}
    assert dict(result.symptoms) == {"agent-3": {"vector-db", "llm-gateway"}}
    assert result.incident_groups() == {"llm-gateway": {"agent-3"}, "vector-db": {"agent-3"}}


def test_diamond_attributes_through_either_path() -> None:
    # top depends on left and right, which both depend on base; only the right path failed.
    graph = DependencyGraph({"base": [], "left": ["base"], "right": ["base"], "top": ["left", "right"]})
    result = graph.analyze(["base", "right", "top"])
    assert result.roots == {"base"}
    assert dict(result.symptoms) == {"right": {"base"}, "top": {"base"}}


def test_unknown_failed_name_is_an_isolated_root() -> None:
    result = fleet().analyze(["ghost", "vector-db", "agent-1"])
    assert result.roots == {"ghost", "vector-db"}
    assert dict(result.symptoms) == {"agent-1": {"vector-db"}}
    assert result.blast_radius["ghost"] == frozenset()


def test_empty_failure_set() -> None:
    result = fleet().analyze([])
    assert result == RootCauseResult(frozenset(), {}, {})
    assert result.incident_groups() == {}


def test_blast_radius_is_a_read_only_mapping_over_roots() -> None:
    result = fleet().analyze(["vector-db", "agent-1"])
    assert list(result.blast_radius) == ["vector-db"]
    assert len(result.blast_radius) == 1
    assert "agent-1" not in result.blast_radius
    with pytest.raises(KeyError):
        result.blast_radius["agent-1"]
    assert "0 computed" in repr(result.blast_radius)
    with pytest.raises(TypeError):
        result.symptoms["agent-1"] = frozenset()  # type: ignore[index]


def test_cycle_is_rejected_and_named() -> None:
    with pytest.raises(DependencyCycleError) as excinfo:
        DependencyGraph({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]})
    assert excinfo.value.cycle == ["a", "b", "c"]
    assert str(excinfo.value) == "dependency cycle: a -> b -> c -> a"
    assert isinstance(excinfo.value, ValueError)


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(DependencyCycleError, match="dependency cycle: a -> a"):
        DependencyGraph({"a": ["a"]})


def test_unknown_dependency_is_rejected() -> None:
    with pytest.raises(ValueError, match="'agent-1' depends on unknown component 'vector-bd'"):
        DependencyGraph({"agent-1": ["vector-bd"], "vector-db": []})


def test_string_instead_of_list_is_rejected() -> None:
    with pytest.raises(TypeError, match="list of names"):
        DependencyGraph({"agent-1": "db", "db": []})


def test_direct_and_transitive_queries() -> None:
    graph = DependencyGraph({"a": ["b"], "b": ["c"], "c": [], "d": ["c"]})
    assert graph.dependencies("b") == {"c"}
    assert graph.dependents("c") == {"b", "d"}
    assert graph.downstream("c") == {"a", "b", "d"}
    assert graph.downstream("a") == set()
    assert "a" in graph
    assert len(graph) == 4
    with pytest.raises(KeyError, match="nope"):
        graph.downstream("nope")


def test_learned_edge_that_would_close_a_cycle_is_refused() -> None:
    graph = DependencyGraph({"a": ["b"], "b": ["c"], "c": []})
    assert graph.add_learned_edge("c", "a") is False
    assert graph.add_learned_edge("a", "a") is False
    assert graph.dependencies("c") == set()
    assert nx.is_directed_acyclic_graph(graph._g)


def test_learned_edge_is_added_once_and_creates_unknown_nodes() -> None:
    graph = DependencyGraph({"a": [], "b": []})
    assert graph.add_learned_edge("a", "b") is True
    assert graph.add_learned_edge("a", "b") is False
    assert graph.add_learned_edge("new-agent", "new-cache") is True
    assert graph.dependencies("new-agent") == {"new-cache"}
    assert graph.analyze(["new-cache", "new-agent"]).roots == {"new-cache"}


def test_result_keeps_the_graph_it_was_computed_on() -> None:
    graph = DependencyGraph({"db": [], "agent": ["db"]})
    before = graph.analyze(["db"])
    assert graph.add_learned_edge("worker", "agent")
    after = graph.analyze(["db"])
    assert before.blast_radius["db"] == {"agent"}
    assert after.blast_radius["db"] == {"agent", "worker"}
    assert graph.downstream("db") == {"agent", "worker"}


# --- properties on random DAGs ----------------------------------------------------


@st.composite
def dags_and_failures(draw: st.DrawFn) -> tuple[dict[str, list[str]], list[str]]:
    """A DAG over n0..n{k-1} (edges only from lower to higher index) and a failed list."""
    size = draw(st.integers(min_value=0, max_value=25))
    names = [f"n{i}" for i in range(size)]
    density = draw(st.floats(min_value=0.0, max_value=0.5))
    rng = random.Random(draw(st.integers(min_value=0, max_value=2**32)))
    depends_on = {names[j]: [names[i] for i in range(j) if rng.random() < density] for j in range(size)}
    failed = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    ghosts = draw(st.lists(st.sampled_from(["ghost-1", "ghost-2"]), unique=True))
    return depends_on, failed + ghosts


def reference(depends_on: dict[str, list[str]], failed: list[str]) -> tuple[set[str], dict[str, set[str]]]:
    """Brute force: ancestors in the failed-induced subgraph, one query per symptom."""
    full = nx.DiGraph()
    full.add_nodes_from(depends_on)
    full.add_edges_from((dep, node) for node, deps in depends_on.items() for dep in deps)
    full.add_nodes_from(failed)
    induced = full.subgraph(failed)
    roots = {node for node in induced if induced.in_degree(node) == 0}
    symptoms = {node: nx.ancestors(induced, node) & roots for node in induced if node not in roots}
    return roots, symptoms


@settings(max_examples=300, deadline=None)
@given(dags_and_failures())
def test_matches_brute_force_reference(case: tuple[dict[str, list[str]], list[str]]) -> None:
    depends_on, failed = case
    graph = DependencyGraph(depends_on)
    result = graph.analyze(failed)
    roots, symptoms = reference(depends_on, failed)

    assert result.roots == roots
    assert dict(result.symptoms) == symptoms
    # Every failed node is exactly one of root or symptom.
    assert result.roots | result.symptoms.keys() == set(failed)
    assert not result.roots & result.symptoms.keys()
    for root in result.roots:
        if root in graph:
            assert not graph.dependencies(root) & set(failed)
    for attributed in result.symptoms.values():
        assert attributed
        assert attributed <= result.roots
    for root in result.roots:
        expected = graph.downstream(root) if root in graph else set()
        assert result.blast_radius[root] == expected
        assert result.incident_groups()[root] <= result.blast_radius[root]


@settings(max_examples=150, deadline=None)
@given(dags_and_failures(), st.randoms(use_true_random=False))
def test_order_of_failed_does_not_matter(
    case: tuple[dict[str, list[str]], list[str]], shuffler: random.Random
) -> None:
    depends_on, failed = case
    graph = DependencyGraph(depends_on)
    shuffled = list(failed)
    shuffler.shuffle(shuffled)
    first = graph.analyze(sorted(failed))
    second = graph.analyze(shuffled * 2)
    assert first == second
    assert list(first.symptoms) == list(second.symptoms)
    assert list(first.blast_radius) == list(second.blast_radius)
    assert first.incident_groups() == second.incident_groups()


@settings(max_examples=150, deadline=None)
@given(dags_and_failures(), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=20))
def test_learned_edges_keep_the_graph_acyclic(
    case: tuple[dict[str, list[str]], list[str]], attempts: list[tuple[int, int]]
) -> None:
    depends_on, _failed = case
    graph = DependencyGraph(depends_on)
    for a, b in attempts:
        component, dependency = f"n{a}", f"n{b}"
        before = graph._g.copy()
        would_cycle = component == dependency or (
            component in before and dependency in before and nx.has_path(before, component, dependency)
        )
        exists = before.has_edge(dependency, component)
        added = graph.add_learned_edge(component, dependency)
        assert added == (not would_cycle and not exists)
        assert nx.is_directed_acyclic_graph(graph._g)
        if not would_cycle:
            assert dependency in graph.dependencies(component)
