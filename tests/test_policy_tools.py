"""Policy authoring tools: check (file:line:column messages), schema, the starter set and the docs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healer.errors import PolicyError
from healer.plan.policy import SCHEMA_MODELINE, installed_actuators, load_policies, policy_schema_text
from tests.helpers import healer_cli
from tests.plan_harness import EXECUTE_ACTUATORS

ROOT = Path(__file__).resolve().parent.parent
BROKEN = "tests/data/broken_policies"

EXPECTED = [
    "01-typo-actuator.yaml:11:9: policies[0].steps[1].actuator: unknown actuator 'restrat' "
    "(did you mean 'restart'?)",
    "02-unknown-strategy.yaml:6:9: policies[0].steps[0].strategy: unknown strategy 'rollbak' "
    "(did you mean 'rollback'?)",
    "03-malformed.yaml:6:10: malformed YAML: expected ',' or ']', but got ':'",
    "04-wrong-types.yaml:4:5: policies[0].priority: Input should be a valid integer, "
    "unable to parse string as an integer",
    "04-wrong-types.yaml:8:9: policies[0].steps[0].max_attempts: Input should be a valid integer, "
    "unable to parse string as an integer",
    "04-wrong-types.yaml:9:9: policies[0].steps[0].cooldown: expected a duration such as 5s, 500ms or 2m, "
    "got '5 minutes'",
    "04-wrong-types.yaml:10:9: policies[0].steps[0].backoff: Input should be greater than or equal to 1",
    "05-unknown-key.yaml:7:9: policies[0].steps[0].retries: Extra inputs are not permitted",
    "05-unknown-key.yaml:8:5: policies[0].on_call: Extra inputs are not permitted",
    "06-escalate-not-last.yaml:6:9: policies[0].steps[0].strategy: 'escalate' ends the chain; "
    "steps after it would never run",
    "07-missing-params.yaml:6:9: policies[0].steps[0].standby: strategy 'failover' needs `standby`",
    "07-missing-params.yaml:8:9: policies[0].steps[1].actions: strategy 'compensate' needs `actions`",
    "07-missing-params.yaml:9:9: policies[0].steps[2].action: actuator 'process' needs an `action`",
    "08-bad-conditions.yaml:2:1: timezone: unknown timezone 'Mars/Olympus_Mons'",
    "08-bad-conditions.yaml:8:9: policies[0].when.evidence.exit_code: unknown operator 'lesser' "
    "(known: eq, ne, in, not_in, gt, gte, lt, lte, matches, exists)",
    "08-bad-conditions.yaml:12:33: policies[0].steps[0].when.history.incidents: expected a count comparison "
    "such as {gte: 3}, got 'many'",
    "08-bad-conditions.yaml:16:33: policies[1].when.time.between[1]: expected a time such as 08:30, "
    "got '25:00'",
    "09-budget.yaml:6:5: maintenance[0].cron: invalid cron expression '61 * * * *': Bad minute",
    "09-budget.yaml:8:5: maintenance[1]: an explicit window needs both `start` and `end`",
    "10-budget-again.yaml:2:1: budget: the disruption budget is fleet-wide: "
    f"already set in {BROKEN}/09-budget.yaml",
    "10-budget-again.yaml:8:5: policies[1].name: duplicate policy name 'dup' (also policies[0] of this file)",
    "11-not-a-mapping.yaml:1:1: expected a mapping with a 'policies' list",
    "12-budget-range.yaml:3:3: budget.min_healthy: Input should be less than or equal to 1",
    "12-budget-range.yaml:4:3: budget.max_actions: Input should be greater than or equal to 1",
]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "healer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_check_reports_every_problem_with_file_line_column_and_key_path() -> None:
    out = run("policy", "check", BROKEN)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [f"{BROKEN}/{line}" for line in EXPECTED]
    assert out.stderr.strip() == f"{len(EXPECTED)} problem(s)"


def test_check_passes_the_starter_set_and_exits_0() -> None:
    out = run("policy", "check", "policies")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok: ")


def test_starter_set_and_examples_start_with_the_schema_modeline() -> None:
    files = sorted((ROOT / "policies").rglob("*.yaml"))
    assert len(files) >= 6
    for f in files:
        first = f.read_text().splitlines()[0]
        depth = len(f.relative_to(ROOT / "policies").parts) - 1
        want = SCHEMA_MODELINE.replace("../docs/", "../" * depth + "../docs/")
        assert first == want, f


def test_examples_are_valid_with_the_execute_actuators() -> None:
    ps = load_policies([ROOT / "policies" / "examples"], installed=EXECUTE_ACTUATORS)
    kinds = {s.kind for p in ps.policies for s in p.steps}
    assert {"restart", "rollback", "failover", "degrade", "swap_model", "compensate", "escalate"} <= kinds


def test_every_yaml_example_in_the_docs_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "policies.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8
    for i, block in enumerate(blocks):
        f = tmp_path / f"block{i:02d}.yaml"
        f.write_text(block)
        try:
            load_policies([f], installed=EXECUTE_ACTUATORS)
        except PolicyError as exc:
            raise AssertionError(f"docs/policies.md yaml block {i}:\n{block}\n{exc}") from None


def test_committed_schema_is_the_generated_one() -> None:
    out = run("policy", "schema")
    assert out.returncode == 0
    committed = (ROOT / "docs" / "policy.schema.json").read_text()
    assert out.stdout == committed == policy_schema_text()
    schema = json.loads(committed)
    step = schema["$defs"]["Step"]["properties"]
    assert "approval" in step and "verify" in step and "when" in step


def test_actuators_are_read_from_the_entry_points_at_check_time(tmp_path: Path) -> None:
    """A plugin registered under healer.actuators is known to `policy check` without any code change."""
    pol = tmp_path / "p.yaml"
    pol.write_text(
        "policies:\n  - name: p\n    match: {failures: [crash]}\n    steps:\n"
        "      - {actuator: fancy, action: poke}\n"
    )
    out = run("policy", "check", str(pol))
    assert out.returncode == 1 and "unknown actuator 'fancy'" in out.stdout
    dist = tmp_path / "site" / "fancy_actuator-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fancy-actuator\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[healer.actuators]\nfancy = fancy_actuator:Fancy\n")
    out = run("policy", "check", str(pol), env={"PYTHONPATH": str(tmp_path / "site")})
    assert out.returncode == 0, out.stdout
    assert "process" in installed_actuators()


def test_declared_actions_of_an_installed_actuator_are_checked(tmp_path: Path) -> None:
    # The built-in process actuator declares ACTIONS (restart, stop, start).
    pol = tmp_path / "p.yaml"
    pol.write_text(
        "policies:\n  - name: p\n    match: {failures: [crash]}\n    steps:\n"
        "      - {actuator: process, action: restrat}\n"
    )
    out = healer_cli("policy", "check", str(pol))
    assert out.returncode == 1
    assert (
        f"{pol}:5:29: policies[0].steps[0].action: actuator 'process' has no action 'restrat'" in out.stdout
    )


# -- the loader never crashes on any document --------------------------------------------------------
KEYS = [
    "version",
    "timezone",
    "budget",
    "maintenance",
    "policies",
    "name",
    "priority",
    "match",
    "when",
    "steps",
    "components",
    "labels",
    "failures",
    "strategy",
    "actuator",
    "action",
    "params",
    "actions",
    "max_attempts",
    "cooldown",
    "backoff",
    "window",
    "verify",
    "timeout",
    "stable_for",
    "approval",
    "default",
    "evidence",
    "time",
    "history",
    "between",
    "days",
    "within",
    "incidents",
    "cron",
    "duration",
    "start",
    "end",
    "max_concurrent",
    "min_healthy",
    "flags",
    "standby",
    "promote",
    "on_failure",
    "gte",
    "in",
    "matches",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "restart",
            "rollback",
            "escalate",
            "crash",
            "*",
            "5s",
            "-1s",
            "25:00",
            "Europe/Berlin",
            "0 2 * * *",
            "[",
            "process",
            "restrat",
            "",
            "mon",
            "approve",
        ]
    ),
    st.text(max_size=12),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), children, max_size=5),
    ),
    max_leaves=30,
)
LINE = re.compile(r"^.+\.yaml:\d+:\d+: ")


def _load_text(text: str) -> Any:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "fuzz.yaml"
        f.write_text(text)
        try:
            return load_policies([f], installed=EXECUTE_ACTUATORS)
        except PolicyError as exc:
            assert exc.problems
            for p in exc.problems:
                assert LINE.match(p), p
            return exc


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_generated_documents_never_crash_the_loader(doc: Any) -> None:
    wrapped = {"version": 1, "policies": [doc]} if not isinstance(doc, dict) else doc
    _load_text(json.dumps(wrapped, default=str, allow_nan=True))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes_the_loader(text: str) -> None:
    _load_text(text)


step_values = st.one_of(scalars, documents)
steps = st.fixed_dictionaries(
    {},
    optional={
        k: step_values
        for k in (
            "strategy",
            "actuator",
            "action",
            "params",
            "actions",
            "max_attempts",
            "cooldown",
            "backoff",
            "window",
            "verify",
            "timeout",
            "approval",
            "when",
            "standby",
            "promote",
            "flags",
            "on_failure",
        )
    },
) | st.fixed_dictionaries({"strategy": st.sampled_from(["restart", "rollback", "failover", "escalate", "x"])})
policies = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b", "a", "-bad-", ""]),
        "match": st.fixed_dictionaries(
            {"failures": st.lists(st.sampled_from(["crash", "*", 3]), max_size=2)},
            optional={"components": step_values, "labels": step_values},
        ),
    },
    optional={"steps": st.lists(steps, max_size=4), "when": step_values, "priority": scalars},
)
files = st.fixed_dictionaries(
    {"policies": st.lists(policies, max_size=3)},
    optional={"budget": step_values, "maintenance": step_values, "timezone": scalars, "version": scalars},
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files)
def test_generated_policy_shaped_documents_never_crash_the_loader(doc: dict[str, Any]) -> None:
    _load_text(json.dumps(doc, default=str, allow_nan=True))
