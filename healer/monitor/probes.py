"""Probes: one small Protocol, one class per kind, discovered through the ``healer.probes``
entry-point group (the built-ins register there too, so plugins are first-class).

A probe answers one question per call: is the target healthy right now? Scheduling,
timeouts, jitter and hysteresis live in :mod:`healer.monitor.scheduler`, not in probes.
Every probe puts what it measured in ``ProbeResult.values``: that is the evidence Analyze
classifies from (a crash, a hang, resource exhaustion, a lost agent).

Event-driven probes (an exit seen through a pidfd, a last will over MQTT) do not wait for
their next turn: they hand a result to ``ProbeContext.push`` and the scheduler records it
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, runtime_checkable

import h11
import httpx
import psutil
from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from healer.clock import Clock
from healer.config import ComponentConfig, Duration, HealerConfig, Name
from healer.monitor.telemetry import TelemetryBook

Problems = list[tuple[tuple[str | int, ...], str]]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``ok`` is None when the check was inconclusive (for example, a process still starting)."""

    ok: bool | None
    detail: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)


class ProbeContext(Protocol):
    """What a probe may ask of the daemon about its component."""

    @property
    def component(self) -> str: ...

    def supervised_pid(self) -> int | None: ...

    def supervised_uptime(self) -> float | None: ...

    @property
    def http(self) -> httpx.AsyncClient: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def telemetry(self) -> TelemetryBook | None:
        """Agent liveness heard over MQTT; None when the daemon has no ``mqtt`` section."""

    def push(self, result: ProbeResult) -> None:
        """Record ``result`` now, outside the schedule (a failure skips the N-fail hysteresis)."""

    def wake(self) -> None:
        """Run this probe's check now instead of at its next turn."""


@runtime_checkable
class Probe(Protocol):
    async def check(self) -> ProbeResult: ...


class ProbeFactory(Protocol):
    """A probe class: ``Params`` validates the probe's own settings from the config file.

    A class may also define ``check_component(params, component, config) -> Problems`` for
    checks that need the rest of the config, and a probe instance ``close()`` to release what
    it holds (file descriptors) when the monitor stops.
    """

    Params: ClassVar[type[BaseModel]]

    def __call__(self, params: Any, ctx: ProbeContext) -> Probe: ...


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _absolute(p: Path) -> Path:
    if not p.is_absolute():
        raise ValueError(f"expected an absolute path, got {str(p)!r}")
    return p


AbsPath = Annotated[Path, AfterValidator(_absolute)]


def _mb(n: float) -> str:
    return f"{n / 1_000_000:.1f} MB"


# -- http ------------------------------------------------------------------------------------------
_BODY_LIMIT = 65_536  # what body_contains can see; a longer body ends the kept-alive connection


