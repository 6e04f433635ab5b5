"""Actuator plugins: entry-point discovery, refusal of broken plugins, the block list, and the
example plugin package installed with pip into this test environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from healer.config import ExecuteConfig
from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext, ActuatorServices
from healer.execute.registry import ActuatorRegistry
from tests.helpers import (
    agent_component,
    events,
    free_port,
    is_healthy,
    running_daemon,
    wait_for,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BUILTINS = {
    "process",
    "systemd",
    "exec",
    "http",
    "mqtt_publish",
    "feature_flag",
    "symlink_swap",
    "checkpoint_restore",
}

BROKEN_MODULE = """
from typing import ClassVar

class Good:
    name: ClassVar[str] = "good"
    idempotent: ClassVar[bool] = True
    default_timeout: ClassVar[float] = 1.0
    actions: ClassVar[frozenset[str]] = frozenset({"go"})
    def __init__(self, services): pass
    def validate(self, action, params): pass
    async def perform(self, ctx): return {"went": True}

class NoPerform:
    name = "no_perform"; idempotent = True; default_timeout = 1.0; actions = frozenset({"go"})
    def __init__(self, services): pass
    def validate(self, action, params): pass

class SyncPerform(Good):
    name = "sync_perform"
    def perform(self, ctx): return {}

class WrongName(Good):
    name = "something_else"

class Sloppy:
    name = "sloppy"; idempotent = "yes"; default_timeout = -1; actions = "go"
    def __init__(self, services): pass
    def validate(self, action, params): pass
    async def perform(self, ctx): return {}
    def verify(self, ctx): return True

class Impostor(Good):
    name = "exec"

class FailsToStart(Good):
    name = "fails_to_start"
    def __init__(self, services): raise RuntimeError("no credentials configured")
