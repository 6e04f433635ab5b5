"""Shell metacharacters and ``../`` in component names or payloads never reach a shell and never
escape the state directory: through the whole Execute path (intent, actuator, outcome)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from healer.execute.builtins.command import ExecActuator
from healer.execute.safety import check_templates, placeholders
from healer.knowledge.events import EventType as T
from tests.execute_harness import harness
from tests.helpers import free_port
from tests.ledger import Ledger

HOSTILE = [
    "x;touch PWNED",
    "$(touch PWNED)",
    "`touch PWNED`",
    "a|touch PWNED",
    "a&&touch PWNED",
    "../../PWNED",
    "..",
    "a/../../PWNED",
    "svc\ntouch PWNED",
    "svc --delete",
    "svc'\"",
]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path, free_port())
    led.start()
    try:
        yield led
    finally:
        led.stop()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_component_names_are_refused_before_any_program_file_or_request(
    tmp_path: Path, ledger: Ledger, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "state"
    actions_each = [
        [ledger.exec_action("apply", "{component}")],
        [{"actuator": "feature_flag", "action": "set", "params": {"flags": {"degraded": True}}}],
        [{"actuator": "http", "action": "request", "params": {"url": f"{ledger.base}/apply/{{component}}"}}],
        [
            {
                "actuator": "mqtt_publish",
                "action": "publish",
                "params": {"topic": "healer/{component}", "port": free_port()},
            }
        ],
        [{"actuator": "systemd", "action": "restart", "params": {}}],
        [{"actuator": "symlink_swap", "action": "swap", "params": {"root": str(state), "to": "{component}"}}],
        [{"actuator": "checkpoint_restore", "action": "restore", "params": {"dest": str(state / "x")}}],
    ]
    async with harness(tmp_path) as h:
        before = files_under(tmp_path)
        for actions in actions_each:
            iid = await h.plan(name, actions)
            await h.settle()
            failed = h.of(T.STEP_FAILED, iid)
            assert failed, f"{actions[0]['actuator']} ran for component {name!r}"
            assert (
                "refusing to substitute" in failed[0].data["error"]
                or "invalid component name" in failed[0].data["error"]
            ), failed[0].data["error"]
        after = files_under(tmp_path)
    assert ledger.entries() == [], "nothing reached the ledger: no program ran, no request was sent"
    assert not list(tmp_path.rglob("*PWNED*")) and not Path("/PWNED").exists()
    new = {p for p in after - before if not p.is_relative_to(state)}
    assert new == set(), f"files appeared outside the state directory: {new}"


async def test_metacharacters_in_policy_arguments_arrive_literally(tmp_path: Path, ledger: Ledger) -> None:
    literal = "a;touch PWNED|$(id)`id`&&x>y"
    action = ledger.exec_action("apply", literal)
    async with harness(tmp_path) as h:
        iid = await h.plan("svc", [action])
        await h.settle()
        assert h.of(T.STEP_SUCCEEDED, iid)
    assert [e["name"] for e in ledger.entries()] == [literal]
    assert not list(tmp_path.rglob("*PWNED*"))


@pytest.mark.parametrize(
    ("actuator", "action", "params", "error"),
    [
        ("feature_flag", "set", {"flags": {"a": True}, "set": "../../escape"}, "invalid flag set name"),
        ("feature_flag", "set", {"flags": {"../a": True}}, "invalid flag name"),
        ("symlink_swap", "swap", {"root": "{state}", "to": "../../outside"}, "invalid version name"),
        (
            "symlink_swap",
            "swap",
            {"root": "{state}/../..", "to": "v1"},
            "outside the directories healer may change",
        ),
        ("symlink_swap", "swap", {"root": "/etc", "to": "v1"}, "outside the directories healer may change"),
        ("symlink_swap", "swap", {"root": "{state}", "to": "v1", "link": "../current"}, "invalid link name"),
        (
            "checkpoint_restore",
            "restore",
            {"dest": "{state}/../escape"},
            "outside the directories healer may change",
        ),
        ("checkpoint_restore", "restore", {"dest": "{state}/x", "agent": "../svc"}, "invalid agent name"),
        (
            "checkpoint_restore",
            "restore",
            {"dest": "{state}/x", "checkpoint": "../../ck"},
            "invalid checkpoint name",
        ),
    ],
)
async def test_dot_dot_in_payloads_cannot_leave_the_allowed_roots(
    tmp_path: Path, actuator: str, action: str, params: dict[str, object], error: str
) -> None:
    state = tmp_path / "state"
    params = {k: v.replace("{state}", str(state)) if isinstance(v, str) else v for k, v in params.items()}
    async with harness(tmp_path) as h:
        (state / "v1").mkdir(parents=True, exist_ok=True)
        before = files_under(tmp_path)
        iid = await h.plan("svc", [{"actuator": actuator, "action": action, "params": params}])
        await h.settle()
        failed = h.of(T.STEP_FAILED, iid)
        assert failed and error in failed[0].data["error"], failed
        after = files_under(tmp_path)
    assert {p for p in after - before if not p.is_relative_to(state)} == set()
    assert not (tmp_path / "escape").exists() and not (tmp_path / "outside").exists()


def test_exec_refuses_shells_placeholders_in_the_program_and_unknown_placeholders() -> None:
    act = ExecActuator.__new__(ExecActuator)
    for argv, why in [
        (["sh", "-c", "echo hi"], "never through a shell"),
        (["/bin/bash", "-c", "echo hi"], "never through a shell"),
        (["/usr/bin/env", "bash"], "never through a shell"),
        (["{component}"], "cannot contain placeholders"),
        ([sys.executable, "{component.__class__}"], "not allowed"),
        ([sys.executable, "{0}"], "not allowed"),
        ([sys.executable, "{}"], "not allowed"),
        ([sys.executable, "{component!r}"], "no format spec or conversion"),
        ([sys.executable, "{component:>20}"], "no format spec or conversion"),
        ([sys.executable, "{component"], "bad template"),
        ([sys.executable, "{HOME}"], "not allowed"),
    ]:
        with pytest.raises(ValueError, match=why):
            act.validate("run", {"argv": argv})
    with pytest.raises(ValueError, match="invalid variable name"):
        act.validate("run", {"argv": [sys.executable], "env": {"A=B": "x"}})
    assert placeholders("{{literal}} {component}-{key}") == ["component", "key"]
    check_templates({"a": ["{incident}", {"b": "{key}"}]})
