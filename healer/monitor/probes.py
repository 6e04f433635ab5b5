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

import _socket
import asyncio
import contextlib
import errno
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


class NowaitProbe(Probe, Protocol):
    """A probe that can often answer without waiting (optional; the scheduler looks for it).

    ``check_nowait`` must not block: it returns the result when it has one at once (a
    ``stat``, a ``/proc`` read, a connect the kernel completed), or None when the answer is
    not there yet (a connect in flight). The scheduler then calls it again a moment later
    and, if it is still None, awaits ``check()`` for what is left of the timeout; ``check``
    finishes what ``check_nowait`` began. If the timeout passes first, the scheduler calls
    the probe's ``close()`` to abandon the check in flight. Checked inline, a thousand of
    these a second cost no task and no timeout object each.
    """

    def check_nowait(self) -> ProbeResult | None: ...


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
_HEAD_LIMIT = 65_536  # status line and headers
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


class HttpProtocolError(Exception):
    """The server's answer is not HTTP/1.x as this probe reads it."""


class HttpProbe:
    """GET a URL; healthy when the status is expected (and the body contains a marker, if set).

    One kept-alive connection per probe. Plain ``http://`` runs on a bare non-blocking socket
    with a small HTTP/1.x response reader (status line, headers, a ``Content-Length``,
    chunked or read-to-close body, at most ``_BODY_LIMIT`` of it kept): the request is
    written and the answer read without a task, a stream or a timeout object, so the
    scheduler checks it inline (:class:`NowaitProbe`) and a thousand a second stay cheap.
    ``https://`` goes through asyncio's TLS streams and h11. Redirects are not followed and
    proxies are not used. Checked inline, a response not there at once is read one scheduler
    tick later (5-20 ms): ``elapsed_ms`` is then an upper bound.
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
            if any(c in v for c in " \r\n\t\0"):
                raise ValueError(f"unexpected whitespace or control character in {v!r}")
            return v

        @field_validator("headers")
        @classmethod
        def _clean_headers(cls, v: dict[str, str]) -> dict[str, str]:
            for name, value in v.items():
                if not _TOKEN.fullmatch(name):
                    raise ValueError(f"bad header name {name!r}")
                if not _FIELD_VALUE.fullmatch(value) or any(ord(c) > 0xFF for c in value):
                    raise ValueError(f"bad value for header {name!r}: control characters are not allowed")
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
        # plain http
        lines = [f"GET {self._target} HTTP/1.1", *(f"{k}: {v}" for k, v in self._headers), "", ""]
        self._request = "\r\n".join(lines).encode("latin-1")
        self._addr = None if self._tls else _numeric_address(self._host, self._port)
        self._numeric = self._addr is not None
        self._sock: _socket.socket | None = None
        self._connecting = False
        self._unsent = b""
        self._buf = bytearray()
        self._eof = False
        self._start: float | None = None  # a check in flight since
        self._reused = False  # the check in flight runs on a connection an earlier one used
        self._retried = False
        self._monotonic = ctx.clock.monotonic

    # -- plain http: non-blocking, resumable --------------------------------------------------------
    def check_nowait(self) -> ProbeResult | None:
        if self._tls or (self._sock is None and self._addr is None):
            return None  # TLS, or a name to resolve: check() does it
        if self._start is None:
            self._start = self._monotonic()
            self._begin(retry=False)
        start = self._start
        while True:
            try:
                answer = self._advance()
            except (OSError, HttpProtocolError) as exc:
                # The server may close a kept-alive connection at any time: one fresh attempt.
                stale = self._reused and not self._buf and not self._retried
                self.close()
                if stale and self._addr is not None:
                    self._start = start
                    self._begin(retry=True)
                    continue
                return _http_error(exc)
            if answer is None:
                return None
            self._start = None
            return self._judge(*answer, start)

    def _begin(self, retry: bool) -> None:
        self._retried = retry
        self._reused = self._sock is not None
        self._unsent = self._request
        self._buf.clear()
        self._eof = False

    def _advance(self) -> tuple[int, bytes] | None:
        """One step further without blocking: the answer, or None while waiting for the peer."""
        if self._sock is None:
            assert self._addr is not None
            family, addr = self._addr
            sock = self._sock = _socket.socket(family, _STREAM_NONBLOCK)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                raise OSError(err, os.strerror(err))
            self._connecting = err != 0
        sock = self._sock
        if self._connecting:
            assert self._addr is not None
            # connect() again: EALREADY while in flight, 0 once established, else its error.
            err = sock.connect_ex(self._addr[1])
            if err in _IN_PROGRESS:
                return None
            if err not in _CONNECTED:
                raise OSError(err, os.strerror(err))
            self._connecting = False
        if self._unsent:
            while self._unsent:
                try:
                    sent = sock.send(self._unsent)
                except BlockingIOError:
                    return None
                self._unsent = self._unsent[sent:]
            # The answer needs a round trip to the peer: do not ask for it in the same breath
            # (a recv that finds nothing costs a system call and an exception).
            return None
        buf = self._buf
        answer = None
        while not self._eof and len(buf) < _HEAD_LIMIT + 2 * _BODY_LIMIT:
            try:
                data = sock.recv(65_536)
            except BlockingIOError:
                break  # nothing new since the last look, which found the answer incomplete
            if not data:
                self._eof = True
            buf += data
            answer = _read_response(buf, self._eof)
            if answer is not None:
                break  # complete: no further recv (that would only find nothing)
        else:
            answer = _read_response(buf, self._eof)
        if answer is None:
            if self._eof:
                raise HttpProtocolError("connection closed before a complete response")
            return None
        status, body, reusable = answer
        if not reusable or self._eof:
            self.close()
        return status, body

    def _judge(self, status: int, body: bytes, start: float) -> ProbeResult:
        values = {"status": status, "elapsed_ms": round((self._monotonic() - start) * 1000, 2)}
        p = self.params
        if status not in p.expect_status:
            text = body.decode(errors="replace")
            return ProbeResult(False, f"HTTP {status}: {text[:120]}", values)
        if p.body_contains is not None and p.body_contains not in body.decode(errors="replace"):
            return ProbeResult(False, f"body lacks {p.body_contains!r}", values)
        return ProbeResult(True, f"HTTP {status}", values)

    async def check(self) -> ProbeResult:
        if self._tls:
            return await self._check_tls()
        loop = asyncio.get_running_loop()
        if self._sock is None and self._addr is None:
            try:
                infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
            except OSError as exc:
                return _http_error(exc)
            self._addr = (infos[0][0], infos[0][4])
        try:
            while (result := self.check_nowait()) is None:
                assert self._sock is not None
                fd = self._sock.fileno()
                ready: asyncio.Future[None] = loop.create_future()
                if self._connecting or self._unsent:
                    loop.add_writer(fd, _resolve_once, ready)
                    try:
                        await ready
                    finally:
                        loop.remove_writer(fd)
                else:
                    loop.add_reader(fd, _resolve_once, ready)
                    try:
                        await ready
                    finally:
                        loop.remove_reader(fd)
        except BaseException:
            self.close()  # cancelled mid-request (timeout): the connection's state is unknown
            raise
        if not self._numeric and result.ok is False and "error" in result.values:
            self._addr = None  # resolve again next time
        return result

    # -- https: asyncio TLS streams and h11 -------------------------------------------------------
    async def _check_tls(self) -> ProbeResult:
        start = self._monotonic()
        try:
            status, body = await self._get()
        except (OSError, h11.ProtocolError, EOFError) as exc:
            self.close()
            return _http_error(exc)
        except BaseException:
            self.close()  # cancelled mid-request (timeout): the connection's state is unknown
            raise
        return self._judge(status, body, start)

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
            ssl_ctx = ssl.create_default_context()
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=ssl_ctx, server_hostname=self._host
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
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._connecting = False
        self._start = None  # a check in flight is abandoned with its connection


def _http_error(exc: BaseException) -> ProbeResult:
    why = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
    return ProbeResult(False, f"{type(exc).__name__}: {why}"[:200], {"error": type(exc).__name__})


# One match validates a whole plain response head (status line, token-named header lines);
# a second finds the framing fields in it (the only ones that decide where the message ends),
# so a head is read without a Python step per header line. The usual answer (a status and a
# Content-Length) is then read at once; anything else the head's fields decide (chunked,
# read-to-close, Connection, 204/304, a body over the limit) goes through ``_read_body``, and
# anything unusual in the head (an interim 1xx, a head not complete yet, stray CR or LF, a
# malformed line) through the line-by-line reader below, which decides it exactly as before.
_FAST_HEAD = re.compile(
    rb"(HTTP/1\.[^ \r\n]*) ([0-9]{3})(?: [^\r\n]*)?\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*\r\n)*)\r\n"
)
_FRAMING_FIELD = re.compile(
    rb"^(connection|transfer-encoding|content-length):[ \t]*([^\r\n]*?)[ \t]*\r\n",
    re.MULTILINE | re.IGNORECASE,
)


def _read_response(buf: bytearray, eof: bool) -> tuple[int, bytes, bool] | None:
    """(status, body, connection reusable) of the response at the start of ``buf``; None if
    more bytes are needed. Interim 1xx responses are skipped; at most ``_BODY_LIMIT`` of the
    body is kept (a longer one makes the connection not reusable)."""
    m = _FAST_HEAD.match(buf)
    if m is not None and m.group(2)[0] != 0x31:  # "1": an interim response, the slow path
        status, pos = int(m.group(2)), m.end()
        fields = _FRAMING_FIELD.findall(m.group(3))
        length = connection = None
        for raw_name, raw_value in fields:
            name = raw_name.lower()
            if name == b"content-length" and length is None:
                length = raw_value
            elif name == b"connection" and connection is None:
                connection = raw_value
            else:
                break  # chunked, or a field given twice: the general reader
        else:
            if length is not None and length.isdigit() and status not in (204, 304):
                n = int(length)
                if n <= _BODY_LIMIT:
                    stop = pos + n
                    if len(buf) < stop:
                        return None
                    version = m.group(1).decode("latin-1")
                    keep = _keep_alive(version, None if connection is None else connection.decode("latin-1"))
                    return status, bytes(buf[pos:stop]), keep and stop == len(buf)
        headers: dict[str, str] = {}
        for raw_name, raw_value in fields:
            key = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return _read_body(buf, eof, m.group(1).decode("latin-1"), status, headers, pos)
    head = _read_head(buf)
    if head is None:
        return None
    return _read_body(buf, eof, *head)


def _read_head(buf: bytearray) -> tuple[str, int, dict[str, str], int] | None:
    pos = 0
    while True:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(buf) - pos > _HEAD_LIMIT:
                raise HttpProtocolError("response head too large")
            return None
        lines = bytes(buf[pos:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if (
            not version.startswith("HTTP/1.")
            or not (len(code) == 3 and code.isdigit())
            or rest[3:4] not in ("", " ")
        ):
            raise HttpProtocolError(f"bad status line {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise HttpProtocolError(f"bad header line {line[:80]!r}")
            key = name.lower()
            value = value.strip(" \t")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        status, pos = int(code), end + 4
        if not 100 <= status < 200:
            return version, status, headers, pos


def _read_body(
    buf: bytearray, eof: bool, version: str, status: int, headers: dict[str, str], pos: int
) -> tuple[int, bytes, bool] | None:
    keep = _keep_alive(version, headers.get("connection"))
    te = headers.get("transfer-encoding")
    length = headers.get("content-length")
    stop: int | None  # where the message ends; None: it does not end before the connection does
    if status in (204, 304):
        body, stop = b"", pos
    elif te is not None and te.rsplit(",", 1)[-1].strip().lower() == "chunked":
        chunked = _read_chunked(buf, pos)
        if chunked is None:
            return None
        body, stop = chunked
    elif te is None and length is not None:
        values = {v.strip() for v in length.split(",")}
        n_text = next(iter(values))
        # ASCII digits only: str.isdigit() also takes "²", which int() then rejects.
        if len(values) != 1 or not (n_text.isascii() and n_text.isdigit()):
            raise HttpProtocolError(f"bad Content-Length {length[:40]!r}")
        n = int(n_text)
        if n > _BODY_LIMIT:
            if len(buf) - pos < _BODY_LIMIT:
                return None
            body, stop = bytes(buf[pos : pos + _BODY_LIMIT]), None
        else:
            if len(buf) - pos < n:
                return None
            body, stop = bytes(buf[pos : pos + n]), pos + n
    else:  # read until the server closes
        if not eof and len(buf) - pos < _BODY_LIMIT:
            return None
        body, stop = bytes(buf[pos : pos + _BODY_LIMIT]), None
    return status, body, keep and stop == len(buf)


def _keep_alive(version: str, options: str | None) -> bool:
    """Whether the connection may carry the next request, by the version and Connection."""
    if options is None:
        return version != "HTTP/1.0"
    connection = {t.strip().lower() for t in options.split(",")}
    return "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection


def _read_chunked(buf: bytearray, pos: int) -> tuple[bytes, int | None] | None:
    body = bytearray()
    while True:
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            if len(buf) - pos > 1024:
                raise HttpProtocolError("chunk size line too long")
            return None
        size_text = bytes(buf[pos:nl]).split(b";", 1)[0].strip()
        if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise HttpProtocolError(f"bad chunk size {size_text[:20]!r}")
        size, pos = int(size_text, 16), nl + 2
        if size == 0:
            if buf[pos : pos + 2] == b"\r\n":
                return bytes(body), pos + 2
            trailers = buf.find(b"\r\n\r\n", pos)
            return None if trailers < 0 else (bytes(body), trailers + 4)
        if len(body) + size > _BODY_LIMIT:  # enough seen: keep the limit, drop the connection
            take = min(_BODY_LIMIT - len(body), len(buf) - pos)
            if len(body) + take < _BODY_LIMIT:
                return None
            body += buf[pos : pos + take]
            return bytes(body), None
        if len(buf) < pos + size + 2:
            return None
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise HttpProtocolError("chunk not followed by CRLF")
        body += buf[pos : pos + size]
        pos += size + 2


# -- tcp -------------------------------------------------------------------------------------------
class TcpProbe:
    """Open a TCP connection; healthy when the peer accepts it.

    A bare non-blocking socket, no stream: a probe only needs the handshake. An address given
    as a number is used as is; a name is resolved (asynchronously) once, and again after a
    failure. ``connect_ms`` is when the probe saw the connection established: checked inline,
    a handshake still in flight is looked at again one scheduler tick later (5-20 ms), so it
    is an upper bound.
    """

    class Params(_Params):
        host: str = Field(min_length=1)
        port: int = Field(ge=1, le=65535)

    def __init__(self, params: Params, ctx: ProbeContext) -> None:
        self.params = params
        self.ctx = ctx
        self.target = f"{params.host}:{params.port}"
        self._ok_detail = f"connected to {self.target}"
        self._addr: tuple[int, tuple[Any, ...]] | None = _numeric_address(params.host, params.port)
        self._numeric = self._addr is not None
        self._pending: tuple[_socket.socket, float, Any] | None = None  # a connect in flight, since, to
        self._monotonic = ctx.clock.monotonic

    def check_nowait(self) -> ProbeResult | None:
        if self._pending is not None:
            return self._settle()
        if self._addr is None:
            return None  # a name to resolve: check() does that
        family, addr = self._addr
        start = self._monotonic()
        try:
            # The C socket type: socket.socket's Python-level __init__ and close() were a tenth of
            # a check. Non-blocking from creation, no setblocking() call.
            sock = _socket.socket(family, _STREAM_NONBLOCK)
        except OSError as exc:
            return self._failed(exc.errno)
        err = sock.connect_ex(addr)
        if err in _IN_PROGRESS:
            self._pending = (sock, start, addr)
            return None
        sock.close()
        return self._connected(start) if err == 0 else self._failed(err)

    def _settle(self) -> ProbeResult | None:
        """The connect in flight: refused, established, or still going."""
        assert self._pending is not None
        sock, start, addr = self._pending
        # Asking connect() again is one system call where SO_ERROR + getpeername() were two:
        # EALREADY while the handshake is in flight, 0 once it completed (EISCONN after that),
        # otherwise the connect's error (refused, unreachable, reset).
        err = sock.connect_ex(addr)
        if err in _IN_PROGRESS:
            return None
        self.close()
        return self._connected(start) if err in _CONNECTED else self._failed(err)

    async def check(self) -> ProbeResult:
        result = self.check_nowait()
        if result is not None:
            return result
        loop = asyncio.get_running_loop()
        if self._pending is None:
            p = self.params
            try:
                infos = await loop.getaddrinfo(p.host, p.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else f"{type(exc).__name__}: {exc}"
                return ProbeResult(False, f"connect {self.target}: {reason}", {"errno": exc.errno})
            self._addr = (infos[0][0], infos[0][4])
            result = self.check_nowait()
        try:
            while result is None:
                assert self._pending is not None
                fd = self._pending[0].fileno()
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, _resolve_once, writable)
                try:
                    await writable  # a connecting socket turns writable when the handshake ends
                finally:
                    loop.remove_writer(fd)
                result = self._settle()
        except BaseException:
            self.close()  # cancelled (the timeout): this connect is abandoned
            raise
        return result

    def _connected(self, start: float) -> ProbeResult:
        connect_ms = round((self._monotonic() - start) * 1000, 2)
        return ProbeResult(True, self._ok_detail, {"connect_ms": connect_ms})

    def _failed(self, err: int | None) -> ProbeResult:
        if not self._numeric:
            self._addr = None
        reason = os.strerror(err) if err else "connection failed"
        return ProbeResult(False, f"connect {self.target}: {reason}", {"errno": err})

    def close(self) -> None:
        if self._pending is not None:
            self._pending[0].close()
            self._pending = None


_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_IN_PROGRESS = frozenset((errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN))
_CONNECTED = frozenset((0, errno.EISCONN))


def _numeric_address(host: str, port: int) -> tuple[int, tuple[Any, ...]] | None:
    """The socket address of a numeric host, found without any lookup; None for a name."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    return (infos[0][0], infos[0][4]) if infos else None


def _resolve_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


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
        self._path = str(params.path)  # a Path converts itself on every stat and format
        self._wall = ctx.clock.wall

    async def check(self) -> ProbeResult:
        return self.check_nowait()

    def check_nowait(self) -> ProbeResult:
        p = self.params
        try:
            mtime = os.stat(self._path).st_mtime
        except FileNotFoundError:
            return ProbeResult(False, f"{p.path} does not exist", {"max_age_s": p.max_age, "missing": True})
        except OSError as exc:
            return ProbeResult(False, f"cannot stat {p.path}: {exc.strerror}", {"max_age_s": p.max_age})
        age = self._wall() - mtime
        values = {"age_s": round(age, 3), "max_age_s": p.max_age, "mtime": mtime}
        if age > p.max_age:
            return ProbeResult(False, f"{p.path} is {age:.1f}s old (max {p.max_age:g}s)", values)
        return ProbeResult(True, f"{self._path} is {age:.1f}s old", values)


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
        return self.check_nowait()

    def check_nowait(self) -> ProbeResult:
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
        return self.check_nowait()

    def check_nowait(self) -> ProbeResult:
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

    def check_nowait(self) -> ProbeResult:
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
