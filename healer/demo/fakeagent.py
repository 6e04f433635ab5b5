"""A fake AI agent / fake service that healer's demo, tests and benchmarks supervise.

Run it as ``python -m healer.demo.fakeagent --name NAME --port PORT [...]``.

It is deliberately stdlib-only so that it starts fast. It behaves like a small,
well-mannered service:

* serves ``GET /health`` (and ``GET /``) on ``127.0.0.1:PORT`` only -- 200 with
  ``{"status": "ok", "name": ..., "pid": ...}``, or 503 naming the failed
  dependency when one of its ``--depends-on`` health URLs is failing;
* touches ``--heartbeat-file`` every ``--heartbeat-interval`` seconds;
* keeps a counter in ``--state-file`` (read at start, incremented and written
  atomically each heartbeat) so a test can see that an agent resumed from state;
* exits 0 promptly on SIGTERM / SIGINT;
* ``--crash-on-start`` exits with status 3 about 0.1 s after start (a crash loop);
* ``--startup-delay`` waits before binding the port (a slow starter).

Nothing special is done for SIGSTOP / SIGCONT: a stopped agent simply stops
answering and stops heart-beating, which is exactly what a hung agent looks like.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

BIND_HOST = "127.0.0.1"
CRASH_EXIT_CODE = 3
BIND_FAILED_EXIT_CODE = 1
DEP_CHECK_INTERVAL = 0.2
DEP_CHECK_TIMEOUT = 0.3
SERVE_POLL_INTERVAL = 0.05
CRASH_DELAY = 0.1


def _log(name: str, message: str) -> None:
    """Write one diagnostic line to stderr (never raises)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"fakeagent {name} pid={os.getpid()}: {message}\n")
        sys.stderr.flush()


class DependencyStatus:
    """Cached result of the most recent health check of one dependency."""

    __slots__ = ("checked_at", "error", "ok", "url")

    def __init__(self, url: str, ok: bool = False, error: str = "not checked yet") -> None:
        self.url = url
        self.ok = ok
        self.error = error
        self.checked_at = time.monotonic()


def parse_http_url(url: str) -> tuple[str, int, str]:
    """Split an ``http://host[:port]/path`` URL into (host, port, path-with-query)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host[:port]/path URLs are supported, got {url!r}")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return parts.hostname, parts.port or 80, path


class DependencyChecker:
    """Checks dependency health URLs in background threads and caches the results.

    One thread per dependency, so one hung dependency (e.g. SIGSTOPped: the kernel
    accepts the connection, nobody answers) cannot delay the others. Plain
    ``http.client`` is used (no proxies from the environment, no extra imports).
    """

    def __init__(
        self,
        urls: Sequence[str],
        stop: threading.Event,
        interval: float = DEP_CHECK_INTERVAL,
        timeout: float = DEP_CHECK_TIMEOUT,
    ) -> None:
        self.urls = list(urls)
        self.stop = stop
        self.interval = interval
        self.timeout = timeout
        self._lock = threading.Lock()
        self._status = {url: DependencyStatus(url) for url in self.urls}
        self._first_round = {url: threading.Event() for url in self.urls}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index, url in enumerate(self.urls):
            thread = threading.Thread(target=self._run, args=(url,), name=f"dep-check-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def check_once(self, url: str) -> DependencyStatus:
        """Probe ``url`` once; 2xx is healthy, anything else (or no answer in time) is not."""
        conn: http.client.HTTPConnection | None = None
        try:
            host, port, path = parse_http_url(url)
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            response.read(65536)
            if 200 <= response.status < 300:
                return DependencyStatus(url, ok=True, error="")
            return DependencyStatus(url, error=f"HTTP {response.status}")
        except (http.client.HTTPException, OSError, ValueError) as exc:
            return DependencyStatus(url, error=f"{type(exc).__name__}: {exc}")
        finally:
            if conn is not None:
                conn.close()

    def _run(self, url: str) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            result = self.check_once(url)
            with self._lock:
                self._status[url] = result
            self._first_round[url].set()
            elapsed = time.monotonic() - started
            if self.stop.wait(max(0.0, self.interval - elapsed)):
                return

    def failed(self, wait_first: float = 0.0) -> list[DependencyStatus]:
        """Return failing dependencies, in ``--depends-on`` order.

        If a dependency has not been checked even once yet, wait up to ``wait_first``
        seconds for its first result so a freshly started agent does not claim
        ``ok`` before it knows.
        """
        if wait_first > 0:
            deadline = time.monotonic() + wait_first
            for event in self._first_round.values():
                event.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return [self._status[url] for url in self.urls if not self._status[url].ok]


class Agent:
    """State shared by the HTTP handler, the heartbeat thread and ``main``."""

    def __init__(
        self,
        name: str,
        port: int,
        stop: threading.Event,
        dependencies: DependencyChecker,
        *,
        heartbeat_file: Path | None = None,
        heartbeat_interval: float = 0.5,
        state_file: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.stop = stop
        self.dependencies = dependencies
        self.heartbeat_file = heartbeat_file
        self.heartbeat_interval = heartbeat_interval
        self.state_file = state_file
        self.counter = 0

    def health(self) -> tuple[int, dict[str, Any]]:
        """Return (HTTP status, JSON body) for /health."""
        body: dict[str, Any] = {"status": "ok", "name": self.name, "pid": os.getpid()}
        failed = self.dependencies.failed(wait_first=DEP_CHECK_TIMEOUT + 0.05)
        if not failed:
            return 200, body
        body["status"] = "degraded"
        body["failed_dependency"] = failed[0].url
        body["failed_dependencies"] = [{"url": dep.url, "error": dep.error} for dep in failed]
        body["error"] = f"dependency {failed[0].url} unhealthy: {failed[0].error}"
        return 503, body

    # -- heartbeat / state -------------------------------------------------

    def load_state(self) -> None:
        if self.state_file is None:
            return
        try:
            text = self.state_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return
        except OSError as exc:
            _log(self.name, f"cannot read state file {self.state_file}: {exc}; starting from 0")
            return
        try:
            self.counter = int(text) if text else 0
        except ValueError:
            _log(self.name, f"state file {self.state_file} is not an integer; starting from 0")
            self.counter = 0

    def _write_state(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                handle.write(f"{self.counter}\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.state_file)
        except OSError as exc:
            _log(self.name, f"cannot write state file {self.state_file}: {exc}")
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _touch_heartbeat(self) -> None:
        if self.heartbeat_file is None:
            return
        try:
            with self.heartbeat_file.open("a", encoding="utf-8"):
                pass
            os.utime(self.heartbeat_file, None)
        except OSError as exc:
            _log(self.name, f"cannot touch heartbeat file {self.heartbeat_file}: {exc}")

    def beat(self) -> None:
        """One heartbeat: bump and persist the counter, then touch the heartbeat file."""
        if self.state_file is not None:
            self.counter += 1
            self._write_state()
        self._touch_heartbeat()

    def heartbeat_loop(self) -> None:
        while not self.stop.is_set():
            self.beat()
            if self.stop.wait(self.heartbeat_interval):
                return


class AgentServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the :class:`Agent` for its handlers."""

    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        super().__init__((BIND_HOST, agent.port), AgentHandler)


