"""The built-in actuators against real parts: processes, a fake ``systemctl`` on PATH that records
its argv, files, a local HTTP server, the Mosquitto broker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
import pytest

from healer.config import CommandConfig, ExecuteConfig
from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext, ActuatorServices
from healer.execute.builtins.checkpoint import CheckpointRestoreActuator
from healer.execute.builtins.command import ExecActuator
from healer.execute.builtins.flags import FeatureFlagActuator
from healer.execute.builtins.http_call import HttpActuator
from healer.execute.builtins.mqtt import MqttPublishActuator, read_retained
from healer.execute.builtins.process import ProcessActuator
from healer.execute.builtins.symlink import SymlinkSwapActuator
from healer.execute.builtins.systemd import SystemdActuator
from healer.supervisor import Supervisor
from tests.broker import Broker
from tests.helpers import free_port, wait_for
from tests.ledger import Ledger

PY = sys.executable
KEY = "incident-1/step-0/attempt-1/action-0"


def ctx(
    action: str, params: dict[str, Any] | None = None, component: str = "svc", **kw: Any
) -> ActionContext:
    return ActionContext(
        component, action, params or {}, kw.pop("key", KEY), 1, kw.pop("timeout", 10.0), **kw
    )


def services(tmp_path: Path, supervisor: Supervisor | None = None, **settings: Any) -> ActuatorServices:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True, mode=0o700)
    return ActuatorServices(supervisor, state, ExecuteConfig.model_validate(settings), None)


# -- process -----------------------------------------------------------------------------------------
@pytest.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[Supervisor]:
    sup = Supervisor(
        {"sleeper": CommandConfig(argv=[PY, "-c", "import time; time.sleep(60)"], stop_timeout=2)},
        tmp_path / "logs",
        lambda kind, comp, data: None,
    )
    try:
        yield sup
    finally:
        await sup.stop_all()
        sup.close()


async def test_process_supervised_start_stop_restart_compensate_verify(
    tmp_path: Path, supervisor: Supervisor
) -> None:
    act = ProcessActuator(services(tmp_path, supervisor))
    started = await act.perform(ctx("start", component="sleeper"))
    pid = started["pid"]
    assert psutil.pid_exists(pid) and await act.verify(ctx("start", component="sleeper")) is True
    assert (await act.perform(ctx("start", component="sleeper"))) == {"already_running": pid}
    restarted = await act.perform(ctx("restart", component="sleeper"))
    assert restarted["pid"] != pid and not psutil.pid_exists(pid)
    stop = ctx("stop", component="sleeper")
    assert (await act.perform(stop))["signal"] == "SIGTERM"
    assert supervisor.pid("sleeper") is None and await act.verify(stop) is True
    # The undo of a stop is a start (and verify of that undo checks it is running again).
    await act.compensate(ctx("stop", component="sleeper", compensating=True))
    assert supervisor.pid("sleeper") is not None
    assert await act.verify(ctx("stop", component="sleeper", compensating=True)) is True
    assert act.compensates("stop", {}) and not act.compensates("restart", {})
    with pytest.raises(ActuatorError, match="has no command"):
        await act.perform(ctx("restart", component="unknown"))
    assert act.is_idempotent("restart", {}) and not act.is_idempotent("signal", {})


async def test_process_restart_rerun_after_a_crash_does_not_restart_twice(tmp_path: Path) -> None:
    # The supervisor labels a process with the key of the action that started it (HEALER_ACTION_KEY);
    # here the label comes from the command's env, as if this key had started it.
    sup = Supervisor(
        {
            "labelled": CommandConfig(
                argv=[PY, "-c", "import time; time.sleep(60)"], env={"HEALER_ACTION_KEY": KEY}
            )
        },
        tmp_path / "logs",
        lambda kind, comp, data: None,
    )
    try:
        act = ProcessActuator(services(tmp_path, sup))
        pid = (await act.perform(ctx("start", component="labelled")))["pid"]
        again = await act.perform(ctx("restart", component="labelled", resumed=True))
        assert again == {"pid": pid, "already_done": True}
        other = await act.perform(
            ctx("restart", component="labelled", resumed=True, key="incident-1/step-0/attempt-2/action-0")
        )
        assert other["pid"] != pid, "a different key is a different restart"
    finally:
        await sup.stop_all()
        sup.close()


HUP_LOGGER = """
import signal, sys, time
out = sys.argv[1]
signal.signal(signal.SIGHUP, lambda *a: open(out, "a").write("hup\\n"))
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(out + ".ready", "w").close()
while True:
    time.sleep(0.05)
