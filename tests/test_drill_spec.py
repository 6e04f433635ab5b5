"""Drill files: every rejection is a clear file:line message; the loader never crashes (fuzzed)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healer.config import HealerConfig
from healer.drill.spec import DrillError, load_drill
from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import FleetState

LOCATED = re.compile(r"^.+:\d+:\d+: \S")

CONFIG = HealerConfig(
    state_dir=Path("/nonexistent/state"),
    policies_dir=Path("/nonexistent/policies"),
    components={
        "db": {"rto": 5},
        "planner": {"depends_on": ["db"], "rto": 10},
        "writer": {"depends_on": ["db"]},
    },
)

VALID = """\
version: 1
name: ok
blast_radius:
  components: [planner, db]
  max_concurrent: 2
faults:
  - kind: kill
    target: planner
  - kind: dependency_outage
    target: db
    duration: 2s
  - kind: cpu_pressure
    target: planner
    workers: 2
    duration: 1s
criteria:
  rto: {planner: 3s}
"""


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "drill.yaml"
    path.write_text(textwrap.dedent(text))
    return load_drill(path, CONFIG)


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(DrillError) as info:
        _load(tmp_path, text)
    for p in info.value.problems:
        assert LOCATED.match(p), p
    return info.value.problems


def test_valid_drill_loads(tmp_path: Path) -> None:
    drill = _load(tmp_path, VALID)
    assert drill.name == "ok"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("edit", "where", "message"),
    [
        (
            ("    target: planner\n  - kind: dep", "    target: nobody\n  - kind: dep"),
            ":8:",
            "unknown component 'nobody'",
        ),
        (("components: [planner, db]", "components: [planner]"), ":10:", "outside the blast radius"),
        (("kind: kill", "kind: explode"), ":7:", "unknown fault kind 'explode'"),
        (("workers: 2", "workers: 0"), ":14:", "greater than or equal to 1"),
        (("    duration: 2s\n", ""), ":9:", "needs a duration"),
        (("version: 1", "version: 2"), ":1:", "version"),
        (("  max_concurrent: 2", "  max_concurrent: many"), ":5:", "valid integer"),
        (("rto: {planner: 3s}", "rto: {writerr: 3s}"), ":17:", "unknown component 'writerr'"),
        (("rto: {planner: 3s}", "rpo: {writerr: 3s}"), ":17:", "unknown component 'writerr'"),
        (("rto: {planner: 3s}", "rpo: {planner: soon}"), ":17:", "criteria.rpo.planner"),
        (("    workers: 2\n", "    workers: 2\n    colour: red\n"), ":15:", "colour"),
    ],
)
def test_rejections_name_file_line_and_problem(
    tmp_path: Path, edit: tuple[str, str], where: str, message: str
) -> None:
    assert edit[0] in VALID
    problems = _problems(tmp_path, VALID.replace(edit[0], edit[1], 1))
    assert any(where in p and message in p for p in problems), problems


def test_dependency_outage_needs_a_dependency(tmp_path: Path) -> None:
    text = VALID.replace("components: [planner, db]", "components: [planner, db, writer]").replace(
        "target: db", "target: writer"
    )
    problems = _problems(tmp_path, text)
    assert any(":10:" in p and "no component's dependency" in p for p in problems), problems


def test_malformed_yaml_and_missing_file(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "version: 1\nname: [unclosed\n")
    assert "malformed YAML" in problems[0]
    with pytest.raises(DrillError) as info:
        load_drill(tmp_path / "missing.yaml", CONFIG)
    assert "file not found" in info.value.problems[0]


# -- fuzzing ----------------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False), st.text(max_size=12)
)
keys = st.sampled_from(
    [
        "version",
        "name",
        "faults",
        "kind",
        "target",
        "blast_radius",
        "components",
        "duration",
        "criteria",
        "rto",
        "steady_state",
        "healthy",
        "timeout",
        "workers",
        "after",
        "x",
    ]
)
trees = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=20,
)


def _check(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_drill(path, CONFIG)
    except DrillError as exc:
        assert exc.problems
        for p in exc.problems:
            assert LOCATED.match(p), p


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_fuzz_structures(tmp_path: Path, tree: object) -> None:
    import io

    from ruamel.yaml import YAML

    buf = io.StringIO()
    YAML().dump({"version": 1, "name": "f", "doc": tree} if not isinstance(tree, dict) else tree, buf)
    _check(tmp_path, buf.getvalue())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(VALID)), junk=st.text(max_size=8), drop=st.integers(0, 20))
def test_fuzz_mutations(tmp_path: Path, cut: int, junk: str, drop: int) -> None:
    lines = (VALID[:cut] + junk + VALID[cut:]).splitlines(keepends=True)
    del lines[drop : drop + 1]
    _check(tmp_path, "".join(lines))


def test_incidents_in_a_drills_window_and_radius_are_drill_incidents() -> None:
    def ev(
        pos: int, typ: str, ts: float, comp: str | None = None, inc: int | None = None, **data: object
    ) -> RecordedEvent:
        return RecordedEvent(pos, typ, ts, comp, inc, data)

    s = FleetState().apply_all(
        [
            ev(1, T.DRILL_STARTED, 100.0, drill=1, name="d", radius=["planner"], deadline=200.0),
            ev(2, T.INCIDENT_DETECTED, 101.0, "planner", 1),
            ev(3, T.INCIDENT_DETECTED, 101.0, "writer", 2),  # outside the radius: a real incident
            ev(4, T.DRILL_FINISHED, 110.0, drill=1, verdict="passed", reasons=[]),
            ev(5, T.INCIDENT_DETECTED, 111.0, "planner", 3),  # after the drill: real
            ev(6, T.DRILL_STARTED, 300.0, drill=2, name="crashed-runner", radius=["planner"], deadline=310.0),
            ev(7, T.INCIDENT_DETECTED, 320.0, "planner", 4),  # past the unfinished drill's deadline
        ]
    )
    assert [s.incidents[i].drill for i in (1, 2, 3, 4)] == [1, None, None, None]
    assert s.drills[1].verdict == "passed" and s.drills[1].incidents == [1]
    assert s.next_drill == 3