class AgentHandler(BaseHTTPRequestHandler):
    server_version = "fakeagent/1.0"
    protocol_version = "HTTP/1.0"
    health_paths: ClassVar[frozenset[str]] = frozenset({"/", "/health"})

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no per-request lines on stderr."""

    def _agent(self) -> Agent:
        server = self.server
        assert isinstance(server, AgentServer)
        return server.agent

    def _respond(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path in self.health_paths:
            status, body = self._agent().health()
        else:
            status, body = 404, {"status": "not found", "path": path}
        payload = json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text}")
    return value


def dependency_url(text: str) -> str:
    try:
        parse_http_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m healer.demo.fakeagent",
        description="Fake agent/service supervised by healer's demo, tests and benchmarks.",
    )
    parser.add_argument("--name", default="fakeagent", help="name used in logs and /health")
    parser.add_argument(
        "--port", type=port_number, required=True, help="TCP port to serve on (127.0.0.1 only)"
    )
    parser.add_argument(
        "--depends-on",
        action="append",
        type=dependency_url,
        default=[],
        metavar="URL",
        help="health URL of a dependency (repeatable); /health is 503 while any of them fails",
    )
    parser.add_argument("--heartbeat-file", type=Path, default=None, help="file to touch periodically")
    parser.add_argument(
        "--heartbeat-interval",
        type=positive_float,
        default=0.5,
        metavar="SECONDS",
        help="heartbeat / state-write period (default 0.5)",
    )
    parser.add_argument(
        "--crash-on-start",
        action="store_true",
        help=f"exit with status {CRASH_EXIT_CODE} about {CRASH_DELAY} s after start",
    )
    parser.add_argument(
        "--startup-delay",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before binding the port (default 0)",
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help="integer counter read at start and incremented (atomically rewritten) each heartbeat",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name: str = args.name
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.crash_on_start:
        if not stop.wait(CRASH_DELAY):
            _log(name, f"--crash-on-start: exiting with status {CRASH_EXIT_CODE}")
            return CRASH_EXIT_CODE
        return 0

    dependencies = DependencyChecker(urls=list(args.depends_on), stop=stop)
    dependencies.start()

    agent = Agent(
        name=name,
        port=args.port,
        stop=stop,
        dependencies=dependencies,
        heartbeat_file=args.heartbeat_file,
        heartbeat_interval=args.heartbeat_interval,
        state_file=args.state_file,
    )
    agent.load_state()

    if args.startup_delay > 0 and stop.wait(args.startup_delay):
        return 0

    try:
        server = AgentServer(agent)
    except OSError as exc:
        _log(name, f"cannot bind {BIND_HOST}:{args.port}: {exc}")
        stop.set()
        return BIND_FAILED_EXIT_CODE
    agent.port = int(server.server_address[1])

    serve_thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": SERVE_POLL_INTERVAL},
        name="http",
        daemon=True,
    )
    serve_thread.start()

    heartbeat_thread: threading.Thread | None = None
    if agent.heartbeat_file is not None or agent.state_file is not None:
        heartbeat_thread = threading.Thread(target=agent.heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat_thread.start()

    with contextlib.suppress(OSError, ValueError):
        print(f"fakeagent {name} pid={os.getpid()} listening on {BIND_HOST}:{agent.port}", flush=True)

    try:
        # Short timed waits keep the main thread responsive to signals.
        while not stop.wait(0.1):
            pass
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        serve_thread.join(timeout=0.5)
        if heartbeat_thread is not None:
            heartbeat_thread.join(timeout=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
