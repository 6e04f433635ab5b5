"""Disk trouble: the state directory fills up under a running daemon.

healer must say so loudly, act on nothing it cannot record, lose no observation, and carry on
by itself when the disk comes back. A real size-limited filesystem (tmpfs) is used. (Remounting
it read-only is refused by the kernel while the daemon holds the database open for writing, so a
full disk is the failure tested; the daemon's handling is the same for any failed append.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    agent_component,
    component_pid,
    events,
    free_port,
    http_ok,
    is_healthy,
    running_daemon,
    wait_for,
    write_config,
)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root/CAP_SYS_ADMIN): {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> Path:
    filler = mnt / f"filler-{uuid.uuid4().hex}"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def with_state_on(cfg: Path, state: Path) -> None:
    text = cfg.read_text().splitlines()
    cfg.write_text(
        "\n".join(f"state_dir: {state}" if ln.startswith("state_dir:") else ln for ln in text) + "\n"
    )


def test_disk_full_holds_observations_acts_on_nothing_and_recovers(tmp_path: Path, small_fs: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, agent_component("agent-d", port))
    state = small_fs / "state"
    with_state_on(cfg, state)
    with running_daemon(cfg) as d:
        wait_for(lambda: is_healthy(state, "agent-d"))
        pid = component_pid(state, "agent-d") or 0
        before = len(events(state))
        filler = fill(small_fs)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: "EVENT STORE UNWRITABLE" in d.output(), what="a loud complaint")
        assert not http_ok(port)
        # Nothing was acted on: no restart happened while the crash could not be recorded.
        assert len(events(state)) == before
        time.sleep(1.0)  # an absence is only shown over time: long enough for several restarts
        assert not http_ok(port), "no action without a record of it"
        assert d.proc.poll() is None, "the daemon stays up"
        filler.unlink()
        # Space is back: the held observation is decided and the agent healed.
        resolved = wait_for(
            lambda: events(state, "incident.resolved"), timeout=20, what="recovery after space returns"
        )
        exited = [e for e in events(state, "process.exited", "agent-d") if e["data"]["pid"] == pid]
        assert exited and exited[0]["data"].get("signal") == "SIGKILL", "the held observation was not lost"
        assert resolved and http_ok(port)
        assert "event store writable again" in d.output()
        assert d.stop() == 0
