"""`control_group` end to end: a real group, real users, a real daemon and the real CLI code.

A member of the configured group approves a step over the control socket; a user outside the
group cannot even reach the socket; and a session that still carries the group after its user
was taken out of it passes the file system but is refused by the daemon's peer-credential check.
The clients are processes of those users (forked, then ``initgroups``/``setgid``/``setuid`` as a
login does) running ``healer.cli.main``: the interpreter lives under /root here, which other
users may not execute.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import healer.cli
import healer.cli_plan
import healer.control  # imported here: the forked clients may not read /root
from tests.helpers import (
    agent_component,
    events,
    free_port,
    is_healthy,
    running_daemon,
    wait_for,
    write_config,
)

TOOLS = ("groupadd", "groupdel", "useradd", "userdel")


@dataclass
class Accounts:
    group: str
    gid: int
    member: str  # in the group
    outsider: str  # not in it


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the test creates a group and two users")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to create the test's group and users")
    tag = f"{os.getpid() % 100000}"
    group, member, outsider = f"hlr-ops{tag}", f"hlr-mem{tag}", f"hlr-out{tag}"
    made: list[tuple[str, str]] = []
    try:
        _run("groupadd", group)
        made.append(("groupdel", group))
        for user, extra in ((member, ["-G", group]), (outsider, [])):
            _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", *extra, user)
            made.insert(0, ("userdel", user))
        yield Accounts(group, grp.getgrnam(group).gr_gid, member, outsider)
    finally:
        for tool, name in made:
            subprocess.run([tool, name], capture_output=True, timeout=30)


def as_user(user: str, argv: list[str], extra_gid: int | None = None) -> tuple[int, str]:
    """``healer ARGV`` in a child process of ``user`` (its groups from the user database, as at
    login, plus ``extra_gid`` if given); returns its exit status and output."""
    pw = pwd.getpwnam(user)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, then nothing but the CLI
        rc = 99
        try:
            os.close(r)
            os.dup2(w, 1)
            os.dup2(w, 2)
            # pytest captures sys.stdout/stderr in memory: point them at the pipe too.
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.initgroups(user, pw.pw_gid)
            if extra_gid is not None:
                os.setgroups([*os.getgroups(), extra_gid])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            rc = healer.cli.main(argv)
        except BaseException as exc:
            os.write(2, f"child error: {exc!r}\n".encode())
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(rc)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


POLICY = textwrap.dedent(
    """\
    version: 1
    policies:
      - name: ask-first
        match: {failures: [crash]}
        steps:
          - {strategy: restart, cooldown: 0s, verify_timeout: 15s, approval: {timeout: 5m}}
          - {strategy: escalate}
    """
)


def test_control_group_members_are_let_in_and_others_are_not(accounts: Accounts, tmp_path: Path) -> None:
    # The state directory's ancestors must be searchable by the group's members (pytest's own
    # temporary directories are 0700): a directory of its own under /tmp, 0755.
    base = Path(tempfile.mkdtemp(prefix="healer-cg-"))
    try:
        base.chmod(0o755)
        state = base / "state"
        cfg = write_config(tmp_path, agent_component("agent-a", free_port()), POLICY)
        cfg.write_text(
            cfg.read_text().replace(f"state_dir: {tmp_path / 'state'}", f"state_dir: {state}")
            + f"control_group: {accounts.group}\n"
        )
        sock = state / "control.sock"
        with running_daemon(cfg) as d:
            wait_for(lambda: is_healthy(state, "agent-a"), timeout=30, what="agent-a healthy")
            # The socket is the group's (0660) and the state directory lets the group search it,
            # nothing more (0710): the event log and everything else in it stay the daemon's.
            assert (sock.stat().st_mode & 0o777, sock.stat().st_gid) == (0o660, accounts.gid)
            assert (state.stat().st_mode & 0o777, state.stat().st_gid) == (0o710, accounts.gid)
            assert (state / "events.db").stat().st_mode & 0o777 == 0o600
            # Wait for an approval request: kill the agent.
            pid = events(state, "process.started", "agent-a")[-1]["data"]["pid"]
            os.kill(pid, 9)
            req = wait_for(lambda: events(state, "approval.requested"), what="approval requested")[0]
            aid = str(req["data"]["approval"])

            # Not in the group: the file system stops them before the daemon hears of them.
            rc, out = as_user(accounts.outsider, ["approve", aid, "--state-dir", str(state)])
            assert rc == 1, out
            assert f"cannot open {sock}: Permission denied (the daemon's user or group only)" in out

            # Taken out of the group, but a session still carries it: the socket's mode lets it
            # through, the daemon's check of the user's groups (SO_PEERCRED) does not.
            rc, out = as_user(
                accounts.outsider, ["approve", aid, "--state-dir", str(state)], extra_gid=accounts.gid
            )
            outsider_uid = pwd.getpwnam(accounts.outsider).pw_uid
            assert rc == 1, out
            assert f"healer: permission denied for uid {outsider_uid}" in out
            wait_for(lambda: f"refused uid {outsider_uid}" in d.output(), what="refusal logged")
            assert f"nor in group {accounts.group}" in d.output()
            time.sleep(0.2)
            assert not events(state, "approval.granted"), "refused requests changed nothing"

            # A member: reads over the socket, and approves; the record says who, from the kernel.
            rc, out = as_user(accounts.member, ["silence", "--list", "--state-dir", str(state)])
            assert (rc, out.strip()) == (0, "no active silences")
            rc, out = as_user(
                accounts.member, ["approve", aid, "--state-dir", str(state), "--reason", "on call"]
            )
            assert rc == 0, out
            assert f"approval {aid}: granted" in out
            granted = wait_for(lambda: events(state, "approval.granted"), what="granted")[0]["data"]
            member = pwd.getpwnam(accounts.member)
            assert granted["by"]["uid"] == member.pw_uid and granted["by"]["user"] == accounts.member
            assert granted["reason"] == "on call"
            wait_for(lambda: events(state, "incident.resolved"), timeout=30, what="resolved after approval")
            assert d.stop() == 0
        # The member's socket client never saw the event log: reading it needs the daemon's user.
        rc, out = as_user(accounts.member, ["approvals", "--state-dir", str(state), "--json"])
        assert rc != 0 and f"cannot open event store {state / 'events.db'}" in out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_group_the_daemon_cannot_hand_the_socket_to_is_a_clear_error(
    accounts: Accounts, tmp_path: Path
) -> None:
    """A daemon running as a user outside the group cannot give the group its socket: it says so."""
    import asyncio

    from healer.control import ControlServer
    from healer.errors import ConfigError

    base = Path(tempfile.mkdtemp(prefix="healer-cg-"))
    try:
        base.chmod(0o777)
        outsider = pwd.getpwnam(accounts.outsider)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            msg = b"no error"
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(outsider.pw_gid)
                os.setuid(outsider.pw_uid)
                state = base / "state"
                state.mkdir(mode=0o700)

                async def start() -> None:
                    await ControlServer(state / "control.sock", _noop, group=accounts.group).start()

                asyncio.run(start())
            except ConfigError as exc:
                msg = str(exc).encode()
            except BaseException as exc:
                msg = f"unexpected: {exc!r}".encode()
            finally:
                os.write(w, msg)
                os._exit(0)
        os.close(w)
        out = b""
        while chunk := os.read(r, 4096):
            out += chunk
        os.close(r)
        os.waitpid(pid, 0)
        assert out.decode() == (
            f"control_group: cannot give group {accounts.group!r} the control socket (Operation not "
            "permitted): the daemon's user must be root or a member of that group"
        )
        assert not (base / "state" / "control.sock").exists(), "no socket left behind"
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _noop(req: dict[str, object], peer: object) -> dict[str, object]:
    return {"ok": True, "echo": json.dumps(req)}
