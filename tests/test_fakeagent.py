"""Tests for healer.demo.fakeagent: real processes, real sockets, no fixed long sleeps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Never route 127.0.0.1 requests through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_url(port: int, path: str = "/health") -> str:
    return f"http://127.0.0.1:{port}{path}"


def http_get(url: str, timeout: float = 1.0) -> tuple[int, dict[str, Any]] | None:
    """(status, JSON body), or None when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), json.loads(exc.read())
    except (urllib.error.URLError, OSError):
        return None


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_status(port: int, status: int, timeout: float = 5.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        got = http_get(health_url(port))
        return got[1] if got is not None and got[0] == status else None

    body: dict[str, Any] = wait_for(check, timeout)
    return body


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"process {proc.pid} did not exit within {timeout} s")


def handles_sigterm(pid: int) -> bool:
    """True once the process has installed its own SIGTERM handler (Linux /proc)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("needs /proc")
    for line in status.read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start ``python -m healer.demo.fakeagent ARGS`` from an unrelated cwd; kill leftovers."""
    procs: list[subprocess.Popen[bytes]] = []
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def _spawn(*args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "healer.demo.fakeagent", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.communicate(timeout=5)


def test_starts_and_answers_health(spawn: Spawn) -> None:
    port = free_port()
    proc = spawn("--name", "alpha", "--port", str(port))
    body = wait_status(port, 200)
    assert body == {"status": "ok", "name": "alpha", "pid": proc.pid}

    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line == f"fakeagent alpha pid={proc.pid} listening on 127.0.0.1:{port}\n"

    assert http_get(health_url(port, "/")) == (200, body)
    missing = http_get(health_url(port, "/nope"))
    assert missing is not None
    assert missing[0] == 404

    # Bound to loopback only.
    psutil = pytest.importorskip("psutil")
    listening = [c for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == "LISTEN"]
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", port)]

    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 0
    _, err = proc.communicate(timeout=5)
    assert b"GET" not in err  # no per-request log lines


def test_dependency_down_then_back(spawn: Spawn) -> None:
    dep_port, port = free_port(), free_port()
    dep_url = health_url(dep_port)
    dep = spawn("--name", "dep", "--port", str(dep_port))
    wait_status(dep_port, 200)
    spawn("--name", "app", "--port", str(port), "--depends-on", dep_url)
    assert wait_status(port, 200)["name"] == "app"

    dep.send_signal(signal.SIGTERM)
    assert wait_exit(dep) == 0
    body = wait_status(port, 503)
    assert body["name"] == "app"
    assert body["failed_dependency"] == dep_url
    assert [d["url"] for d in body["failed_dependencies"]] == [dep_url]

    spawn("--name", "dep", "--port", str(dep_port))
    assert wait_status(port, 200) == {"status": "ok", "name": "app", "pid": body["pid"]}


def test_hung_dependency_sigstop_sigcont(spawn: Spawn) -> None:
    dep_port, other_port, port = free_port(), free_port(), free_port()
    dep = spawn("--name", "dep", "--port", str(dep_port))
    spawn("--name", "other", "--port", str(other_port))
    wait_status(dep_port, 200)
    wait_status(other_port, 200)
    spawn(
        "--name",
        "app",
        "--port",
        str(port),
        "--depends-on",
        health_url(other_port),
        "--depends-on",
        health_url(dep_port),
    )
    wait_status(port, 200)

    dep.send_signal(signal.SIGSTOP)  # accepts connections (kernel backlog) but never answers
    body = wait_status(port, 503)
    assert body["failed_dependency"] == health_url(dep_port)
    # The agent's own /health stays fast (cached result) although each dependency check
    # takes the full 0.3 s timeout. Best of a few tries, to tolerate a loaded machine.
    durations = []
    for _ in range(3):
        started = time.monotonic()
        assert http_get(health_url(port)) is not None
        durations.append(time.monotonic() - started)
    assert min(durations) < 0.25

    dep.send_signal(signal.SIGCONT)
    wait_status(port, 200)


def test_sigterm_exits_zero_quickly(spawn: Spawn, tmp_path: Path) -> None:
    port = free_port()
    proc = spawn("--port", str(port), "--heartbeat-file", str(tmp_path / "hb"))
    wait_status(port, 200)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 0
    assert time.monotonic() - started < 1.0
    # The port is free again right away.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_crash_on_start_exits_3(spawn: Spawn) -> None:
    proc = spawn("--port", str(free_port()), "--crash-on-start")
    assert wait_exit(proc) == 3


def test_startup_delay_and_sigterm_while_starting(spawn: Spawn) -> None:
    port = free_port()
    proc = spawn("--port", str(port), "--startup-delay", "0.6")
    time.sleep(0.2)
    assert http_get(health_url(port), timeout=0.2) is None
    assert proc.poll() is None
    wait_status(port, 200)

    port2 = free_port()
    slow = spawn("--port", str(port2), "--startup-delay", "30")
    wait_for(lambda: handles_sigterm(slow.pid))  # past interpreter start-up, now in the delay
    slow.send_signal(signal.SIGTERM)
    assert wait_exit(slow, timeout=2) == 0


def test_heartbeat_file_mtime_advances(spawn: Spawn, tmp_path: Path) -> None:
    hb = tmp_path / "heartbeat"
    port = free_port()
    spawn("--port", str(port), "--heartbeat-file", str(hb), "--heartbeat-interval", "0.05")
    wait_for(hb.exists)
    first = hb.stat().st_mtime_ns
    wait_for(lambda: hb.stat().st_mtime_ns > first)


def test_state_file_counts_and_resumes(spawn: Spawn, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("41\n")

    def counter() -> int:
        try:
            return int(state.read_text())
        except (FileNotFoundError, ValueError):  # pragma: no cover - writes are atomic
            return -1

    args = ("--port", str(free_port()), "--state-file", str(state), "--heartbeat-interval", "0.05")
    proc = spawn(*args)
    wait_for(lambda: counter() >= 44)
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 0
    stopped_at = counter()
    assert stopped_at >= 44
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cwd") == ["state"]  # no temp files left

    spawn(*args)
    wait_for(lambda: counter() > stopped_at)


def test_rejects_non_http_dependency_url(spawn: Spawn) -> None:
    proc = spawn("--port", str(free_port()), "--depends-on", "ftp://127.0.0.1/health")
    assert wait_exit(proc) == 2
