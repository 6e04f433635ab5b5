"""Every probe type, passing and failing against real targets: a real HTTP server, a real
listening socket, real commands, a real stale file, real processes (one eating memory past
an RSS threshold, one a zombie, one found by cmdline and killed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psutil
import pytest

from healer.clock import Clock, SystemClock
from healer.monitor.probes import ProbeRegistry, ProbeResult
from healer.monitor.telemetry import TelemetryBook
from tests.helpers import PY, free_port


class Ctx:
    """A probe's context without a daemon: what it pushes is kept for the test to see."""

    def __init__(self, http: httpx.AsyncClient, pid: int | None = None) -> None:
        self.component = "target"
        self._http = http
        self._pid = pid
        self.pushed: list[ProbeResult] = []
        self.pushed_event = asyncio.Event()
        self.woken = 0

    def supervised_pid(self) -> int | None:
        return self._pid

    def supervised_uptime(self) -> float | None:
        return 10.0 if self._pid is not None else None

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    @property
    def clock(self) -> Clock:
        return SystemClock()

    @property
    def telemetry(self) -> TelemetryBook | None:
        return None

    def push(self, result: ProbeResult) -> None:
        self.pushed.append(result)
        self.pushed_event.set()

    def wake(self) -> None:
        self.woken += 1


REGISTRY = ProbeRegistry.discover()


@pytest.fixture
async def ctx() -> AsyncIterator[Ctx]:
    async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
        yield Ctx(http)


def probe(kind: str, ctx: Ctx, **params: Any) -> Any:
    return REGISTRY.create(kind, REGISTRY.validate(kind, params), ctx)


async def check(kind: str, ctx: Ctx, **params: Any) -> ProbeResult:
    result: ProbeResult = await probe(kind, ctx, **params).check()
    return result


# -- http ------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path.startswith("/ok") else 500
        body = b"all good" if code == 200 else b"broken"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def test_http_passes_and_fails_against_a_real_server(ctx: Ctx, http_server: int) -> None:
    base = f"http://127.0.0.1:{http_server}"
    ok = await check("http", ctx, url=f"{base}/ok", body_contains="good")
    assert ok.ok is True and ok.values["status"] == 200
    bad = await check("http", ctx, url=f"{base}/broken")
    assert bad.ok is False and bad.values["status"] == 500 and "HTTP 500" in bad.detail
    lacks = await check("http", ctx, url=f"{base}/ok", body_contains="nope")
    assert lacks.ok is False and "body lacks" in lacks.detail
    refused = await check("http", ctx, url=f"http://127.0.0.1:{free_port()}/ok")
    assert refused.ok is False and refused.values["error"] == "ConnectionRefusedError"


class _KeepAlive(BaseHTTPRequestHandler):
    """HTTP/1.1, chunked bodies, and a connection silently dropped after every second request."""

    protocol_version = "HTTP/1.1"
    connections: ClassVar[set[tuple[str, int]]] = set()
    served = 0

    def do_GET(self) -> None:
        _KeepAlive.connections.add(self.client_address)
        _KeepAlive.served += 1
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in (b"hello ", b"chunked world"):
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = _KeepAlive.served % 2 == 0  # without saying so: a stale keep-alive

    def log_message(self, *args: Any) -> None:
        pass


async def test_http_keeps_its_connection_alive_and_survives_a_dropped_one(ctx: Ctx) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = probe(
            "http", ctx, url=f"http://127.0.0.1:{server.server_address[1]}/x", body_contains="chunked world"
        )
        results = [await p.check() for _ in range(6)]
        assert all(r.ok for r in results), [r.detail for r in results]
        assert _KeepAlive.served == 6
        # Two requests per connection: kept alive, and each silently dropped one was replaced.
        assert len(_KeepAlive.connections) == 3
        p.close()
    finally:
        server.shutdown()
        server.server_close()


class CannedServer:
    """A real listening socket that answers every request with the next canned byte string,
    possibly in pieces with pauses between them (so a reader sees partial responses)."""

    def __init__(self, answers: list[list[bytes]]) -> None:
        self.answers = answers
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, contextlib.suppress(OSError):  # the client may drop (reset) a connection
                while self.answers:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    pieces = self.answers.pop(0)
                    for piece in pieces:
                        conn.sendall(piece)
                        time.sleep(0.02)
                    if pieces and pieces[-1].endswith(b"<close>"):
                        break

    def close(self) -> None:
        self.sock.close()


