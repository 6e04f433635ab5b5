"""Probes inside a running daemon: evidence (type + measured values) reaches the log, where
Analyze classifies from it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers import PY, events, running_daemon, wait_for, write_config

EATER = "import time\nblob = b'x' * (80 << 20)\ntime.sleep(120)\n"


def test_daemon_records_resource_exhaustion_and_external_process_exit_with_values(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([PY, "-c", "import time; time.sleep(120)"])
    pidfile = tmp_path / "ext.pid"
    pidfile.write_text(str(sleeper.pid))
    beat = tmp_path / "beat"
    beat.write_text("x")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    comps = f"""\
  eater:
    command:
      argv: {json.dumps([PY, "-c", EATER])}
      stop_timeout: 1s
    probes:
      - type: resources
        max_rss: 50MB
        interval: 0.2s
        failure_threshold: 1
  ext:
    probes:
      - type: process
        pidfile: {pidfile}
        min_uptime: 0s
        interval: 30s
  checks:
    probes:
      - type: heartbeat_file
        path: {beat}
        max_age: 30s
        interval: 0.2s
        failure_threshold: 1
      - type: tcp
        host: 127.0.0.1
        port: {port}
        interval: 0.2s
        failure_threshold: 1
      - type: exec
        argv: {json.dumps([PY, "-c", "import sys; sys.exit(0)"])}
        interval: 0.5s
        timeout: 5s
"""
    cfg = write_config(tmp_path, comps)
    try:
        with running_daemon(cfg) as d:
            state = d.state_dir
            failed = wait_for(
                lambda: events(state, "component.failed", "eater"), what="memory over the limit"
            )
            probe = failed[0]["data"]["probes"]["resources#1"]
            assert probe["type"] == "resources"
            assert probe["values"]["resource"] == "rss_bytes" and probe["values"]["rss_bytes"] > 50_000_000
            assert probe["values"]["exceeded"][0]["threshold"] == 50_000_000

            wait_for(lambda: events(state, "component.recovered", "ext"), what="external process found")
            sleeper.kill()
            killed_at = time.time()
            gone = wait_for(lambda: events(state, "component.failed", "ext"), interval=0.01, what="exit seen")
            # The probe's interval is 30s: only the pidfd can have reported it this soon.
            assert gone[0]["ts"] - killed_at < 1.0
            assert gone[0]["data"]["probes"]["process#0"]["values"] == {"pid": sleeper.pid, "exited": True}

            wait_for(lambda: events(state, "component.recovered", "checks"), what="checks pass")
            listener.close()
            old = time.time() - 600
            os.utime(beat, (old, old))
            bad = wait_for(lambda: events(state, "component.failed", "checks"), what="checks fail")
            probes = bad[0]["data"]["probes"]
            assert "tcp#1" in bad[0]["data"]["failing"] or "heartbeat_file#0" in bad[0]["data"]["failing"]
            assert probes["exec#2"]["status"] == "passing" and probes["exec#2"]["values"]["exit_code"] == 0
            assert d.stop() == 0
    finally:
        sleeper.kill()
        sleeper.wait(10)
        listener.close()
