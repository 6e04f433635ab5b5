"""The failure taxonomy file and its condition language."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from healer.analyze.taxonomy import ConditionError, compile_condition, load_taxonomy
from healer.errors import ConfigError

ISSUE_CLASSES = {
    "crash",
    "hang",
    "resource_exhaustion",
    "dependency_outage",
    "network_partition",
    "state_corruption",
    "breaker_open",
    "flapping",
    "model_regression",
}


def test_shipped_taxonomy_has_every_class_with_a_signature_and_a_description() -> None:
    tax = load_taxonomy()
    assert set(tax.names) >= ISSUE_CLASSES
    for name, cls in tax.classes.items():
        assert cls.description, name
        assert any(s.failure_class.name == name for s in tax.signatures), name
    assert tax.transition_window == 60.0
    assert {"http", "tcp", "mqtt_heartbeat"} <= tax.network_probe_types
    assert "process" in tax.local_probe_types


@pytest.mark.parametrize(
    ("cond", "facts", "expected"),
    [
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": True}, {"a": 1}, False),  # YAML true is not the number 1
        ({"a": [1, 2]}, {"a": 2}, True),
        ({"a": [1, None]}, {}, True),  # null in a list means "absent"
        ({"a": {"gt": 4}}, {"a": 5}, True),
        ({"a": {"gt": 4}}, {"a": 4}, False),
        ({"a": {"gt": 4}}, {"a": "9"}, False),  # no numbers from strings
        ({"a": {"ge": 0.5, "lt": 0.8}}, {"a": 0.5}, True),
        ({"a": {"le": 1}}, {}, False),
        ({"a": {"ne": "x"}}, {"a": "y"}, True),
        ({"a": {"in": ["x"]}}, {"a": "x"}, True),
        ({"a": {"not_in": ["x"]}}, {"a": "x"}, False),
        ({"a": {"contains": "http"}}, {"a": ["tcp", "http"]}, True),
        ({"a": {"contains": "refused"}}, {"a": "connection refused"}, True),
        ({"a": {"contains": "k"}}, {"a": {"k": 1}}, True),
        ({"a": {"contains": "k"}}, {"a": 3}, False),
        ({"a": {"contains_any": ["x", "tcp"]}}, {"a": ["tcp"]}, True),
        ({"a": {"empty": False}}, {"a": ["x"]}, True),
        ({"a": {"empty": True}}, {"a": []}, True),
        ({"a": {"empty": True}}, {}, True),
        ({"a": {"exists": True}}, {"a": 0}, True),
        ({"a": {"exists": False}}, {"a": None}, True),
        ({"any": [{"a": 1}, {"b": 2}]}, {"b": 2}, True),
        ({"all": [{"a": 1}, {"b": 2}]}, {"b": 2}, False),
        ({"not": {"a": 1}}, {"a": 2}, True),
        ({"a": 1, "b": 2}, {"a": 1, "b": 3}, False),
    ],
)
def test_condition_language(cond: dict[str, object], facts: dict[str, object], expected: bool) -> None:
    # Generic fact names are checked against the known facts; use values.* to stay generic here.
    renamed = _rename(cond)
    test = compile_condition(renamed)
    assert test({f"values.{k}": v for k, v in facts.items()}) is expected


def _rename(cond: object) -> object:
    if isinstance(cond, dict):
        out = {}
        for k, v in cond.items():
            if k in ("any", "all"):
                out[k] = [_rename(c) for c in v]
            elif k == "not":
                out[k] = _rename(v)
            else:
                out[f"values.{k}"] = v
        return out
    return cond


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        ({"proces_alive": True}, "unknown fact 'proces_alive' (did you mean 'process_alive'?)"),
        ({"transitions": {"gte": 4}}, "unknown operator 'gte' (did you mean 'gt'?)"),
        ({"transitions": {"gt": "four"}}, "'gt' takes a number"),
        ({"transitions": {}}, "needs at least one operator"),
        ({"any": []}, "'any' takes a non-empty list"),
        ({"health": {"in": "failing"}}, "'in' takes a list"),
        ({"health": {"exists": "yes"}}, "'exists' takes true or false"),
        ({"not": 3}, "a condition must be a mapping"),
    ],
)
def test_invalid_conditions_are_refused(cond: dict[str, object], message: str) -> None:
    with pytest.raises(ConditionError, match=re.escape(message)):
        compile_condition(cond)


def test_taxonomy_file_errors_name_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "taxonomy.yaml"
    bad.write_text(
        """\
version: 2
classes:
  crash:
    description: gone
  hang:
    description: stuck
signatures:
  - class: crash
    id: gone
    when:
      process_alive: false
  - class: crsh
    id: typo
    when: {}
  - class: crash
    id: gone
    when:
      transitions: {gte: 3}
"""
    )
    with pytest.raises(ConfigError) as exc:
        load_taxonomy(bad)
    text = str(exc.value)
    assert f"{bad}:12:5: signatures[1].class: unknown class 'crsh' (did you mean 'crash'?)" in text
    assert f"{bad}:16:5: signatures[2].id: duplicate signature id 'gone'" in text
    assert f"{bad}:18:21: signatures[2].when.transitions.gte: unknown operator 'gte'" in text
    assert f"{bad}:5:3: classes.hang: class 'hang' has no signature" in text


def test_taxonomy_schema_errors_are_located(tmp_path: Path) -> None:
    bad = tmp_path / "taxonomy.yaml"
    bad.write_text("classes:\n  crash: {}\nsignatures:\n  - class: crash\n    id: Bad Id\n")
    with pytest.raises(ConfigError, match=r"taxonomy.yaml:5:\d+: signatures\[0\]\.id"):
        load_taxonomy(bad)