"""


async def test_process_by_pid_signal_and_stop_escalating_to_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "hups"
    proc = subprocess.Popen([PY, "-c", HUP_LOGGER, str(out)])
    try:
        wait_for(lambda: Path(str(out) + ".ready").exists(), what="signal handlers installed")
        act = ProcessActuator(services(tmp_path))
        act.validate("signal", {"pid": proc.pid, "signal": "HUP"})
        assert await act.perform(ctx("signal", {"pid": proc.pid, "signal": "HUP"})) == {
            "pid": proc.pid,
            "signal": "SIGHUP",
        }
        wait_for(lambda: out.exists() and out.read_text() == "hup\n", what="SIGHUP delivered")
        assert act.target("signal", {"pid": proc.pid}, "svc") == f"pid:{proc.pid}"
        with pytest.raises(ActuatorError, match="needs a supervised component"):
            await act.perform(ctx("restart", {"pid": proc.pid}))
        # It ignores SIGTERM: after the grace period it gets SIGKILL.
        res = await act.perform(ctx("stop", {"pid": proc.pid, "grace": "0.3s"}))
        assert res["signal"] == "SIGKILL" and res["grace_expired"] == 0.3
        # psutil reaped it (it is our child here), so Popen cannot see the status: check it is gone.
        assert not psutil.pid_exists(proc.pid)
        assert await act.verify(ctx("stop", {"pid": proc.pid})) is True
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(ValueError):
        act.validate("signal", {"pid": 1})
    with pytest.raises(ValueError, match="unknown signal"):
        act.validate("signal", {"signal": "SIGNOPE"})
    with pytest.raises(ActuatorError, match="healer itself"):
        await act.perform(ctx("signal", {"pid": os.getpid()}))


# -- systemd ---------------------------------------------------------------------------------------
FAKE_SYSTEMCTL = """\
#!{py}
import json, os, sys
here = os.path.dirname(os.path.abspath(sys.argv[0]))
with open(os.path.join(here, "argv.log"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
words = [a for a in sys.argv[1:] if not a.startswith("--")]
verb, unit = words[0], words[-1]
if unit == "broken.service":
    print("Job for broken.service failed because the control process exited.", file=sys.stderr)
    sys.exit(1)
state_file = os.path.join(here, "units.json")
units = json.load(open(state_file)) if os.path.exists(state_file) else {{}}
if verb == "is-active":
    s = units.get(unit, "inactive")
    print(s)
    sys.exit(0 if s == "active" else 3)
units[unit] = "inactive" if verb == "stop" else "active"
json.dump(units, open(state_file, "w"))
"""


@pytest.fixture
def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "systemctl"
    exe.write_text(FAKE_SYSTEMCTL.format(py=PY))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir


def argv_log(bindir: Path) -> list[list[str]]:
    return [json.loads(line) for line in (bindir / "argv.log").read_text().splitlines()]


async def test_systemd_runs_systemctl_with_an_exact_argv(tmp_path: Path, fake_systemctl: Path) -> None:
    act = SystemdActuator(services(tmp_path))
    res = await act.perform(ctx("restart"))
    assert res["unit"] == "svc.service"
    assert res["argv"] == [
        str(fake_systemctl / "systemctl"),
        "--no-ask-password",
        "restart",
        "--",
        "svc.service",
    ]
    assert await act.verify(ctx("restart")) is True
    await act.perform(ctx("stop", {"unit": "{component}-worker@2.service", "user": True}))
    assert await act.verify(ctx("stop", {"unit": "{component}-worker@2.service", "user": True})) is True
    # The undo of a stop is a start.
    await act.compensate(
        ctx("stop", {"unit": "{component}-worker@2.service", "user": True}, compensating=True)
    )
    assert argv_log(fake_systemctl) == [
        ["--no-ask-password", "restart", "--", "svc.service"],
        ["--no-ask-password", "is-active", "--", "svc.service"],
        ["--no-ask-password", "--user", "stop", "--", "svc-worker@2.service"],
        ["--no-ask-password", "--user", "is-active", "--", "svc-worker@2.service"],
        ["--no-ask-password", "--user", "start", "--", "svc-worker@2.service"],
    ]
    assert act.target("restart", {"unit": "{component}.service"}, "svc") == "svc.service"


async def test_systemd_failure_bad_unit_and_missing_systemctl(
    tmp_path: Path, fake_systemctl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    act = SystemdActuator(services(tmp_path))
    with pytest.raises(ActuatorError, match=r"systemctl restart broken.service exited 1: Job for broken"):
        await act.perform(ctx("restart", {"unit": "broken.service"}))
    with pytest.raises(ActuatorError, match="invalid systemd unit name"):
        await act.perform(ctx("restart", {"unit": "-{component}.service"}))
    with pytest.raises(ValueError, match="not allowed"):
        act.validate("restart", {"unit": "{unit}.service"})
    with pytest.raises(ValueError, match="cannot 'kill'"):
        act.validate("kill", {})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ActuatorError, match="'systemctl' not found on PATH"):
        await act.perform(ctx("restart"))


# -- exec -------------------------------------------------------------------------------------------------
async def test_exec_passes_a_minimal_environment_with_the_key_and_never_a_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "s3cr3t")
    act = ExecActuator(services(tmp_path))
    script = "import os, json, sys; print(json.dumps([sorted(os.environ), sys.argv[1:], os.getcwd()]))"
    params = {
        "argv": [PY, "-c", script, "{component}", "{incident}", "{key}", "$HOME;echo"],
        "env": {"MODE": "x-{component}"},
        "cwd": str(tmp_path),
    }
    act.validate("run", params)
    res = await act.perform(ctx("run", params))
    names, args, cwd = json.loads(res["stdout"])
    assert "SECRET_TOKEN" not in names and "HOME" not in names
    assert {"PATH", "LANG", "MODE", "HEALER_COMPONENT", "HEALER_INCIDENT", "HEALER_IDEMPOTENCY_KEY"} <= set(
        names
    )
    assert args == ["svc", "1", KEY, "$HOME;echo"], "literal arguments arrive as they are: no shell"
    assert cwd == str(tmp_path)
    assert res["exit_code"] == 0
    assert act.target("run", params, "svc") == os.path.basename(PY)


async def test_exec_exit_codes_and_verify(tmp_path: Path) -> None:
    act = ExecActuator(services(tmp_path))
    code = [PY, "-c", "import sys; sys.exit(int(sys.argv[1]))"]
    with pytest.raises(ActuatorError, match="exited 2"):
        await act.perform(ctx("run", {"argv": [*code, "2"]}))
    assert (await act.perform(ctx("run", {"argv": [*code, "2"], "expect_exit": [0, 2]})))["exit_code"] == 2
    for rc, verdict in (("0", True), ("1", False), ("7", None)):
        assert await act.verify(ctx("run", {"argv": [*code, "0"], "verify": [*code, rc]})) is verdict
    assert await act.verify(ctx("run", {"argv": [*code, "0"]})) is None
    assert not act.is_idempotent("run", {"argv": code}) and act.is_idempotent(
        "run", {"argv": code, "idempotent": True}
    )
    with pytest.raises(ValueError, match="absolute"):
        act.validate("run", {"argv": code, "cwd": "relative/dir"})
    with pytest.raises(ActuatorError, match="cannot run"):
        await act.perform(ctx("run", {"argv": [str(tmp_path / "no-such-program")]}))


GRANDPARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(60)
"""


async def test_exec_cut_short_kills_its_whole_process_group(tmp_path: Path) -> None:
    act = ExecActuator(services(tmp_path))
    pidfile = tmp_path / "grandchild.pid"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await act.perform(ctx("run", {"argv": [PY, "-c", GRANDPARENT, str(pidfile)]}))
    gpid = int(pidfile.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(gpid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, timeout=5, what="the grandchild killed with the group")


# -- http ----------------------------------------------------------------------------------------------
@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path, free_port())
    led.start()
    try:
        yield led
    finally:
        led.stop()


async def test_http_sends_the_idempotency_key_checks_status_and_verifies(
    tmp_path: Path, ledger: Ledger
) -> None:
    act = HttpActuator(services(tmp_path))
    params = {
        "url": f"{ledger.base}/apply/{{component}}",
        "body": {"who": "{component}", "n": 1},
        "verify": {"url": f"{ledger.base}/applied/{{component}}?key={{key}}"},
    }
    act.validate("request", params)
    assert await act.verify(ctx("request", params)) is False
    res = await act.perform(ctx("request", params))
    assert res["status"] == 201 and res["url"] == f"{ledger.base}/apply/svc"
    assert (await act.perform(ctx("request", params)))["status"] == 200, "the server deduplicated the key"
    assert ledger.count("apply", "svc", KEY) == 1 and ledger.count("request", "svc", KEY) == 2
    assert await act.verify(ctx("request", params)) is True
    ledger.control(fail_apply=1)
    with pytest.raises(ActuatorError, match="answered 503"):
        await act.perform(ctx("request", params, key="other"))
    assert act.target("request", params, "svc") == f"127.0.0.1:{ledger.port}"
    assert not act.is_idempotent("request", {"method": "POST"}) and act.is_idempotent(
        "request", {"method": "PUT"}
    )
    assert act.is_idempotent("request", {"method": "POST", "idempotent": True})
    with pytest.raises(ValueError, match="host"):
        act.validate("request", {"url": "http://{component}.example/x"})
    with pytest.raises(ValueError, match="http"):
        act.validate("request", {"url": "file:///etc/passwd"})
    with pytest.raises(ActuatorError, match="ConnectError"):
        await act.perform(ctx("request", {"url": f"http://127.0.0.1:{free_port()}/x"}))


# -- mqtt_publish ----------------------------------------------------------------------------------------
async def test_mqtt_publish_delivers_with_qos_and_undoes_a_retained_publish(
    tmp_path: Path, broker: Broker
) -> None:
    act = MqttPublishActuator(services(tmp_path, mqtt_host=broker.host, mqtt_port=broker.port))
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-sub") as sub:
        await sub.subscribe("healer/svc/cmd", qos=1)
        res = await act.perform(
            ctx(
                "publish",
                {"topic": "healer/{component}/cmd", "payload": {"do": "drain", "key": "{key}"}, "qos": 1},
            )
        )
        assert res == {"topic": "healer/svc/cmd", "qos": 1, "retain": False, "bytes": res["bytes"]}
        async with asyncio.timeout(5):
            msg = await anext(aiter(sub.messages))
        assert json.loads(bytes(msg.payload)) == {"do": "drain", "key": KEY}  # type: ignore[arg-type]
        assert msg.qos == 1
    # Retained: state. What it replaced is read first and comes back on compensate.
    await act.perform(ctx("publish", {"topic": "cfg/svc", "payload": "old", "retain": True}, key="k0"))
    params = {"topic": "cfg/{component}", "payload": "new", "retain": True}
    before = await act.prepare(ctx("publish", params))
    assert before == {"previous": "old"}
    res = await act.perform(ctx("publish", params, before=before))
    assert res["previous"] == "old"
    assert await read_retained(broker.host, broker.port, "cfg/svc") == b"new"
    assert await act.verify(ctx("publish", params)) is True
    await act.compensate(ctx("publish", params, compensating=True, result=res))
    assert await read_retained(broker.host, broker.port, "cfg/svc") == b"old"
    assert await act.verify(ctx("publish", params, compensating=True, result=res)) is True
    assert act.is_idempotent("publish", params) and not act.is_idempotent("publish", {"retain": False})
    with pytest.raises(ActuatorError, match="invalid topic"):
        await act.perform(ctx("publish", {"topic": "a/#"}))
    broker.kill()
    with pytest.raises(ActuatorError, match="MQTT publish"):
        await act.perform(ctx("publish", {"topic": "x", "payload": "y"}))


# -- feature_flag ----------------------------------------------------------------------------------------
async def test_feature_flags_in_a_file_are_written_atomically_0600_and_restored(tmp_path: Path) -> None:
    svc = services(tmp_path)
    assert svc.state_dir is not None
    act = FeatureFlagActuator(svc)
    flags_file = svc.state_dir / "flags" / "svc.json"
    await act.perform(ctx("set", {"flags": {"cache": True, "beta": "on"}}, key="k0"))
    params = {"flags": {"degraded": True, "beta": "off"}}
    before = await act.prepare(ctx("set", params))
    assert before == {"previous": {"beta": "on"}, "absent": ["degraded"]}
    res = await act.perform(ctx("set", params, before=before))
    assert json.loads(flags_file.read_text()) == {"beta": "off", "cache": True, "degraded": True}
    assert stat.S_IMODE(flags_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(flags_file.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in flags_file.parent.iterdir()) == ["svc.json"], "no temp file left behind"
    assert await act.verify(ctx("set", params)) is True
    # A re-run after a crash takes "what it replaced" from the intent, not from the changed file.
    again = await act.perform(ctx("set", params, before=before, resumed=True))
    assert again["previous"] == {"beta": "on"}
    await act.compensate(ctx("set", params, compensating=True, result=res))
    assert json.loads(flags_file.read_text()) == {"beta": "on", "cache": True}
    assert await act.verify(ctx("set", params, compensating=True, result=res)) is True
    flags_file.write_text("{not json")
    with pytest.raises(ActuatorError, match="not JSON"):
        await act.perform(ctx("set", params))
    assert flags_file.read_text() == "{not json", "a flag set it cannot read is left alone"
    with pytest.raises(ValueError, match="not both"):
        act.validate("set", {"flags": {"a": 1}, "set": "x", "topic": "y"})


async def test_feature_flags_on_a_retained_topic(tmp_path: Path, broker: Broker) -> None:
    act = FeatureFlagActuator(services(tmp_path, mqtt_host=broker.host, mqtt_port=broker.port))
    params = {"flags": {"degraded": True}, "topic": "flags/{component}"}
    res = await act.perform(ctx("set", params))
    assert res["where"] == "mqtt:flags/svc" and res["absent"] == ["degraded"]
    assert json.loads(await read_retained(broker.host, broker.port, "flags/svc") or b"") == {"degraded": True}
    await act.compensate(ctx("set", params, compensating=True, result=res))
    assert json.loads(await read_retained(broker.host, broker.port, "flags/svc") or b"") == {}


# -- symlink_swap --------------------------------------------------------------------------------
async def test_symlink_swap_repoints_atomically_keeps_previous_and_undoes(tmp_path: Path) -> None:
    svc = services(tmp_path)
    assert svc.state_dir is not None
    root = svc.state_dir / "models" / "svc"
    for v in ("v1", "v2", "v3"):
        (root / v).mkdir(parents=True)
    os.symlink("v1", root / "current")
    act = SymlinkSwapActuator(svc)
    params = {"root": str(svc.state_dir / "models" / "{component}"), "to": "v2"}
    act.validate("swap", params)
    before = await act.prepare(ctx("swap", params))
    assert before == {"current_before": "v1", "previous_before": None}
    res = await act.perform(ctx("swap", params, before=before))
    assert os.readlink(root / "current") == "v2" and os.readlink(root / "previous") == "v1"
    assert await act.verify(ctx("swap", params)) is True
    # A re-run changes nothing (and does not make previous point at v2).
    await act.perform(ctx("swap", params, before=before, resumed=True))
    assert os.readlink(root / "current") == "v2" and os.readlink(root / "previous") == "v1"
    await act.compensate(ctx("swap", params, compensating=True, result=res))
    assert os.readlink(root / "current") == "v1" and not os.path.lexists(root / "previous")
    # rollback goes to what previous named when the intent was recorded.
    await act.perform(ctx("swap", {**params, "to": "v3"}, key="k1"))
    rb = {"root": params["root"]}
    rb_before = await act.prepare(ctx("rollback", rb))
    await act.perform(ctx("rollback", rb, before=rb_before))
    assert os.readlink(root / "current") == "v1" and os.readlink(root / "previous") == "v3"
    assert await act.verify(ctx("rollback", rb, before=rb_before)) is True
    await act.perform(ctx("rollback", rb, before=rb_before, resumed=True))
    assert os.readlink(root / "current") == "v1", "a re-run of the rollback does not toggle back"
    with pytest.raises(ActuatorError, match="does not exist"):
        await act.perform(ctx("swap", {**params, "to": "v9"}))
    (root / "current").unlink()
    (root / "current").write_text("a file")
    with pytest.raises(ActuatorError, match="not a symlink"):
        await act.perform(ctx("swap", params))


# -- checkpoint_restore --------------------------------------------------------------------------------
def make_checkpoint(state: Path, agent: str, name: str, data: bytes, created_at: float) -> None:
    d = state / "checkpoints" / agent / name
    d.mkdir(parents=True)
    (d / "data").write_bytes(data)
    manifest = {
        "name": name,
        "created_at": created_at,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    (d / "manifest.json").write_text(json.dumps(manifest))


async def test_checkpoint_restore_latest_verified_atomic_and_undoable(tmp_path: Path) -> None:
    svc = services(tmp_path)
    assert svc.state_dir is not None
    make_checkpoint(svc.state_dir, "svc", "ck-1", b"state one", time.time() - 60)
    make_checkpoint(svc.state_dir, "svc", "ck-2", b"state two", time.time() - 10)
    dest = svc.state_dir / "agents" / "svc" / "state.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"current state")
    act = CheckpointRestoreActuator(svc)
    params = {"dest": str(svc.state_dir / "agents" / "{component}" / "state.bin")}
    before = await act.prepare(ctx("restore", params))
    assert before["checkpoint"] == "ck-2" and before["sha256"] == hashlib.sha256(b"state two").hexdigest()
    # A newer checkpoint appearing after the intent does not change what this action restores.
    make_checkpoint(svc.state_dir, "svc", "ck-3", b"state three", time.time())
    res = await act.perform(ctx("restore", params, before=before))
    assert dest.read_bytes() == b"state two" and stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert await act.verify(ctx("restore", params, before=before)) is True
    again = await act.perform(ctx("restore", params, before=before, resumed=True))
    assert again["backup"] == res["backup"]
    await act.compensate(ctx("restore", params, compensating=True, result=res))
    assert dest.read_bytes() == b"current state"
    assert await act.verify(ctx("restore", params, compensating=True, result=res)) is True
    # A corrupt checkpoint is refused before anything is touched.
    (svc.state_dir / "checkpoints" / "svc" / "ck-1" / "data").write_bytes(b"bit rot")
    with pytest.raises(ActuatorError, match="corrupt"):
        await act.perform(ctx("restore", {**params, "checkpoint": "ck-1"}))
    assert dest.read_bytes() == b"current state"
    with pytest.raises(ActuatorError, match="no checkpoint 'ck-9'"):
        await act.prepare(ctx("restore", {**params, "checkpoint": "ck-9"}))
    with pytest.raises(ActuatorError, match="no checkpoint for 'other'"):
        await act.prepare(ctx("restore", params, component="other"))