KEEP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize(
    ("pieces", "ok", "status", "reused"),
    [
        # Content-Length, sent in pieces: the reader waits for the whole body.
        ([b"HTTP/1.1 200 OK\r\nConte", b"nt-Length: 5\r\n\r\nhe", b"llo"], True, 200, True),
        # Interim 100 Continue, then chunked with an extension and trailers.
        (
            [
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nX-T: 1\r\n\r\n",
            ],
            True,
            200,
            True,
        ),
        # No length: the body runs until the server closes; the connection is not reused.
        ([b"HTTP/1.0 200 OK\r\n\r\nhello<close>"], True, 200, False),
        # Connection: close is honoured; a 503 fails with its status.
        ([b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy"], False, 503, False),
        # Not HTTP at all.
        ([b"SSH-2.0-OpenSSH\r\n\r\n"], False, None, False),
        # A body far past the limit: judged on its first 64 KiB, connection dropped.
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\nhello" + b"x" * 199_995], True, 200, False),
    ],
)
async def test_http_reads_what_real_servers_send(
    ctx: Ctx, pieces: list[bytes], ok: bool, status: int | None, reused: bool
) -> None:
    server = CannedServer([pieces, [KEEP]])
    try:
        p = probe("http", ctx, url=f"http://127.0.0.1:{server.port}/h", body_contains="he" if ok else None)
        async with asyncio.timeout(10):
            first = await p.check()
        assert first.ok is ok, first.detail
        assert first.values.get("status") == status
        if status is None:
            assert first.values["error"] == "HttpProtocolError"
        async with asyncio.timeout(10):
            second = await p.check()
        assert second.ok is True, second.detail
        assert server.connections == (1 if reused else 2)
        p.close()
    finally:
        server.close()


async def test_http_and_tcp_answer_without_waiting_once_the_peer_has(ctx: Ctx) -> None:
    """The scheduler's inline path: check_nowait() begins, later calls finish, never blocking."""
    server = CannedServer([[KEEP], [KEEP]])
    try:
        for kind, params in (
            ("http", {"url": f"http://127.0.0.1:{server.port}/"}),
            ("tcp", {"host": "127.0.0.1", "port": server.port}),
        ):
            p = probe(kind, ctx, **params)
            for _ in range(2):
                result = p.check_nowait()
                deadline = time.monotonic() + 5
                while result is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                    result = p.check_nowait()
                assert result is not None and result.ok is True, (kind, result)
            p.close()
    finally:
        server.close()


def full_backlog_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A loopback port whose accept queue is full: a new connect hangs in SYN_SENT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.05)
    return listener, fillers


async def test_tcp_connect_that_hangs_is_cut_by_the_timeout_and_abandoned(ctx: Ctx) -> None:
    listener, fillers = full_backlog_listener()
    try:
        p = probe("tcp", ctx, host="127.0.0.1", port=listener.getsockname()[1])
        assert p.check_nowait() is None, "a connect to a full accept queue cannot complete at once"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await p.check()
        assert p._pending is None, "the abandoned connect's socket is closed"
    finally:
        for s in fillers:
            s.close()
        listener.close()


# -- tcp -------------------------------------------------------------------------------------------
async def test_tcp_passes_on_a_listening_socket_and_fails_on_a_closed_port(ctx: Ctx) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ok = await check("tcp", ctx, host="127.0.0.1", port=port)
        assert ok.ok is True and ok.values["connect_ms"] >= 0
    closed = await check("tcp", ctx, host="127.0.0.1", port=port)
    assert closed.ok is False and "refused" in closed.detail.lower()


# -- exec ------------------------------------------------------------------------------------------
async def test_exec_exit_codes_and_output(ctx: Ctx) -> None:
    ok = await check("exec", ctx, argv=[PY, "-c", "print('fine')"], output_contains="fine")
    assert ok.ok is True and ok.values["exit_code"] == 0
    bad = await check("exec", ctx, argv=[PY, "-c", "import sys; print('db down'); sys.exit(3)"])
    assert bad.ok is False and bad.values["exit_code"] == 3 and "db down" in bad.detail
    allowed = await check("exec", ctx, argv=[PY, "-c", "raise SystemExit(3)"], expect_exit=[0, 3])
    assert allowed.ok is True
    lacks = await check("exec", ctx, argv=[PY, "-c", "print('x')"], output_contains="fine")
    assert lacks.ok is False
    # An argv is never given to a shell: the metacharacters arrive as one argument.
    literal = await check("exec", ctx, argv=[PY, "-c", "import sys; print(sys.argv[1])", "a; exit 7"])
    assert literal.ok is True and literal.values["output"].strip() == "a; exit 7"
    missing = await check("exec", ctx, argv=["/nonexistent/healer-check"])
    assert missing.ok is False and "cannot run" in missing.detail


async def test_exec_timeout_kills_the_whole_process_group(ctx: Ctx, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n"
    )
    p = probe("exec", ctx, argv=[PY, "-c", script])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.5):  # what the scheduler does with the probe's timeout
            await p.check()
    parent, child = (int(x) for x in pids.read_text().split())
    procs = []
    for pid in (parent, child):
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=5)
    assert not alive, f"left behind after the timeout: {alive}"


