"""An external ledger that counts every effect healer's actuators have on the world.

One JSON-lines file, appended under an exclusive flock and fsynced, written by two kinds of
real processes:

- ``python tests/ledger.py serve --file F --port P``: an HTTP server (the ``http`` actuator's
  target). ``POST /apply/NAME`` and ``POST /undo/NAME`` record an effect once per
  ``Idempotency-Key`` (a repeat is answered 200 and recorded as a request only);
  ``GET /applied/NAME?key=K`` answers 200 if that key's apply happened, else 404;
  ``POST /control`` sets failure injection (``fail_apply`` / ``fail_undo``: fail the next N
  calls with 503, or all while ``true``).
- ``python tests/ledger.py apply|undo|check|fail --file F --name N --key K``: one-shot commands
  (the ``exec`` actuator's target). ``apply``/``undo`` always record (they are NOT idempotent);
  ``check`` exits 0 if an apply with that key exists, 1 if not; ``fail`` exits 3.

Every line is ``{"op", "name", "key", "via", "pid", "t"}``; ``op`` is ``apply``, ``undo`` or
``request``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve()


def append(path: Path, entry: dict[str, Any]) -> None:
    line = json.dumps({**entry, "pid": os.getpid(), "t": time.time()}) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        return [json.loads(line) for line in f if line.strip()]


def has(path: Path, op: str, name: str, key: str) -> bool:
    return any(e["op"] == op and e["name"] == name and e["key"] == key for e in read(path))


def serve(path: Path, port: int) -> None:
    control: dict[str, Any] = {"fail_apply": 0, "fail_undo": 0}

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, doc: Any) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _failing(self, what: str) -> bool:
            v = control[what]
            if v is True:
                return True
            if isinstance(v, int) and v > 0:
                control[what] = v - 1
                return True
            return False

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/health":
                return self._reply(200, {"ok": True})
            if parts.path.startswith("/applied/"):
                name = parts.path.removeprefix("/applied/")
                key = parse_qs(parts.query).get("key", [""])[0]
                return self._reply(200 if has(path, "apply", name, key) else 404, {})
            return self._reply(404, {})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            if parts.path == "/control":
                control.update(json.loads(raw or b"{}"))
                return self._reply(200, control)
            op, _, name = parts.path.strip("/").partition("/")
            key = self.headers.get("Idempotency-Key") or ""
            if op not in ("apply", "undo") or not name:
                return self._reply(404, {})
            append(path, {"op": "request", "name": name, "key": key, "via": f"http-{op}"})
            if self._failing(f"fail_{op}"):
                return self._reply(503, {"error": "injected failure"})
            if key and has(path, op, name, key):
                return self._reply(200, {"duplicate": True})
            append(path, {"op": op, "name": name, "key": key, "via": "http"})
            return self._reply(201, {"recorded": True})

        def log_message(self, *args: Any) -> None:
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("op", choices=["serve", "apply", "undo", "check", "fail"])
    ap.add_argument("--file", type=Path, required=True)
    ap.add_argument("--port", type=int)
    ap.add_argument("--name", default="x")
    ap.add_argument("--key", default="")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--op", dest="check_op", default="apply", help="check: which effect to look for")
    a = ap.parse_args()
    if a.op == "serve":
        serve(a.file, a.port)
        return 0
    if a.sleep:
        time.sleep(a.sleep)
    if a.op == "check":
        return 0 if has(a.file, a.check_op, a.name, a.key) else 1
    if a.op == "fail":
        print(f"refusing {a.name}", file=sys.stderr)
        return 3
    env_key = os.environ.get("HEALER_IDEMPOTENCY_KEY")
    append(a.file, {"op": a.op, "name": a.name, "key": a.key, "via": "exec", "env_key": env_key})
    return 0


class Ledger:
    """The test side: start the server, build actions against it, count effects."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.path = workdir / "ledger.jsonl"
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.proc: Any = None

    def start(self) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "serve", "--file", str(self.path), "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("ledger server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def control(self, **kw: Any) -> None:
        req = urllib.request.Request(f"{self.base}/control", data=json.dumps(kw).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def entries(self) -> list[dict[str, Any]]:
        return read(self.path)

    def effects(self, op: str | None = None) -> list[tuple[str, str]]:
        """(op, name) of every effect (applies and undos), in order."""
        return [
            (e["op"], e["name"]) for e in self.entries() if e["op"] != "request" and op in (None, e["op"])
        ]

    def count(self, op: str, name: str, key: str | None = None) -> int:
        return sum(
            1
            for e in self.entries()
            if e["op"] == op and e["name"] == name and (key is None or e["key"] == key)
        )

    # -- actions against this ledger, in the planner's format --------------------------------------
    def exec_action(self, op: str, name: str, **extra: Any) -> dict[str, Any]:
        argv = [sys.executable, str(HERE), op, "--file", str(self.path), "--name", name, "--key", "{key}"]
        params: dict[str, Any] = {"argv": argv}
        if op in ("apply", "undo"):
            check = [sys.executable, str(HERE), "check", "--op", op, "--file", str(self.path), "--name", name]
            params["verify"] = [*check, "--key", "{key}"]
        params.update(extra.pop("params", {}))
        return {"actuator": "exec", "action": "run", "params": params, "timeout": 10, **extra}

    def http_action(self, op: str, name: str, **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"method": "POST", "url": f"{self.base}/{op}/{name}", "idempotent": True}
        params.update(extra.pop("params", {}))
        return {"actuator": "http", "action": "request", "params": params, "timeout": 10, **extra}


if __name__ == "__main__":
    sys.exit(main())
