"""The local control socket: how ``healer approve/deny/silence/reload`` reach the running daemon.

A Unix stream socket in the state directory, mode 0600 (or 0660 for a configured group). Every
connection's peer credentials are read with ``SO_PEERCRED``: the daemon's own uid is allowed,
members of the configured group are allowed, everyone else is refused without their request
being looked at. One request per connection, one JSON object per line each way; the caller
learns who it is from the kernel, never from the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import fnmatch
import grp
import json
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from healer.clock import Clock
from healer.config import parse_duration
from healer.errors import ConfigError, HealerError
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import FleetState
from healer.loop import ControlLoop

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 5.0
# sockaddr_un.sun_path is 108 bytes; longer paths are reached through /proc/self/fd.
_SUN_PATH_MAX = 100


class ControlError(HealerError):
    """The control socket cannot be reached, or the daemon refused the request."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid:{self.uid}"

    def as_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "user": self.user, "pid": self.pid}


Handler = Callable[[dict[str, Any], Peer], Awaitable[dict[str, Any]]]


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def peer_of(sock: Any) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"control_group: group {name!r} does not exist") from None


def unreachable_ancestors(directory: Path, gid: int) -> list[Path]:
    """The ancestors of ``directory`` a member of group ``gid`` (not their owner) cannot search."""
    out = []
    for parent in directory.resolve().parents:
        try:
            st = parent.stat()
        except OSError:
            continue
        if st.st_mode & 0o001 or (st.st_gid == gid and st.st_mode & 0o010):
            continue
        out.append(parent)
    return out


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """A path short enough for sockaddr_un that names ``path`` (via the parent's fd if needed)."""
    text = str(path)
    if len(text.encode()) <= _SUN_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class ControlServer:
    def __init__(self, path: Path, handler: Handler, *, group: str | None = None) -> None:
        self.path = path
        self._handler = handler
        self._group = group
        self._gid = group_id(group) if group is not None else None
        self._server: asyncio.AbstractServer | None = None
        self.refused = 0

    async def start(self) -> None:
        # Only the daemon holding the store lock gets here, so a socket file left behind is stale.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            with _reachable(self.path) as where:
                self._server = await asyncio.start_unix_server(self._serve, path=where, limit=MAX_REQUEST)
        finally:
            os.umask(old)
        if self._gid is not None:
            try:
                os.chown(self.path, -1, self._gid)
                os.chmod(self.path, 0o660)
                # Group members must be able to reach the socket, and nothing else in the state
                # dir: traverse only (no listing); everything in it stays 0600 / 0700.
                os.chown(self.path.parent, -1, self._gid)
                os.chmod(self.path.parent, 0o710)  # noqa: S103
            except PermissionError as exc:
                await self.close()
                raise ConfigError(
                    f"control_group: cannot give group {self._group!r} the control socket "
                    f"({exc.strerror}): the daemon's user must be root or a member of that group"
                ) from None
            for blocked in unreachable_ancestors(self.path.parent, self._gid):
                log.warning(
                    "control_group %s: members cannot reach %s: %s is mode %03o and not theirs to "
                    "traverse (allow it with chmod o+x, or a group they are in with g+x)",
                    self._group,
                    self.path,
                    blocked,
                    blocked.stat().st_mode & 0o777,
                )
        else:
            os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def allowed(self, peer: Peer) -> bool:
        if peer.uid == os.geteuid():
            return True
        if self._gid is None:
            return False
        if peer.gid == self._gid:
            return True
        try:
            name = pwd.getpwuid(peer.uid).pw_name
            return self._gid in os.getgrouplist(name, peer.gid)
        except KeyError:
            return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = peer_of(writer.get_extra_info("socket"))
            if not self.allowed(peer):
                self.refused += 1
                log.warning(
                    "control socket: refused uid %d (%s, pid %d): not the daemon's user%s",
                    peer.uid,
                    peer.user,
                    peer.pid,
                    f" nor in group {self._group}" if self._group else "",
                )
                # Take the request off the wire unread (closing on unread data would reset the
                # connection and lose the answer), then refuse it.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.readline(), 1.0)
                await _reply(writer, {"ok": False, "error": f"permission denied for uid {peer.uid}"})
                return
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                    raise ValueError("expected a JSON object with an 'op'")
            except (ValueError, TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
                await _reply(writer, {"ok": False, "error": f"bad request: {exc}"})
                return
            try:
                response = await self._handler(request, peer)
            except HealerError as exc:
                response = {"ok": False, "error": str(exc)}
            except Exception as exc:  # a bug in one request must not take the daemon down
                log.exception("control request %r failed", request.get("op"))
                response = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
            await _reply(writer, response)
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _reply(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
    writer.write(json.dumps(response, default=str).encode() + b"\n")
    with contextlib.suppress(ConnectionError):
        await writer.drain()


def request(path: Path, payload: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    """Send one request to the daemon and return its answer (the CLI side)."""
    try:
        present = path.exists()
    except PermissionError:
        present = True  # a directory we may not search: connecting says so, below
    if not present:
        raise ControlError(f"no control socket at {path}: is the daemon running with this state directory?")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _reachable(path) as where:
                sock.connect(where)
            sock.sendall(json.dumps(payload).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except PermissionError as exc:
            raise ControlError(
                f"cannot open {path}: {exc.strerror} (the daemon's user or group only)"
            ) from exc
        except ConnectionRefusedError as exc:
            raise ControlError(f"the daemon is not running (nobody listens on {path})") from exc
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc}") from exc
    try:
        answer = json.loads(buf)
    except ValueError as exc:
        raise ControlError(f"unreadable answer from the daemon: {buf[:200]!r}") from exc
    if not isinstance(answer, dict):
        raise ControlError(f"unexpected answer from the daemon: {answer!r}")
    return answer


# -- the daemon's side: what each request does --------------------------------------------------
_PATTERN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-*?[]")
MAX_SILENCE = 30 * 86400.0
MAX_REASON = 500


class Reloadable(Protocol):
    last_reload_problems: list[str]

    def reload_policies(self) -> bool: ...


class DaemonControl:
    """Serves the control socket for a running daemon: every change goes through the control
    loop as an event (approval decided, silence created or lifted, policies reloaded)."""

    def __init__(
        self,
        daemon: Reloadable,
        loop: ControlLoop,
        state: FleetState,
        clock: Clock,
        components: Iterable[str],
    ) -> None:
        self._daemon = daemon
        self._loop = loop
        self._state = state
        self._clock = clock
        self._components = sorted(components)
        self._lock = asyncio.Lock()  # ids are taken from the snapshot: one request at a time
        self.server: ControlServer | None = None

    async def start(self, state_dir: Path, group: str | None) -> None:
        self.server = ControlServer(socket_path(state_dir), self.handle, group=group)
        await self.server.start()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def handle(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        op = req["op"]
        async with self._lock:
            if op == "ping":
                return {"ok": True, "pid": os.getpid(), "position": self._state.position}
            if op in ("approve", "deny"):
                return await self._decide(req, peer, op == "approve")
            if op == "silence":
                return await self._silence(req, peer)
            if op == "unsilence":
                return await self._unsilence(req, peer)
            if op == "silences":
                now = self._clock.wall()
                rows = [asdict(s) | {"active": s.active(now)} for s in self._state.silences.values()]
                if not req.get("all"):
                    rows = [r for r in rows if r["active"]]
                return {"ok": True, "silences": rows}
            if op == "approvals":
                rows = [asdict(a) for a in self._state.approvals.values() if a.status == "pending"]
                return {"ok": True, "approvals": rows}
            if op == "reload":
                ok = self._daemon.reload_policies()
                await self._loop.flush()
                return {
                    "ok": ok,
                    "hash": self._loop.decider.policies.hash,
                    "problems": list(self._daemon.last_reload_problems),
                    "error": None if ok else "policy reload rejected: the previous policies stay in force",
                }
            if op.startswith("drill."):
                from healer.drill.control import handle_drill

                return await handle_drill(
                    req, peer.as_dict(), self._loop, self._state, self._clock, self._components
                )
        return {"ok": False, "error": f"unknown request {op!r}"}

    async def _decide(self, req: dict[str, Any], peer: Peer, grant: bool) -> dict[str, Any]:
        aid = _as_int(req.get("id"), "approval id")
        reason = _text(req.get("reason"))
        ap = self._state.approvals.get(aid)
        if ap is None:
            return {"ok": False, "error": f"no approval {aid}"}
        if ap.status != "pending":
            return {"ok": False, "error": f"approval {aid} is no longer pending: {ap.status}"}
        kind = T.APPROVAL_GRANTED if grant else T.APPROVAL_DENIED
        data = {
            "approval": aid,
            "step": ap.step,
            "policy": ap.policy,
            "strategy": ap.strategy,
            "outcome": "granted" if grant else "denied",
            "by": peer.as_dict(),
            "reason": reason,
        }

        def pending(state: FleetState) -> bool:
            cur = state.approvals.get(aid)
            return cur is not None and cur.status == "pending"

        rec = await self._loop.record(
            Event(kind, self._clock.wall(), ap.component, ap.incident, data), pending
        )
        if rec is None:
            return {"ok": False, "error": f"approval {aid} was decided meanwhile"}
        return {
            "ok": True,
            "approval": aid,
            "status": kind.removeprefix("approval."),
            "position": rec.position,
        }

    async def _silence(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        pattern = req.get("component")
        if not isinstance(pattern, str) or not 0 < len(pattern) <= 64 or set(pattern) - _PATTERN_CHARS:
            return {"ok": False, "error": f"invalid component name or glob {pattern!r}"}
        matched = [c for c in self._components if fnmatch.fnmatchcase(c, pattern)]
        if not matched:
            near = difflib.get_close_matches(pattern, self._components, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            return {"ok": False, "error": f"no configured component matches {pattern!r}{hint}"}
        try:
            seconds = float(parse_duration(req.get("for")))
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": f"invalid duration: {exc}"}
        if not 0 < seconds <= MAX_SILENCE:
            return {
                "ok": False,
                "error": f"a silence lasts more than 0s and at most {MAX_SILENCE / 86400:g} days",
            }
        sid = self._state.next_silence
        now = self._clock.wall()
        data = {
            "silence": sid,
            "component": pattern,
            "matches": matched,
            "until": now + seconds,
            "duration": seconds,
            "reason": _text(req.get("reason")),
            "by": peer.as_dict(),
        }
        name = pattern if pattern in self._components else None
        rec = await self._loop.record(
            Event(T.SILENCE_CREATED, now, name, None, data), lambda st: st.next_silence == sid
        )
        if rec is None:
            return {"ok": False, "error": "another silence was recorded at the same moment; try again"}
        return {
            "ok": True,
            "silence": sid,
            "until": now + seconds,
            "matches": matched,
            "position": rec.position,
        }

    async def _unsilence(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        sid = _as_int(req.get("id"), "silence id")
        sil = self._state.silences.get(sid)
        now = self._clock.wall()
        if sil is None:
            return {"ok": False, "error": f"no silence {sid}"}
        if not sil.active(now):
            return {"ok": False, "error": f"silence {sid} is not active"}
        data = {
            "silence": sid,
            "component": sil.component,
            "by": peer.as_dict(),
            "reason": _text(req.get("reason")),
        }
        name = sil.component if sil.component in self._components else None
        rec = await self._loop.record(
            Event(T.SILENCE_EXPIRED, now, name, None, data),
            lambda st: sid in st.silences and st.silences[sid].expired_at is None,
        )
        if rec is None:
            return {"ok": False, "error": f"silence {sid} was lifted meanwhile"}
        return {"ok": True, "silence": sid, "position": rec.position}


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ControlError(f"invalid {what}: {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ControlError(f"invalid {what}: {value!r}") from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ControlError("a reason is text")
    return value[:MAX_REASON]
