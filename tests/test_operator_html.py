"""The HTML postmortem opens in a real headless Chromium, renders its timeline and loads nothing.

Chromium (Debian's `chromium`) is run with a fresh profile and a NetLog: every request the page
makes is in it. A control page with an external image and stylesheet proves the check sees
requests; the report must make none.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.helpers import healer_cli
from tests.recorded_incident import record

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
)
WIDTH, HEIGHT = 1100, 1400


def chromium(page: Path, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = work / f"profile-{len(list(work.iterdir()))}"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            # nothing may reach a network from a test, whatever the page or the browser asks for
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={profile}",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def page_requests(netlog: Path) -> list[str]:
    """URLs the page itself asked for (the browser's own background requests are not the page's)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return sorted(
        {
            e["params"]["url"]
            for e in log["events"]
            if e["type"] == start and "file://" in str(e["params"].get("network_isolation_key", ""))
        }
    )


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_html_postmortem_renders_offline_in_chromium(tmp_path: Path) -> None:
    base = tmp_path / "fleet"
    base.mkdir()
    asyncio.run(record(base))
    report = tmp_path / "incident-1.html"
    out = healer_cli(
        "postmortem", "1", "-c", str(base / "healer.yaml"), "--format", "html", "-o", str(report)
    )
    assert out.returncode == 0, out.stderr
    html = report.read_text()
    assert not re.search(r"""(src|href)\s*=|url\(|@import|<script|<link|<img|<iframe""", html, re.I)
    assert re.findall(r"https?://[^\s\"'<]+", html) == ["http://www.w3.org/2000/svg"], (
        "only the SVG namespace"
    )

    work = tmp_path / "chromium"
    work.mkdir()
    shot = tmp_path / "shot.png"
    ran = chromium(report, work, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert png_size(shot) == (WIDTH, HEIGHT)
    # a blank page compresses to a few kB; the rendered report with its chart is far larger
    assert shot.stat().st_size > 60_000, shot.stat().st_size

    netlog = tmp_path / "report.netlog.json"
    dom = chromium(report, work, "--dump-dom", f"--log-net-log={netlog}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert page_requests(netlog) == [], "the report must not load anything"
    rendered = dom.stdout
    assert "<svg" in rendered and 'aria-label="incident timeline"' in rendered
    phases = re.findall(r'class="phase phase-(\w+)"', rendered)
    # the second attempt waited for its cooldown (incident.deferred) until a tick planned it
    assert phases[:8] == [
        "planned",
        "acting",
        "verifying",
        "deferred",
        "planned",
        "acting",
        "verifying",
        "resolved",
    ]
    assert {"down", "starting", "healthy"} <= set(phases[8:]), "agent-a's health row"
    assert len(re.findall(r'<line class="event"', rendered)) == 17, "one marker per timeline event"

    # the check itself sees requests: a control page that loads two external resources
    control = tmp_path / "control.html"
    control.write_text(
        '<!doctype html><img src="http://127.0.0.1:9/x.png"><link rel="stylesheet" href="https://cdn.invalid/x.css">'
    )
    control_log = tmp_path / "control.netlog.json"
    assert chromium(control, work, "--dump-dom", f"--log-net-log={control_log}").returncode == 0
    assert page_requests(control_log) == ["http://127.0.0.1:9/x.png", "https://cdn.invalid/x.css"]
