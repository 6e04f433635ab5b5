"""`healer demo`: the newcomer's first command must work from a clean install, without a terminal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def test_demo_heals_a_crash_and_a_hang_and_leaves_its_record(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "healer", "demo", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    assert took < 60
    out = p.stdout
    assert "\x1b[" not in out, "no terminal: plain lines, no colour codes"
    assert f"state directory: {state}" in out
    assert "diagnosed crash" in out and "diagnosed hang" in out
    assert "demo summary" in out
    inc = subprocess.run(
        [sys.executable, "-m", "healer", "incidents", "--state-dir", str(state), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    incidents = json.loads(inc.stdout)
    resolved = [i for i in incidents if i["status"] == "resolved"]
    assert len(resolved) >= 2
    assert {(i["component"], i["failure_class"]) for i in resolved} >= {
        ("planner", "crash"),
        ("researcher", "hang"),
    }
    assert all(a["outcome"] == "succeeded" for i in resolved for a in i["actions"])
