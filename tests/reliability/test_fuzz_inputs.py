"""Fuzzing the files operators write: whatever is in them, the loaders either accept them or say
clearly what is wrong (file and position) — they never crash with anything else."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from healer.config import load_config
from healer.errors import ConfigError, PolicyError
from healer.plan.policy import load_policies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["5s", "500ms", "2m", "-1s", "http://127.0.0.1:1/", "*", "crash", "restart", "escalate"]),
)
keys = st.one_of(
    st.sampled_from(
        [
            "state_dir",
            "policies_dir",
            "components",
            "command",
            "argv",
            "probes",
            "type",
            "url",
            "interval",
            "timeout",
            "failure_threshold",
            "depends_on",
            "labels",
            "rto",
            "store",
            "synchronous",
            "policies",
            "name",
            "match",
            "failures",
            "steps",
            "strategy",
            "max_attempts",
            "cooldown",
            "version",
            "http",
        ]
    ),
    st.text(min_size=1, max_size=8),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


def dump(doc: Any) -> str:
    import io

    buf = io.StringIO()
    YAML(typ="safe").dump(doc, buf)
    return buf.getvalue()


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(documents)
def test_config_loader_never_crashes_on_structured_input(doc: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "healer.yaml"
        path.write_text(dump(doc))
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(path) in str(exc)


@FUZZ
@given(st.text(max_size=200))
def test_config_loader_never_crashes_on_arbitrary_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "healer.yaml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(path) in str(exc)


@FUZZ
@given(st.one_of(documents.map(dump), st.text(max_size=200)))
def test_policy_loader_never_crashes(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_text(text)
        try:
            load_policies([path])
        except PolicyError as exc:
            assert exc.problems and all(p.startswith(f"{path}:") for p in exc.problems)
