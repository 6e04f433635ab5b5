"""Shared test helpers: real daemons, real agent processes, real SQLite reads."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PY = sys.executable

DEFAULT_POLICY = """\
version: 1
policies:
  - name: restart-then-escalate
    match:
      components: ["*"]
      failures: [crash, hang]
    steps:
      - strategy: restart
        max_attempts: 3
        cooldown: 0.2s
        backoff: 1.0
        verify_timeout: 10s
      - strategy: escalate
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(interval)


def agent_component(
    name: str,
    port: int,
    *extra: str,
    probe_interval: str = "0.3s",
    deps: list[str] | None = None,
    min_uptime: str | None = None,
) -> str:
    argv = [PY, "-m", "healer.demo.fakeagent", "--name", name, "--port", str(port), *extra]
    probes = f"""\
    probes:
      - type: http
        url: http://127.0.0.1:{port}/health
        interval: {probe_interval}
        timeout: 0.3s
        failure_threshold: 2
"""
    if min_uptime is not None:
        probes += f"""\
      - type: process
        min_uptime: {min_uptime}
"""
    return (
        f"  {name}:\n"
        f"    command:\n"
        f"      argv: {json.dumps(argv)}\n"
        f"      stop_timeout: 2s\n"
        f"    depends_on: {json.dumps(deps or [])}\n" + probes
    )


def write_config(tmp: Path, components: str, policy: str = DEFAULT_POLICY, extra: str = "") -> Path:
    (tmp / "policies").mkdir(exist_ok=True)
    (tmp / "policies" / "default.yaml").write_text(policy)
    cfg = tmp / "healer.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            state_dir: {tmp / "state"}
            policies_dir: {tmp / "policies"}
            shutdown_timeout: 5s
            """
        )
        + extra
        + "components:\n"
        + components
    )
    return cfg


class DaemonProcess:
    """``healer run`` as a real child process."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = config.parent / f"daemon-{time.monotonic_ns()}.log"
        full_env = {**os.environ, **(env or {})}
        self._logf = self.log.open("wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "healer", "run", "-c", str(config)],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    @property
    def state_dir(self) -> Path:
        return self.config.parent / "state"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        finally:
            self._logf.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._logf.close()


def events(
    state_dir: Path, type_prefix: str | None = None, component: str | None = None
) -> list[dict[str, Any]]:
    db = state_dir / "events.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute(
            "SELECT position, ts, type, component, incident, data FROM events ORDER BY position"
        )
        out = [
            {
                "position": r[0],
                "ts": r[1],
                "type": r[2],
                "component": r[3],
                "incident": r[4],
                "data": json.loads(r[5]),
            }
            for r in rows
        ]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [
        e
        for e in out
        if (type_prefix is None or e["type"].startswith(type_prefix))
        and (component is None or e["component"] == component)
    ]


def component_pid(state_dir: Path, component: str) -> int | None:
    started = [
        e
        for e in events(state_dir, "process.", component)
        if e["type"] in ("process.started", "process.adopted")
    ]
    return started[-1]["data"]["pid"] if started else None


def is_healthy(state_dir: Path, component: str) -> bool:
    health = [
        e
        for e in events(state_dir, "component.", component) + events(state_dir, "process.started", component)
    ]
    health.sort(key=lambda e: e["position"])
    return bool(health) and health[-1]["type"] == "component.recovered"


def settle(state: Path, *names: str) -> int:
    """Wait until the fleet is healthy with nothing open (a slow start under load can open an
    incident of its own); return the log position after which a test's story starts."""

    def calm() -> bool:
        opened = {e["incident"] for e in events(state, "incident.detected")}
        closed = {e["incident"] for e in events(state, "incident.resolved")}
        return all(is_healthy(state, n) for n in names) and opened <= closed

    wait_for(calm, timeout=30, what=f"{names} healthy, nothing open")
    return int(events(state)[-1]["position"])


def http_ok(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as r:
            return r.status == 200
    except OSError:
        return False


def healer_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "healer", *args], capture_output=True, text=True, timeout=timeout)


@contextmanager
def running_daemon(config: Path, env: dict[str, str] | None = None) -> Iterator[DaemonProcess]:
    """A daemon for one test; afterwards no process it (or a killed predecessor) started survives."""
    mark = f"{os.getpid()}-{time.monotonic_ns()}"
    d = DaemonProcess(config, {**(env or {}), "HEALER_TEST_MARK": mark})
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.stop()
        kill_marked(mark)


def kill_marked(mark: str) -> None:
    import psutil

    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("HEALER_TEST_MARK") == mark:
                p.kill()
        except psutil.Error:
            continue
