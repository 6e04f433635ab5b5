"""``healer demo``: a real local fleet, two real faults, and healer fixing them on screen."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from healer.daemon import Daemon
from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import FleetState
from healer.render import STYLES, describe, level_of, timestamp

AGENTS = ("planner", "researcher", "writer")
SERVICE = "vector-db"

DEMO_POLICY = """\
# yaml-language-server: $schema=../docs/policy.schema.json
# The demo's policy: restart crashed or hung components, at most 3 times, then escalate.
version: 1
policies:
  - name: restart-then-escalate
    description: Restart a crashed or hung component; a human takes over after 3 failed restarts.
    match:
      components: ["*"]
      failures: [crash, hang]
    steps:
      - strategy: restart
        max_attempts: 3
        cooldown: 1s
        verify_timeout: 15s
      - strategy: escalate
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def demo_config(state_dir: Path) -> str:
    ports = {name: free_port() for name in (SERVICE, *AGENTS)}
    py = sys.executable
    lines = [
        "# Written by `healer demo`: a vector database and three agents that use it.",
        f"state_dir: {state_dir}",
        f"policies_dir: {state_dir / 'policies'}",
        "shutdown_timeout: 5s",
        "components:",
    ]
    for name, port in ports.items():
        argv = [py, "-m", "healer.demo.fakeagent", "--name", name, "--port", str(port)]
        deps = []
        if name != SERVICE:
            argv += ["--depends-on", f"http://127.0.0.1:{ports[SERVICE]}/health"]
            deps = [SERVICE]
        lines += [
            f"  {name}:",
            "    command:",
            f"      argv: [{', '.join(_q(a) for a in argv)}]",
            "      stop_timeout: 2s",
            f"    depends_on: [{', '.join(deps)}]",
            "    rto: 10s",
            "    probes:",
            "      - type: http",
            f"        url: http://127.0.0.1:{port}/health",
            "        interval: 0.5s",
            "        timeout: 0.4s",
            "        failure_threshold: 2",
        ]
    return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Printer:
    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.console = Console(highlight=False)

    def say(self, text: str, style: str = "bold cyan") -> None:
        if self.tty:
            self.console.print(f"[{style}]» {escape(text)}[/]")
        else:
            print(f"» {text}", flush=True)

    def event(self, rec: RecordedEvent) -> None:
        line = f"{timestamp(rec.ts)} #{rec.position:<4} {describe(rec)}"
        if self.tty:
            self.console.print(f"[{STYLES[level_of(rec)]}]{escape(line)}[/]")
        else:
            print(line, flush=True)


async def _until(pred: Any, deadline: float, step: float = 0.05) -> bool:
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return bool(pred())


async def run_demo(state_dir: Path | None, timeout: float = 45.0) -> int:
    from healer.cli import load_checked_config

    out = _Printer()
    if state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix="healer-demo-"))
    state_dir = state_dir.resolve()
    (state_dir / "policies").mkdir(parents=True, exist_ok=True)
    (state_dir / "policies" / "demo.yaml").write_text(DEMO_POLICY)
    cfg_path = state_dir / "healer.yaml"
    cfg_path.write_text(demo_config(state_dir))
    config = load_checked_config(cfg_path)

    out.say(f"healer demo: state directory {state_dir}")
    out.say(f"starting a fleet: {SERVICE} and agents {', '.join(AGENTS)} (real processes)")
    daemon = Daemon(config, on_event=out.event)
    deadline = time.monotonic() + timeout
    resolved: list[int] = []
    ok = False
    async with daemon:  # every stage running; leaving the block stops it cleanly
        state = daemon.state
        assert state is not None

        def all_healthy() -> bool:
            return all(state.component(n).health == "healthy" for n in (SERVICE, *AGENTS))

        if not await _until(all_healthy, deadline):
            out.say("the fleet did not become healthy in time", "bold red")
            return 1
        out.say("fleet healthy. Now: kill -9 the planner, and freeze the researcher with SIGSTOP (a hang).")
        targets = {"planner": signal.SIGKILL, "researcher": signal.SIGSTOP}
        first_incident = state.next_incident
        for name, sig in targets.items():
            pid = state.component(name).pid
            assert pid is not None
            os.kill(pid, sig)
            out.say(f"sent {sig.name} to {name} (pid {pid})", "bold magenta")

        def healed() -> bool:
            mine = [i for i in state.incidents.values() if i.id >= first_incident and i.component in targets]
            done = {i.component for i in mine if i.status == "resolved"}
            return done == set(targets) and all_healthy()

        ok = await _until(healed, deadline)
        resolved = [i.id for i in state.incidents.values() if i.status == "resolved"]
        if not ok:
            out.say("healer did not heal both faults in time", "bold red")
    assert daemon.state is not None
    _summary(out, daemon.state)
    out.say(f"state directory: {state_dir}")
    out.say(f"see what happened: healer incidents --state-dir {state_dir} --json")
    out.say(f"                   healer log --state-dir {state_dir}")
    return 0 if ok and len(resolved) >= 2 else 1


def _summary(out: _Printer, state: FleetState) -> None:
    table = Table(title="demo summary")
    for col in ("incident", "component", "failure", "status", "actions", "RTO"):
        table.add_column(col)
    for inc in sorted(state.incidents.values(), key=lambda i: i.id):
        acts = ", ".join(f"{a.action}:{a.outcome}" for a in inc.actions) or "-"
        rto = f"{inc.rto_achieved:.2f}s" if inc.rto_achieved is not None else "-"
        table.add_row(str(inc.id), inc.component, str(inc.failure_class), inc.status, acts, rto)
    if out.tty:
        out.console.print(table)
    else:
        Console(width=120, force_terminal=False, no_color=True).print(table)
