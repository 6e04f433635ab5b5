"""The control socket's own rules: who may connect, and what a client sees without a daemon."""

from __future__ import annotations

import asyncio
import grp
import os
from pathlib import Path
from typing import Any

import pytest

from healer.control import ControlError, ControlServer, Peer, request
from healer.errors import ConfigError
from tests.helpers import healer_cli


async def _echo(req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    return {"ok": True, "op": req["op"], "uid": peer.uid}


def test_owner_only_unless_a_group_is_configured(tmp_path: Path) -> None:
    owner_only = ControlServer(tmp_path / "a.sock", _echo)
    me = Peer(os.getpid(), os.geteuid(), os.getegid())
    stranger = Peer(1, 65534, 65534)
    assert owner_only.allowed(me) and not owner_only.allowed(stranger)
    group = grp.getgrgid(65534).gr_name
    with_group = ControlServer(tmp_path / "b.sock", _echo, group=group)
    assert with_group.allowed(stranger), "a member of the configured group may connect"
    assert not with_group.allowed(Peer(1, 65533, 65533))
    with pytest.raises(ConfigError, match="group 'no-such-group-here' does not exist"):
        ControlServer(tmp_path / "c.sock", _echo, group="no-such-group-here")


async def test_socket_is_private_and_answers_the_owner(tmp_path: Path) -> None:
    # A path longer than sockaddr_un allows still works (reached through the directory's fd).
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = ControlServer(deep / "control.sock", _echo)
    await server.start()
    try:
        assert (deep / "control.sock").stat().st_mode & 0o777 == 0o600
        answer = await asyncio.to_thread(request, deep / "control.sock", {"op": "ping"})
        assert answer == {"ok": True, "op": "ping", "uid": os.geteuid()}
    finally:
        await server.close()
    assert not (deep / "control.sock").exists()


def test_client_without_a_daemon_says_so(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="is the daemon running"):
        request(tmp_path / "control.sock", {"op": "ping"})
    out = healer_cli("approve", "1", "--state-dir", str(tmp_path))
    assert out.returncode == 1 and "no control socket" in out.stderr


def test_ancestors_a_group_member_cannot_search_are_named(tmp_path: Path) -> None:
    gid = grp.getgrgid(65534).gr_gid
    top = tmp_path / "top"
    mid = top / "mid"
    leaf = mid / "state"
    leaf.mkdir(parents=True)
    from healer.control import unreachable_ancestors

    top.chmod(0o755)
    mid.chmod(0o700)
    blocked = unreachable_ancestors(leaf, gid)
    assert mid in blocked and top not in blocked
    os.chown(mid, -1, gid)
    mid.chmod(0o710)  # searchable by that group: fine
    assert mid not in unreachable_ancestors(leaf, gid)