"""

ENTRY_POINTS = """\
[healer.actuators]
missing_module = no_such_module_xyz:Thing
boom = brokenmod_boom:Anything
no_perform = brokenmod:NoPerform
sync_perform = brokenmod:SyncPerform
wrong_name = brokenmod:WrongName
sloppy = brokenmod:Sloppy
exec = brokenmod:Impostor
fails_to_start = brokenmod:FailsToStart
good = brokenmod:Good
"""


@pytest.fixture
def broken_site(tmp_path: Path) -> Path:
    """A distribution on sys.path with one good and many broken actuator entry points."""
    site = tmp_path / "site"
    info = site / "broken_plugins-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "brokenmod.py").write_text(textwrap.dedent(BROKEN_MODULE))
    (site / "brokenmod_boom.py").write_text("raise RuntimeError('boom at import')\n")
    return site


def plugins_json(*args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    out = subprocess.run(
        [PY, "-m", "healer", "plugins", "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_builtins_are_listed_with_their_distribution_and_version() -> None:
    from importlib.metadata import version

    rows = {r["name"]: r for r in plugins_json()}
    assert set(rows) >= BUILTINS
    for name in BUILTINS:
        assert rows[name]["status"] == "loaded"
        assert (rows[name]["distribution"], rows[name]["version"]) == ("healer", version("healer"))
    assert rows["exec"]["idempotent"] is False and rows["process"]["idempotent"] is True
    assert rows["systemd"]["actions"] == ["reload", "restart", "start", "stop"]
    assert rows["symlink_swap"]["compensates"] and rows["exec"]["verifies"]


def test_broken_plugins_are_refused_with_a_clear_message_and_the_rest_load(broken_site: Path) -> None:
    rows = plugins_json(env={"PYTHONPATH": str(broken_site)})
    by = {(r["name"], r["distribution"]): r for r in rows}
    assert by[("good", "broken-plugins")]["status"] == "loaded"
    assert by[("good", "broken-plugins")]["version"] == "1.0"
    assert all(by[(n, "healer")]["status"] == "loaded" for n in BUILTINS), "built-ins win over an impostor"
    want = {
        "missing_module": "failed to import: ModuleNotFoundError: No module named 'no_such_module_xyz'",
        "boom": "failed to import: RuntimeError: boom at import",
        "no_perform": "has no 'perform' method",
        "sync_perform": "'perform' must be an async def",
        "wrong_name": "declares name 'something_else' but is registered as 'wrong_name'",
        "sloppy": "has no 'idempotent' boolean",
        "exec": "the name 'exec' is taken by healer",
    }
    for name, message in want.items():
        row = by[(name, "broken-plugins")]
        assert row["status"] == "refused", row
        origin = f"entry point {name!r} ({row['entry_point']}) of distribution broken-plugins 1.0"
        assert row["reason"].startswith(f"actuator plugin refused: {origin}"), row["reason"]
        assert message in row["reason"], row["reason"]
    sloppy = by[("sloppy", "broken-plugins")]["reason"]
    assert (
        "positive 'default_timeout'" in sloppy
        and "'actions'" in sloppy
        and "'verify' must be an async def" in sloppy
    )
    # Failing in __init__ is only found when the daemon instantiates it: `plugins` lists it loaded.
    assert by[("fails_to_start", "broken-plugins")]["status"] == "loaded"


def test_the_registry_refuses_at_load_and_names_the_refusal_when_asked_for_it(
    broken_site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(broken_site))
    reg = ActuatorRegistry.discover(ActuatorServices(None, tmp_path, ExecuteConfig(), None))
    assert "good" in reg.actuators and set(reg.actuators) >= BUILTINS
    assert reg.actuators["exec"].__class__.__module__ == "healer.execute.builtins.command"
    assert "failed to start: RuntimeError: no credentials configured" in reg.refused["fails_to_start"]
    with pytest.raises(
        ActuatorError, match=r"no actuator named 'no_perform' is installed \(actuator plugin refused"
    ):
        reg.get("no_perform")
    summary = reg.summary()
    assert summary["loaded"]["good"] == "broken-plugins 1.0"
    assert set(summary["refused"]) == {
        "missing_module",
        "boom",
        "no_perform",
        "sync_perform",
        "wrong_name",
        "sloppy",
        "exec",
        "fails_to_start",
    }


def test_blocked_actuators_are_never_loaded(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "  {}\n", extra="execute:\n  blocked_actuators: [exec, systemd]\n")
    cfg.write_text(cfg.read_text().replace("components:\n  {}\n", "components: {}\n"))
    rows = {r["name"]: r for r in plugins_json("-c", str(cfg))}
    assert rows["exec"]["status"] == rows["systemd"]["status"] == "blocked"
    assert rows["exec"]["reason"] == "listed in execute.blocked_actuators"
    assert rows["http"]["status"] == "loaded"
    reg = ActuatorRegistry.discover(
        ActuatorServices(None, tmp_path, ExecuteConfig(blocked_actuators=["exec"]), None)
    )
    with pytest.raises(ActuatorError, match=r"blocked by execute\.blocked_actuators"):
        reg.get("exec")


def test_the_daemon_starts_with_broken_plugins_and_records_what_it_refused(
    tmp_path: Path, broken_site: Path
) -> None:
    cfg = write_config(
        tmp_path, agent_component("agent-p", free_port()), extra="execute:\n  blocked_actuators: [systemd]\n"
    )
    with running_daemon(cfg, env={"PYTHONPATH": str(broken_site)}) as d:
        wait_for(lambda: is_healthy(d.state_dir, "agent-p"), what="up and healing")  # signals handled by now
        loaded = events(d.state_dir, "actuators.loaded")[0]["data"]
        assert d.stop() == 0
    assert loaded["loaded"]["good"] == "broken-plugins 1.0" and loaded["loaded"]["exec"].startswith("healer ")
    assert "boom at import" in loaded["refused"]["boom"]
    assert "no credentials configured" in loaded["refused"]["fails_to_start"]
    assert loaded["blocked"] == ["systemd"]


def test_the_example_plugin_installs_with_pip_and_is_discovered(tmp_path: Path) -> None:
    if sys.prefix == sys.base_prefix:
        pytest.fail("run the suite from a virtual environment: this test pip-installs a package into it")
    pkg = tmp_path / "healer-example-actuator"
    shutil.copytree(ROOT / "plugins" / "healer-example-actuator", pkg)  # builds write into the tree

    def pip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "pip", *args], capture_output=True, text=True, timeout=300, check=False
        )

    pip("uninstall", "-y", "-q", "healer-example-actuator")
    try:
        done = pip("install", "-q", "--no-deps", str(pkg))
        assert done.returncode == 0, done.stderr
        rows = {r["name"]: r for r in plugins_json()}
        note = rows["note"]
        assert (note["status"], note["distribution"], note["version"]) == (
            "loaded",
            "healer-example-actuator",
            "0.1.0",
        )
        assert note["compensates"] and note["verifies"] and note["idempotent"]
        # And it works through the registry like any built-in (in a fresh interpreter).
        script = textwrap.dedent(
            f"""
            import asyncio, json
            from pathlib import Path
            from healer.execute.actuators import ActionContext, ActuatorServices
            from healer.execute.registry import ActuatorRegistry
            reg = ActuatorRegistry.discover(ActuatorServices(None, Path({str(tmp_path / "state")!r})))
            note = reg.get("note")
            key = "incident-1/step-0/attempt-1/action-0"
            ctx = ActionContext("svc", "write", {{"text": "restarted {{component}}"}}, key, 1)
            note.validate(ctx.action, ctx.params)
            res = asyncio.run(note.perform(ctx))
            print(json.dumps([res, Path(res["path"]).read_text(), asyncio.run(note.verify(ctx))]))
            """
        )
        out = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        res, text, verified = json.loads(out.stdout)
        assert json.loads(text)["text"] == "restarted svc" and verified is True
        assert Path(res["path"]).is_relative_to(tmp_path / "state" / "notes" / "svc")
    finally:
        gone = pip("uninstall", "-y", "-q", "healer-example-actuator")
        assert gone.returncode == 0, gone.stderr
    assert "note" not in {r["name"] for r in plugins_json()}


def test_action_context_stays_constructible_the_old_way() -> None:
    ctx = ActionContext("svc", "restart", {}, "k", 1)
    assert ctx.timeout == 30.0 and not ctx.compensating and ctx.before == {} and ctx.undoes == ""