class HttpProbe:
    """GET a URL; healthy when the status is expected (and the body contains a marker, if set).

    Speaks HTTP/1.1 through h11 (the protocol library under httpx) on one kept-alive
    connection per probe: a request costs about a tenth of the CPU of a pooled httpx request,
    which is what lets one daemon run a thousand HTTP probes a second. Redirects are not
    followed and proxies are not used, as before.
    """

    class Params(_Params):
        url: str
        expect_status: list[int] = Field(default_factory=lambda: [200])
        body_contains: str | None = None
        headers: dict[str, str] = Field(default_factory=dict)

        @field_validator("url")
        @classmethod
        def _http_only(cls, v: str) -> str:
            parts = urllib.parse.urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"expected an http:// or https:// URL with a host, got {v!r}")
            try:
                _ = parts.port
            except ValueError as exc:
                raise ValueError(f"bad port in {v!r}") from exc
            return v

        @field_validator("expect_status", mode="before")
        @classmethod
        def _one_or_many(cls, v: Any) -> Any:
            return [v] if isinstance(v, int) else v

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        self.params = params
        self.ctx = ctx
        parts = urllib.parse.urlsplit(params.url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        self._headers = [("Host", host_header), ("User-Agent", "healer-probe"), *params.headers.items()]
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection] | None = None

    async def check(self) -> ProbeResult:
        start = self.ctx.clock.monotonic()
        try:
            status, body = await self._get()
        except (OSError, h11.ProtocolError, EOFError) as exc:
            self.close()
            why = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
            return ProbeResult(False, f"{type(exc).__name__}: {why}"[:200], {"error": type(exc).__name__})
        except BaseException:
            self.close()  # cancelled mid-request (timeout): the connection's state is unknown
            raise
        values = {"status": status, "elapsed_ms": round((self.ctx.clock.monotonic() - start) * 1000, 2)}
        text = body.decode(errors="replace")
        p = self.params
        if status not in p.expect_status:
            return ProbeResult(False, f"HTTP {status}: {text[:120]}", values)
        if p.body_contains is not None and p.body_contains not in text:
            return ProbeResult(False, f"body lacks {p.body_contains!r}", values)
        return ProbeResult(True, f"HTTP {status}", values)

    async def _get(self) -> tuple[int, bytes]:
        reused = self._stream is not None
        try:
            return await self._exchange()
        except (OSError, h11.ProtocolError, EOFError):
            if not reused:
                raise
        # The server may close a kept-alive connection at any time: one fresh attempt.
        self.close()
        return await self._exchange()

    async def _exchange(self) -> tuple[int, bytes]:
        if self._stream is None:
            ssl_ctx = ssl.create_default_context() if self._tls else None
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=ssl_ctx, server_hostname=self._host if self._tls else None
            )
            self._stream = (reader, writer, h11.Connection(h11.CLIENT))
        reader, writer, conn = self._stream
        request = h11.Request(method="GET", target=self._target, headers=self._headers)
        writer.write(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
        await writer.drain()
        status = 0
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65_536)
                if not data and conn.their_state is h11.SEND_RESPONSE:
                    raise EOFError("connection closed before a response")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                if len(body) < _BODY_LIMIT:
                    body.extend(event.data[: _BODY_LIMIT - len(body)])
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE and len(body) < _BODY_LIMIT:
            conn.start_next_cycle()
        else:
            self.close()
        return status, bytes(body)

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None


# -- tcp -------------------------------------------------------------------------------------------
class TcpProbe:
    """Open a TCP connection; healthy when the peer accepts it."""

    class Params(_Params):
        host: str = Field(min_length=1)
        port: int = Field(ge=1, le=65535)

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        self.params = params
        self.ctx = ctx
        self._addr: tuple[int, tuple[Any, ...]] | None = None  # resolved once, again after a failure

    async def check(self) -> ProbeResult:
        p = self.params
        loop = asyncio.get_running_loop()
        start = self.ctx.clock.monotonic()
        target = f"{p.host}:{p.port}"
        try:
            if self._addr is None:
                infos = await loop.getaddrinfo(p.host, p.port, type=socket.SOCK_STREAM)
                self._addr = (infos[0][0], infos[0][4])
            family, addr = self._addr
            # A bare socket, not a stream: a probe only needs the handshake, at a fraction of the cost.
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, addr)
        except OSError as exc:
            self._addr = None
            reason = os.strerror(exc.errno) if exc.errno else f"{type(exc).__name__}: {exc}"
            return ProbeResult(False, f"connect {target}: {reason}", {"errno": exc.errno})
        connect_ms = round((self.ctx.clock.monotonic() - start) * 1000, 2)
        return ProbeResult(True, f"connected to {target}", {"connect_ms": connect_ms})