# -- heartbeat_file --------------------------------------------------------------------------------
async def test_heartbeat_file_fresh_stale_and_missing(ctx: Ctx, tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    beat.write_text("x")
    fresh = await check("heartbeat_file", ctx, path=str(beat), max_age="5s")
    assert fresh.ok is True and fresh.values["age_s"] < 5
    old = time.time() - 120
    os.utime(beat, (old, old))  # a real file whose writer stopped two minutes ago
    stale = await check("heartbeat_file", ctx, path=str(beat), max_age="5s")
    assert stale.ok is False and stale.values["age_s"] >= 119 and "old" in stale.detail
    missing = await check("heartbeat_file", ctx, path=str(tmp_path / "nope"), max_age="5s")
    assert missing.ok is False and missing.values["missing"] is True


# -- resources -------------------------------------------------------------------------------------
def _spawn(code: str, tmp_path: Path, marker: str = "") -> tuple[subprocess.Popen[bytes], Path]:
    """A child that prints 'ready' when set up; its pid goes to a pidfile."""
    proc = subprocess.Popen([PY, "-c", code, marker], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    pidfile = tmp_path / f"{proc.pid}.pid"
    pidfile.write_text(f"{proc.pid}\n")
    return proc, pidfile


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(10)


async def test_resources_a_process_eating_memory_past_the_rss_threshold(ctx: Ctx, tmp_path: Path) -> None:
    eater, pidfile = _spawn(
        "import sys, time\nblob = b'x' * (80 << 20)\nprint('ready', flush=True)\ntime.sleep(60)\n", tmp_path
    )
    try:
        over = await check("resources", ctx, pidfile=str(pidfile), max_rss="50MB")
        assert over.ok is False
        assert over.values["rss_bytes"] > 50_000_000
        assert over.values["resource"] == "rss_bytes"
        assert over.values["exceeded"] == [
            {
                "metric": "rss_bytes",
                "value": over.values["rss_bytes"],
                "threshold": 50 * 10**6,
                "limit": "max",
            }
        ]
        assert "rss_bytes" in over.detail and "> max 50.0 MB" in over.detail
        under = await check("resources", ctx, pidfile=str(pidfile), max_rss="500MB")
        assert under.ok is True and under.values["rss_bytes"] > 80 << 20
    finally:
        _stop(eater)


async def test_resources_threads_fds_cpu_and_disk(ctx: Ctx, tmp_path: Path) -> None:
    code = (
        "import sys, threading, time\n"
        "files = [open(sys.executable, 'rb') for _ in range(40)]\n"
        "for _ in range(12): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "end = time.monotonic() + 1.0\n"
        "while time.monotonic() < end: pass\n"  # about a second of CPU, then idle
        "time.sleep(60)\n"
    )
    busy, pidfile = _spawn(code, tmp_path)
    try:
        p = probe("resources", ctx, pidfile=str(pidfile), max_threads=5, max_open_fds=20, max_cpu_percent=30)
        first = await p.check()
        assert first.ok is False
        metrics = [e["metric"] for e in first.values["exceeded"]]
        assert metrics == ["open_fds", "threads"], "CPU needs two samples: none on the first check"
        assert first.values["threads"] >= 13 and first.values["open_fds"] >= 40
        assert "cpu_percent" not in first.values
        await asyncio.sleep(0.3)
        second = await p.check()
        assert second.values["cpu_percent"] > 30
        assert "cpu_percent" in [e["metric"] for e in second.values["exceeded"]]
        relaxed = await check("resources", ctx, pidfile=str(pidfile), max_threads=100, max_open_fds=1000)
        assert relaxed.ok is True
    finally:
        _stop(busy)
    full = await check("resources", ctx, path=str(tmp_path), min_disk_free="1PB")
    assert full.ok is False and full.values["resource"] == "disk_free_bytes"
    assert full.values["disk_free_bytes"] > 0
    roomy = await check(
        "resources", ctx, path=str(tmp_path), min_disk_free="1KB", min_disk_free_percent=0.001
    )
    assert roomy.ok is True and 0 < roomy.values["disk_free_percent"] <= 100


async def test_resources_of_the_supervised_process(ctx: Ctx) -> None:
    sup = Ctx(ctx.http, pid=os.getpid())  # this test process stands in for a supervised one
    ok = await check("resources", sup, max_rss="100GB")
    assert ok.ok is True and ok.values["pid"] == os.getpid() and ok.values["rss_bytes"] > 0
    gone = await check("resources", Ctx(ctx.http, pid=None), max_rss="1GB")
    assert gone.ok is None, "no process to measure is inconclusive: the process probe judges liveness"


# -- process (not started by healer) ----------------------------------------------------------------
SLEEPER = "import sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n"


async def test_process_by_pidfile_exit_is_pushed_through_a_pidfd(ctx: Ctx, tmp_path: Path) -> None:
    proc, pidfile = _spawn(SLEEPER, tmp_path)
    try:
        p = probe("process", ctx, pidfile=str(pidfile), min_uptime=0)
        ok = await p.check()
        assert ok.ok is True and ok.values["pid"] == proc.pid
        proc.kill()
        async with asyncio.timeout(5):
            await ctx.pushed_event.wait()  # no polling: the kernel reports the exit
        assert ctx.pushed[0].ok is False and ctx.pushed[0].values == {"pid": proc.pid, "exited": True}
        proc.wait(5)
        after = await p.check()
        assert after.ok is False and "gone" in after.detail
        p.close()
    finally:
        _stop(proc)
    pidfile.write_text("not-a-pid")
    assert (await check("process", ctx, pidfile=str(pidfile))).ok is False
    assert (await check("process", ctx, pidfile=str(tmp_path / "absent.pid"))).ok is False


async def test_process_by_cmdline_pattern_and_min_uptime(ctx: Ctx, tmp_path: Path) -> None:
    marker = f"healer-test-marker-{os.getpid()}-{time.monotonic_ns()}"
    proc, _ = _spawn(SLEEPER, tmp_path, marker)
    try:
        young = await check("process", ctx, cmdline=marker, min_uptime="1h")
        assert young.ok is None and young.values["pid"] == proc.pid, "too young to count yet"
        ok = await check("process", ctx, cmdline=rf"{marker}$", min_uptime=0)
        assert ok.ok is True and ok.values["pid"] == proc.pid
    finally:
        _stop(proc)
    none = await check("process", ctx, cmdline=marker)
    assert none.ok is False and "no process matches" in none.detail


async def test_a_zombie_counts_as_dead(ctx: Ctx, tmp_path: Path) -> None:
    proc, pidfile = _spawn(SLEEPER, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # not reaped yet: a zombie, as under a careless parent
    deadline = time.monotonic() + 5
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    try:
        dead = await check("process", ctx, pidfile=str(pidfile), min_uptime=0)
        assert dead.ok is False and "zombie" in dead.detail
    finally:
        proc.wait(5)


# -- parameters ------------------------------------------------------------------------------------
def test_params_are_validated() -> None:
    bad = {
        "tcp": {"host": "127.0.0.1", "port": 70000},
        "exec": {"argv": []},
        "heartbeat_file": {"path": "relative/beat", "max_age": "5s"},
        "resources": {},
        "process": {"cmdline": "(unclosed"},
        "mqtt_heartbeat": {"max_age": "soon"},
    }
    for kind, params in bad.items():
        with pytest.raises(ValueError):
            REGISTRY.validate(kind, params)
    with pytest.raises(ValueError, match="need a path"):
        REGISTRY.validate("resources", {"min_disk_free": "1GB"})