# -- exec ------------------------------------------------------------------------------------------
class ExecProbe:
    """Run a command (an argv list, never a shell); healthy when it exits with an expected code.

    The scheduler's timeout cancels the check; the command's whole process group is then
    killed and reaped, so a hung check leaves nothing behind.
    """

    class Params(_Params):
        argv: list[str] = Field(min_length=1)
        expect_exit: list[int] = Field(default_factory=lambda: [0])
        output_contains: str | None = None
        cwd: AbsPath | None = None
        env: dict[str, str] = Field(default_factory=dict)
        inherit_env: bool = True
        max_output: int = Field(default=4096, ge=0, le=1_048_576)

        @field_validator("expect_exit", mode="before")
        @classmethod
        def _one_or_many(cls, v: Any) -> Any:
            return [v] if isinstance(v, int) else v

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        self.params = params
        self.ctx = ctx

    async def check(self) -> ProbeResult:
        p = self.params
        env = dict(os.environ) if p.inherit_env else {}
        env.update(p.env)
        start = self.ctx.clock.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *p.argv,
                cwd=p.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own group: a timeout kills its children too
            )
        except OSError as exc:
            return ProbeResult(False, f"cannot run {p.argv[0]}: {exc.strerror or exc}", {"error": "spawn"})
        try:
            output = await _read_bounded(proc, p.max_output)
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    await asyncio.shield(proc.wait())
        text = output.decode(errors="replace")
        values: dict[str, Any] = {
            "exit_code": code,
            "duration_ms": round((self.ctx.clock.monotonic() - start) * 1000, 2),
            "output": text[-200:],
        }
        if code not in p.expect_exit:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
            return ProbeResult(False, f"{p.argv[0]} exited with {how}: {text.strip()[-120:]}", values)
        if p.output_contains is not None and p.output_contains not in text:
            return ProbeResult(False, f"output lacks {p.output_contains!r}", values)
        return ProbeResult(True, f"{p.argv[0]} exited {code}", values)


async def _read_bounded(proc: asyncio.subprocess.Process, limit: int) -> bytes:
    assert proc.stdout is not None
    kept = bytearray()
    while chunk := await proc.stdout.read(65536):
        if len(kept) < limit:
            kept.extend(chunk[: limit - len(kept)])
    return bytes(kept)


# -- heartbeat_file ----------------------------------------------------------------------------------
class HeartbeatFileProbe:
    """A file an agent touches must be fresher than ``max_age`` (its mtime, by the wall clock)."""

    class Params(_Params):
        path: AbsPath
        max_age: Duration

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        self.params = params
        self.ctx = ctx

    async def check(self) -> ProbeResult:
        p = self.params
        try:
            mtime = p.path.stat().st_mtime
        except FileNotFoundError:
            return ProbeResult(False, f"{p.path} does not exist", {"max_age_s": p.max_age, "missing": True})
        except OSError as exc:
            return ProbeResult(False, f"cannot stat {p.path}: {exc.strerror}", {"max_age_s": p.max_age})
        age = self.ctx.clock.wall() - mtime
        values = {"age_s": round(age, 3), "max_age_s": p.max_age, "mtime": mtime}
        if age > p.max_age:
            return ProbeResult(False, f"{p.path} is {age:.1f}s old (max {p.max_age:g}s)", values)
        return ProbeResult(True, f"{p.path} is {age:.1f}s old", values)


# -- processes healer did not start --------------------------------------------------------------------
class _TargetParams(_Params):
    """How to find a process healer did not start; without either, the supervised process."""

    pidfile: AbsPath | None = None
    cmdline: re.Pattern[str] | None = None  # searched in the space-joined command line

    @property
    def external(self) -> bool:
        return self.pidfile is not None or self.cmdline is not None


class _ProcessFinder:
    """Finds the target process and remembers it (pid + start time, so a reused pid is not it)."""

    def __init__(self, params: _TargetParams, ctx: ProbeContext) -> None:
        self.params = params
        self.ctx = ctx
        self.proc: psutil.Process | None = None

    def describe(self) -> str:
        p = self.params
        if p.pidfile is not None:
            return f"pidfile {p.pidfile}"
        if p.cmdline is not None:
            return f"cmdline /{p.cmdline.pattern}/"
        return "the supervised process"

    def forget(self) -> None:
        self.proc = None

    def find(self) -> tuple[psutil.Process | None, str]:
        if self.proc is not None:
            with contextlib.suppress(psutil.Error):
                if self.proc.is_running():  # also compares the start time: pid reuse is caught
                    return self.proc, ""
            self.proc = None
        p = self.params
        if not p.external:
            pid = self.ctx.supervised_pid()
            if pid is None:
                return None, "process not running"
            return self._remember(pid)
        if p.pidfile is not None:
            try:
                text = p.pidfile.read_text().strip()
            except OSError as exc:
                return None, f"cannot read {p.pidfile}: {exc.strerror or exc}"
            if not text.isdigit() or int(text) <= 0:
                return None, f"{p.pidfile} holds no pid ({text[:20]!r})"
            found, why = self._remember(int(text))
            if found is not None and p.cmdline is not None and not self._matches(found):
                self.proc = None
                return None, f"pid {text} from {p.pidfile} does not match /{p.cmdline.pattern}/"
            return found, why
        return self._scan()

    def _remember(self, pid: int) -> tuple[psutil.Process | None, str]:
        try:
            self.proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return None, f"pid {pid} is gone"
        except psutil.Error as exc:
            return None, f"pid {pid}: {exc}"
        return self.proc, ""

    def _matches(self, proc: psutil.Process) -> bool:
        assert self.params.cmdline is not None
        try:
            return bool(self.params.cmdline.search(" ".join(proc.cmdline())))
        except psutil.Error:
            return False

    def _scan(self) -> tuple[psutil.Process | None, str]:
        assert self.params.cmdline is not None
        me = os.getpid()
        best: psutil.Process | None = None
        for proc in psutil.process_iter(["cmdline", "create_time"]):
            cmd = proc.info.get("cmdline")
            if proc.pid == me or not cmd or not self.params.cmdline.search(" ".join(cmd)):
                continue
            # Several matches: the oldest, like ``pgrep -o`` (workers usually start after their parent).
            if best is None or (proc.info["create_time"] or 0) < (best.info["create_time"] or 0):
                best = proc
        if best is None:
            return None, f"no process matches /{self.params.cmdline.pattern}/"
        self.proc = best
        return best, ""


def _needs_target(params: _TargetParams, component: ComponentConfig, what: str) -> Problems:
    if params.external or component.command is not None:
        return []
    return [(("type",), f"{what} needs the component's command, or a pidfile or cmdline to find the process")]


class ProcessProbe:
    """A process is alive (not a zombie) and has been up for ``min_uptime``.

    Supervised (no ``pidfile`` / ``cmdline``): exits are not found by this check, the
    supervisor's pidfd reports them at once; the check covers what a pidfd cannot see (a
    zombie) and gives a restarted process its minimum uptime, so a crash loop cannot look
    recovered. External (found by ``pidfile`` or ``cmdline``): the probe opens a pidfd on the
    process it found and reports its exit the moment the kernel does. Its uptime comes from
    the kernel's start time, exact only to the boot-time rounding (about a second).
    """

    class Params(_TargetParams):
        min_uptime: Duration = 1.0

    @classmethod
    def check_component(cls, params: Params, component: ComponentConfig, config: HealerConfig) -> Problems:
        return _needs_target(params, component, "a process probe")

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        self.params = params
        self.ctx = ctx
        self.supervised = not params.external
        self._finder = _ProcessFinder(params, ctx)
        self._pidfd: int | None = None
        self._watched: int | None = None

    async def check(self) -> ProbeResult:
        if self.supervised:
            return self._check_supervised()
        proc, why = self._finder.find()
        if proc is None:
            return ProbeResult(False, why, {"found": False})
        try:
            status = proc.status()
            uptime = max(0.0, self.ctx.clock.wall() - proc.create_time())
        except psutil.NoSuchProcess:
            self._finder.forget()
            return ProbeResult(False, f"pid {proc.pid} is gone", {"pid": proc.pid})
        values = {"pid": proc.pid, "status": status, "uptime_s": round(uptime, 3)}
        if status == psutil.STATUS_ZOMBIE:
            return ProbeResult(False, f"pid {proc.pid} is a zombie", values)
        self._watch(proc)
        if uptime < self.params.min_uptime:
            return ProbeResult(None, f"pid {proc.pid} up {uptime:.2f}s < min_uptime", values)
        return ProbeResult(True, f"pid {proc.pid} {status}", values)

    def _check_supervised(self) -> ProbeResult:
        pid = self.ctx.supervised_pid()
        if pid is None:
            return ProbeResult(False, "process not running")
        try:
            status = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            return ProbeResult(False, f"pid {pid} is gone", {"pid": pid})
        uptime = self.ctx.supervised_uptime() or 0.0
        values = {"pid": pid, "status": status, "uptime_s": round(uptime, 3)}
        if status == psutil.STATUS_ZOMBIE:
            return ProbeResult(False, f"pid {pid} is a zombie", values)
        if uptime < self.params.min_uptime:
            return ProbeResult(None, f"pid {pid} up {uptime:.2f}s < min_uptime", values)
        return ProbeResult(True, f"pid {pid} {status}", values)

    def _watch(self, proc: psutil.Process) -> None:
        if self._watched == proc.pid:
            return
        self.close()
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:
            return  # no pidfd here: the periodic check still sees the exit, one interval later
        if not proc.is_running():  # exited, or the pid was reused, before the pidfd was opened
            os.close(fd)
            return
        self._pidfd, self._watched = fd, proc.pid
        asyncio.get_running_loop().add_reader(fd, self._exited, proc.pid)

    def _exited(self, pid: int) -> None:
        self.close()
        self._finder.forget()
        self.ctx.push(ProbeResult(False, f"pid {pid} exited", {"pid": pid, "exited": True}))

    def close(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
        self._pidfd = self._watched = None


# -- resources ---------------------------------------------------------------------------------------
class ResourcesProbe:
    """Resource exhaustion: a process's RSS, CPU %, open fds and threads, and a path's free disk.

    Every measured value goes into the result; a failure names each threshold exceeded
    (``values["exceeded"]``, the first also as ``values["resource"]``). CPU % is measured
    between two checks, so the first check after (re)finding the process reports none.
    """

    class Params(_TargetParams):
        max_rss: ByteSize | None = None
        max_cpu_percent: float | None = Field(default=None, gt=0)
        max_open_fds: int | None = Field(default=None, ge=1)
        max_threads: int | None = Field(default=None, ge=1)
        path: AbsPath | None = None
        min_disk_free: ByteSize | None = None
        min_disk_free_percent: float | None = Field(default=None, gt=0, lt=100)

        @property
        def process_limits(self) -> bool:
            limits = (self.max_rss, self.max_cpu_percent, self.max_open_fds, self.max_threads)
            return any(v is not None for v in limits)

        @model_validator(mode="after")
        def _something_to_check(self) -> ResourcesProbe.Params:
            disk = self.min_disk_free is not None or self.min_disk_free_percent is not None
            if disk and self.path is None:
                raise ValueError("min_disk_free / min_disk_free_percent need a path")
            if self.path is not None and not disk:
                raise ValueError("a path needs min_disk_free or min_disk_free_percent")
            if not disk and not self.process_limits:
                raise ValueError(
                    "set at least one threshold: max_rss, max_cpu_percent, max_open_fds, max_threads, "
                    "min_disk_free or min_disk_free_percent"
                )
            return self

    @classmethod
    def check_component(cls, params: Params, component: ComponentConfig, config: HealerConfig) -> Problems:
        if not params.process_limits:
            return []
        return _needs_target(params, component, "a resources probe with process limits")

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        self.params = params
        self.ctx = ctx
        self._finder = _ProcessFinder(params, ctx)
        self._cpu_primed: psutil.Process | None = None

    async def check(self) -> ProbeResult:
        p = self.params
        values: dict[str, Any] = {}
        exceeded: list[dict[str, Any]] = []

        def over(metric: str, value: float, limit: float, kind: str = "max") -> None:
            if (value > limit) if kind == "max" else (value < limit):
                exceeded.append({"metric": metric, "value": value, "threshold": limit, "limit": kind})

        if p.process_limits:
            proc, why = self._finder.find()
            if proc is None:
                return ProbeResult(None, f"no process to measure: {why}", {"found": False})
            try:
                with proc.oneshot():
                    values["pid"] = proc.pid
                    values["rss_bytes"] = proc.memory_info().rss
                    values["open_fds"] = proc.num_fds()
                    values["threads"] = proc.num_threads()
                    cpu = proc.cpu_percent(None)
            except psutil.NoSuchProcess:
                self._finder.forget()
                return ProbeResult(None, f"pid {proc.pid} is gone", {"pid": proc.pid})
            except psutil.AccessDenied as exc:
                return ProbeResult(None, f"cannot measure pid {proc.pid}: {exc}", {"pid": proc.pid})
            if self._cpu_primed is proc:
                values["cpu_percent"] = round(cpu, 2)
            self._cpu_primed = proc
            if p.max_rss is not None:
                over("rss_bytes", values["rss_bytes"], int(p.max_rss))
            if p.max_cpu_percent is not None and "cpu_percent" in values:
                over("cpu_percent", values["cpu_percent"], p.max_cpu_percent)
            if p.max_open_fds is not None:
                over("open_fds", values["open_fds"], p.max_open_fds)
            if p.max_threads is not None:
                over("threads", values["threads"], p.max_threads)
        if p.path is not None:
            try:
                usage = shutil.disk_usage(p.path)
            except OSError as exc:
                return ProbeResult(False, f"cannot stat {p.path}: {exc.strerror or exc}", values)
            values["disk_path"] = str(p.path)
            values["disk_free_bytes"] = usage.free
            values["disk_free_percent"] = round(100 * usage.free / usage.total, 2) if usage.total else 0.0
            if p.min_disk_free is not None:
                over("disk_free_bytes", usage.free, int(p.min_disk_free), "min")
            if p.min_disk_free_percent is not None:
                over("disk_free_percent", values["disk_free_percent"], p.min_disk_free_percent, "min")
        if exceeded:
            values["exceeded"] = exceeded
            values["resource"] = exceeded[0]["metric"]
            return ProbeResult(False, "; ".join(_describe_excess(e) for e in exceeded), values)
        return ProbeResult(True, "within limits", values)


def _describe_excess(e: dict[str, Any]) -> str:
    metric, value, limit = e["metric"], e["value"], e["threshold"]
    sign = ">" if e["limit"] == "max" else "<"
    if metric.endswith("_bytes"):
        return f"{metric} {_mb(value)} {sign} {e['limit']} {_mb(limit)}"
    return f"{metric} {value:g} {sign} {e['limit']} {limit:g}"


# -- mqtt_heartbeat -----------------------------------------------------------------------------------
class MqttHeartbeatProbe:
    """An agent heart-beats over MQTT (healer.agent does): stale beyond ``max_age`` fails.

    Its last will (``offline`` on the status topic) fails the probe at once, pushed to the
    scheduler the moment it arrives. While healer itself has no broker connection the probe
    is inconclusive: a broker outage is not every agent's failure. Ages are measured from the
    latest of the last beat, the (re)connection to the broker and the start of the
    component's supervised process, so neither a reconnect nor a restart reads as stale.
    """

    class Params(_Params):
        agent: Name | None = None  # the agent id in the topics; default: the component's name
        max_age: Duration = 5.0

    @classmethod
    def check_component(cls, params: Params, component: ComponentConfig, config: HealerConfig) -> Problems:
        if config.mqtt is None:
            return [(("type",), "an mqtt_heartbeat probe needs the daemon's mqtt section")]
        return []

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        book = ctx.telemetry
        if book is None:
            raise ValueError("an mqtt_heartbeat probe needs the daemon's mqtt section")
        self.params = params
        self.ctx = ctx
        self.book = book
        self.agent = params.agent or ctx.component
        self.created = book.now()
        book.watch(self.agent, self._changed)

    def _changed(self, what: str) -> None:
        if what == "offline":
            result = self.evaluate()
            if result.ok is False:
                self.ctx.push(result)
                return
        self.ctx.wake()

    async def check(self) -> ProbeResult:
        return self.evaluate()

    def evaluate(self) -> ProbeResult:
        book = self.book
        now = book.now()
        live = book.agents.get(self.agent)
        values: dict[str, Any] = {"agent": self.agent, "max_age_s": self.params.max_age}
        if live is not None and live.seq is not None:
            values["seq"] = live.seq
        uptime = self.ctx.supervised_uptime()
        started = now - uptime if uptime is not None else None
        # A will left by the process before the current one started says nothing about this one.
        offline_at = live.offline_at if live is not None and live.offline else None
        if offline_at is not None and (started is None or offline_at >= started):
            reason = (live.offline_reason if live is not None else None) or "offline"
            values.update(state="offline", reason=reason, offline_for_s=round(now - offline_at, 3))
            return ProbeResult(False, f"agent {self.agent} offline ({reason})", values)
        if book.connected_since is None:
            return ProbeResult(None, "no broker connection: agent liveness unknown", values)
        baseline = max(x for x in (self.created, book.connected_since, started) if x is not None)
        last = live.last_seen if live is not None else None
        since = max(last, baseline) if last is not None else baseline
        age = now - since
        values["age_s"] = round(age, 3)
        values["state"] = "online" if last is not None and last >= baseline else "unheard"
        if age > self.params.max_age:
            heard = "no heartbeat" if last is None or last < baseline else "last heartbeat"
            return ProbeResult(
                False, f"agent {self.agent}: {heard} for {age:.1f}s (max {self.params.max_age:g}s)", values
            )
        if last is None or last < baseline:
            return ProbeResult(None, f"agent {self.agent}: waiting for a first heartbeat", values)
        return ProbeResult(True, f"agent {self.agent}: heartbeat {age:.1f}s ago", values)


_BUILTINS: dict[str, Any] = {
    "http": HttpProbe,
    "process": ProcessProbe,
    "tcp": TcpProbe,
    "exec": ExecProbe,
    "heartbeat_file": HeartbeatFileProbe,
    "resources": ResourcesProbe,
    "mqtt_heartbeat": MqttHeartbeatProbe,
}


class ProbeRegistry:
    """Probe kinds by name, loaded from entry points and validated at load."""

    GROUP = "healer.probes"

    def __init__(self, kinds: Mapping[str, Any]) -> None:
        self.kinds = dict(kinds)
        self.refused: dict[str, str] = {}

    @classmethod
    def discover(cls) -> ProbeRegistry:
        kinds: dict[str, Any] = {}
        refused: dict[str, str] = {}
        for ep in entry_points(group=cls.GROUP):
            origin = f"{ep.dist.name if ep.dist else '?'}:{ep.name} ({ep.value})"
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not take the daemon down
                refused[ep.name] = f"probe plugin {origin} failed to import: {exc}"
                continue
            params = getattr(obj, "Params", None)
            if not (isinstance(params, type) and issubclass(params, BaseModel)) or not callable(obj):
                refused[ep.name] = f"probe plugin {origin} has no pydantic Params model"
                continue
            kinds[ep.name] = obj
        # The built-ins are always present, even when the package metadata is stale.
        for name, probe in _BUILTINS.items():
            kinds.setdefault(name, probe)
        reg = cls(kinds)
        reg.refused = refused
        return reg

    def validate(self, kind: str, params: Mapping[str, Any]) -> BaseModel:
        factory = self.kinds.get(kind)
        if factory is None:
            import difflib

            near = difflib.get_close_matches(kind, self.kinds, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(sorted(self.kinds))})"
            raise ValueError(f"unknown probe type {kind!r}{hint}")
        model: type[BaseModel] = factory.Params
        return model.model_validate(dict(params))

    def create(self, kind: str, params: BaseModel, ctx: ProbeContext) -> Probe:
        probe: Probe = self.kinds[kind](params, ctx)
        return probe

    def config_problems(self, cfg: HealerConfig) -> Problems:
        """Validate every probe's parameters; positions point into the config file."""
        found: Problems = []
        for name, comp in cfg.components.items():
            for i, spec in enumerate(comp.probes):
                base: tuple[str | int, ...] = ("components", name, "probes", i)
                try:
                    params = self.validate(spec.type, spec.params)
                except ValueError as exc:
                    if isinstance(exc, ValidationError):
                        for err in exc.errors(include_url=False):
                            msg = err["msg"].removeprefix("Value error, ")
                            found.append(((*base, *err["loc"]), msg))
                    else:
                        found.append(((*base, "type"), str(exc)))
                    continue
                check = getattr(self.kinds[spec.type], "check_component", None)
                if check is not None:
                    try:
                        found.extend(((*base, *loc), msg) for loc, msg in check(params, comp, cfg))
                    except Exception as exc:  # a plugin's check must not hide the others' problems
                        found.append(((*base, "type"), f"probe check failed: {type(exc).__name__}: {exc}"))
        found.extend(mqtt_problems(cfg))
        return found


def mqtt_problems(cfg: HealerConfig) -> Problems:
    """The TLS files the MQTT link will need must be readable files at load time."""
    found: Problems = []
    if cfg.mqtt is None or cfg.mqtt.tls is None:
        return found
    for key in ("ca", "cert", "key"):
        path: Path | None = getattr(cfg.mqtt.tls, key)
        if path is not None and not os.access(path, os.R_OK):
            found.append((("mqtt", "tls", key), f"cannot read {path}"))
    return found
