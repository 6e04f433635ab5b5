"""Probe-load benchmark: 1,000 probes at 1 s against local endpoints, plus last-will latency.

Run: python bench/probe_load.py [--duration 60] [--probes 1000] [--wills-per-s 2] [--floor 20]
                               [--out FILE] [--keep]

One real daemon (``healer run``) watches 1,000 components, one probe each, every second:
40% http (an asyncio HTTP server, keep-alive), 30% tcp (10 listening sockets), 20%
heartbeat_file (files touched twice a second), 10% mqtt_heartbeat (a real Mosquitto; 80%
of those agents heart-beat every second, 20% are "will" agents). The endpoints run in a
separate process, so the CPU measured is healer's alone.

During the measured window the benchmark repeatedly drops a will agent's connection without
a DISCONNECT (what the kernel does for a SIGKILLed process: the socket just closes), so the
broker publishes its last will; a separate subscriber stamps the will's arrival, and the
latency is measured to (a) the ``component.failed`` event's timestamp (healer observed it)
and (b) the moment the row is visible in the SQLite log (durable; polled every 2 ms).

Before and after healer runs, the floor (``floor()``: the same checks' system calls and MQTT
traffic at the same cadence, nothing else) is measured for ``--floor`` seconds with the same
will traffic: healer / floor and healer's own CPU per check compare across machines, where a
share of one core does not.

Reported: healer's CPU (% of one core) over the window, the floor and the ratio, healer's peak
RSS (VmHWM, whole life) and the highest RSS sampled during the window, will-latency
p50/p99/max, and unexpected failures (any component.failed not caused by a will: a probe that
could not keep up).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from healer.agent import protocol

PY = sys.executable
TCP_PORTS = 10


# -- endpoints (run in a child process: python bench/probe_load.py --serve SPEC) -----------------------
async def serve(spec: dict[str, Any]) -> None:
    import paho.mqtt.client as mqtt

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    await asyncio.start_server(http, "127.0.0.1", spec["http_port"], backlog=1024)
    for port in spec["tcp_ports"]:
        await asyncio.start_server(tcp, "127.0.0.1", port, backlog=1024)
    files = [Path(f) for f in spec["files"]]
    beat = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-heartbeats")
    beat.connect("127.0.0.1", spec["broker_port"])
    beat.loop_start()
    topics = [protocol.agent_topic("healer", a, "heartbeat") for a in spec["agents"]]
    print("ready", flush=True)
    seq = 0
    while True:
        seq += 1
        now = time.time()
        for f in files:
            os.utime(f, (now, now))
        for t in topics if seq % 2 else ():  # heartbeats once a second, files twice
            beat.publish(t, protocol.heartbeat_payload(seq, now))
        await asyncio.sleep(0.5)


# -- the floor: the same checks, nothing else (python bench/probe_load.py --floor SPEC) -----------------
async def floor(spec: dict[str, Any]) -> None:
    """The cheapest Python could do the same checks: what healer's CPU is compared with.

    The same targets, each checked once an interval, spread over the same 20 ticks an interval
    (the answers read one tick later), and the same system calls as healer's probes: a
    non-blocking connect asked twice then closed (tcp), a GET on a kept-alive connection and
    a ``recv`` (http), a ``stat`` (heartbeat_file), and an aiomqtt subscription that receives
    the same heartbeats and wills (mqtt_heartbeat). No hysteresis, timeouts, result objects,
    records, event log or control loop: the difference is healer's own work, and the ratio is
    less machine-dependent than a share of a core (this VM class varies by 2x between hosts).
    """
    import aiomqtt

    loop = asyncio.get_running_loop()
    ticks = 20
    interval = spec["interval"]
    stream_nb = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
    slots: list[list[tuple[str, Any]]] = [[] for _ in range(ticks)]
    for i in range(spec["n_http"]):
        conn = socket.create_connection(("127.0.0.1", spec["http_port"]))
        conn.setblocking(False)
        request = f"GET /h/{i} HTTP/1.1\r\nHost: 127.0.0.1:{spec['http_port']}\r\nUser-Agent: floor\r\n\r\n"
        slots[i % ticks].append(("http", (conn, request.encode())))
    for i in range(spec["n_tcp"]):
        slots[(i + 7) % ticks].append(("tcp", ("127.0.0.1", spec["tcp_ports"][i % TCP_PORTS])))
    for i, f in enumerate(spec["files"]):
        slots[(i + 13) % ticks].append(("file", f))
    pending: list[tuple[str, Any]] = []
    passed = [0]
    start = loop.time()

    def tick(k: int) -> None:
        nonlocal pending
        answers, pending = pending, []
        for kind, item in answers:
            if kind == "tcp":
                sock, addr = item
                err = sock.connect_ex(addr)
                if err in (errno.EINPROGRESS, errno.EALREADY):
                    pending.append((kind, item))
                    continue
                sock.close()
                passed[0] += err in (0, errno.EISCONN)
            else:
                try:
                    data = item[0].recv(65_536)
                except BlockingIOError:
                    pending.append((kind, item))
                    continue
                passed[0] += data.startswith(b"HTTP/1.1 200")
        now = time.time()
        for kind, item in slots[k % ticks]:
            if kind == "http":
                item[0].send(item[1])
                pending.append((kind, item))
            elif kind == "tcp":
                sock = socket.socket(socket.AF_INET, stream_nb)
                if sock.connect_ex(item) in (errno.EINPROGRESS, errno.EALREADY):
                    pending.append((kind, (sock, item)))
                else:
                    sock.close()
            else:
                passed[0] += now - os.stat(item).st_mtime < 5
        loop.call_at(start + (k + 1) * interval / ticks, tick, k + 1)

    seen: dict[str, float] = {}
    loop.call_at(start, tick, 0)
    if not spec["mqtt"]:
        print("ready", flush=True)
        await asyncio.Event().wait()
    async with aiomqtt.Client(
        "127.0.0.1", spec["broker_port"], identifier="bench-floor", keepalive=5
    ) as client:
        await client.subscribe(protocol.agents_filter("healer"), qos=1)
        print("ready", flush=True)
        async for msg in client.messages:
            seen[msg.topic.value] = time.time()


# -- baseline: a bare subscriber process on healer's MQTT stack (python bench/probe_load.py --watch P) --
async def watch(port: int) -> None:
    """Print ``agent wall-time`` for every last will, as an otherwise idle aiomqtt client sees it.

    The same client library and event loop as healer, doing nothing else: the difference between
    its arrival times and healer's observations is what healer's own work adds.
    """
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-will-baseline") as client:
        await client.subscribe("healer/agents/+/status", qos=1)
        print("ready", flush=True)
        async for msg in client.messages:
            now = time.time()
            payload = msg.payload if isinstance(msg.payload, bytes) else b""
            if b'"last_will"' in payload and not msg.retain:
                print(str(msg.topic).split("/")[2], now, flush=True)


# -- will agents: raw MQTT connections whose socket can be dropped without a DISCONNECT --------------
def _s(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class WillAgent:
    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.sock: socket.socket | None = None
        self.topic = protocol.agent_topic("healer", name, "status").encode()

    def connect(self) -> None:
        will = protocol.status_payload("offline", "last_will")
        flags = 0x02 | 0x04 | (1 << 3) | 0x20  # clean session, will, will QoS 1, will retained
        body = b"\x00\x04MQTT\x04" + bytes([flags]) + (0).to_bytes(2, "big")  # keepalive off
        body += _s(f"bench-{self.name}".encode()) + _s(self.topic) + _s(will)
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(b"\x10" + _varint(len(body)) + body)
        ack = sock.recv(4)
        if ack[:1] != b"\x20" or ack[3:4] != b"\x00":
            raise RuntimeError(f"CONNACK refused: {ack!r}")
        online = _s(self.topic) + protocol.status_payload("online")
        sock.sendall(b"\x31" + _varint(len(online)) + online)  # PUBLISH, QoS 0, retained
        self.sock = sock

    def drop(self) -> None:
        """Close without DISCONNECT, as the kernel does for a killed process."""
        assert self.sock is not None
        self.sock.close()
        self.sock = None


# -- measurement -------------------------------------------------------------------------------------
def query(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return []  # not created yet
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process, all threads."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user), float(t.system)


def run_queue_wait(pid: int) -> float:
    """Seconds the process spent runnable but waiting for a CPU (/proc/PID/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def floor_window(
    spec: dict[str, Any], seconds: float, wills: list[WillAgent], rate: float
) -> tuple[float, float]:
    """Run the floor (healer stopped) with the same will traffic; its (user, system) % of a core."""
    proc = subprocess.Popen([PY, __file__, "--floor-spec", json.dumps(spec)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(2 * spec["interval"])  # connections made, first checks past
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        drive_wills(wills, rate, wall0 + seconds)
        cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
    finally:
        proc.kill()
        proc.wait()
    return 100 * (cpu1[0] - cpu0[0]) / (wall1 - wall0), 100 * (cpu1[1] - cpu0[1]) / (wall1 - wall0)


def drive_wills(wills: list[WillAgent], rate: float, until: float) -> None:
    """Drop a will agent's connection ``rate`` times a second (each back 0.5 s later) until then."""
    back: list[tuple[float, WillAgent]] = []
    next_will, turn = time.monotonic(), 0
    while (now := time.monotonic()) < until:
        for due, w in list(back):
            if now >= due:
                w.connect()
                back.remove((due, w))
        if wills and now >= next_will:
            next_will += 1 / rate
            w = wills[turn % len(wills)]
            turn += 1
            if w.sock is not None:
                w.drop()
                back.append((now + 0.5, w))
        time.sleep(0.01)
    for _, w in back:
        w.connect()


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=60.0, help="measured window, seconds")
    ap.add_argument("--wills-per-s", type=float, default=2.0, help="last wills triggered per second")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    ap.add_argument("--samples", type=Path, default=None, help="write each last-will sample (JSON lines)")
    ap.add_argument("--mix", default="http=0.4,tcp=0.3,file=0.2,mqtt=0.1", help="share of each probe kind")
    ap.add_argument("--profile", type=Path, default=None, help="run the daemon under cProfile, stats here")
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs, event log)")
    ap.add_argument(
        "--floor",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="measure the floor (the same checks, nothing else) this long before and after healer; 0: skip",
    )
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--watch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--floor-spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(json.loads(args.serve)))
        return 0
    if args.watch:
        asyncio.run(watch(args.watch))
        return 0
    if args.floor_spec:
        asyncio.run(floor(json.loads(args.floor_spec)))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="healer-probe-load-"))
    try:
        return _measure(args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp} (the daemon's config, log and event log)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)  # a few MB a run, left in /tmp before


def _measure(args: argparse.Namespace, tmp: Path) -> int:
    from tests.broker import Broker
    from tests.helpers import free_port

    print(f"working in {tmp}", file=sys.stderr)
    (tmp / "broker").mkdir()
    broker = Broker(tmp / "broker", extra_conf="max_queued_messages 0\n")
    broker.start()
    n = args.probes
    mix = {k: float(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    unknown = set(mix) - {"http", "tcp", "file", "mqtt"}
    if unknown:
        raise SystemExit(f"--mix: unknown probe kinds {sorted(unknown)}")
    total = sum(mix.values())
    n_http, n_tcp, n_file = (round(n * mix.get(k, 0) / total) for k in ("http", "tcp", "file"))
    n_mqtt = n - n_http - n_tcp - n_file
    n_will = max(1, n_mqtt // 5) if n_mqtt else 0
    n_beat = n_mqtt - n_will
    http_port = free_port()
    tcp_ports = [free_port() for _ in range(TCP_PORTS)]
    files = [tmp / "beats" / f"b{i}" for i in range(n_file)]
    (tmp / "beats").mkdir()
    for f in files:
        f.write_text("x")
    beat_agents = [f"hb-{i}" for i in range(n_beat)]
    will_agents = [f"will-{i}" for i in range(n_will)]
    iv = f"{args.interval}s"
    common = "".join(
        f"        {k}: {v}\n"
        for k, v in {"interval": iv, "timeout": "0.5s", "jitter": "0.05s", "failure_threshold": 2}.items()
    )
    comps: list[str] = []
    for i in range(n_http):
        url = f"http://127.0.0.1:{http_port}/h/{i}"
        comps.append(f"  http-{i}:\n    probes:\n      - type: http\n        url: {url}\n{common}")
    for i in range(n_tcp):
        port = tcp_ports[i % TCP_PORTS]
        tcp_spec = f"      - type: tcp\n        host: 127.0.0.1\n        port: {port}\n"
        comps.append(f"  tcp-{i}:\n    probes:\n{tcp_spec}{common}")
    for i, f in enumerate(files):
        spec_ = f"      - type: heartbeat_file\n        path: {f}\n        max_age: 5s\n"
        comps.append(f"  file-{i}:\n    probes:\n{spec_}{common}")
    for a in beat_agents:
        comps.append(f"  {a}:\n    probes:\n      - type: mqtt_heartbeat\n        max_age: 5s\n{common}")
    for a in will_agents:
        comps.append(f"  {a}:\n    probes:\n      - type: mqtt_heartbeat\n        max_age: 1h\n{common}")
    (tmp / "policies").mkdir()
    (tmp / "policies" / "none.yaml").write_text("version: 1\npolicies: []\n")
    cfg = tmp / "healer.yaml"
    cfg.write_text(
        f"state_dir: {tmp / 'state'}\npolicies_dir: {tmp / 'policies'}\nlog_level: warning\n"
        f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n  client_id: healer-bench\n  keepalive: 5\n"
        "components:\n" + "".join(comps)
    )
    db = tmp / "state" / "events.db"
    spec = {
        "http_port": http_port,
        "tcp_ports": tcp_ports,
        "files": [str(f) for f in files],
        "agents": beat_agents,
        "broker_port": broker.port,
    }
    targets = subprocess.Popen([PY, __file__, "--serve", json.dumps(spec)], stdout=subprocess.PIPE)
    assert targets.stdout is not None and targets.stdout.readline().strip() == b"ready"
    wills = [WillAgent(a, broker.port) for a in will_agents]
    for w in wills:
        w.connect()

    floor_spec = dict(spec, n_http=n_http, n_tcp=n_tcp, mqtt=n_mqtt > 0, interval=args.interval)
    floors: list[tuple[float, float]] = []
    if args.floor > 0:
        floors.append(floor_window(floor_spec, args.floor, wills, args.wills_per_s))

    import paho.mqtt.client as mqtt

    arrivals: dict[str, list[float]] = {}
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if b'"last_will"' in msg.payload and not msg.retain:
            with lock:
                arrivals.setdefault(msg.topic.split("/")[2], []).append(time.time())

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-will-watch")
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("healer/agents/+/status", qos=1)
    sub.loop_start()

    baseline: dict[str, list[float]] = {}
    watcher = subprocess.Popen([PY, __file__, "--watch", str(broker.port)], stdout=subprocess.PIPE, text=True)
    assert watcher.stdout is not None and watcher.stdout.readline().strip() == "ready"

    def read_baseline() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            agent, _, at = line.strip().partition(" ")
            with lock:
                baseline.setdefault(agent, []).append(float(at))

    threading.Thread(target=read_baseline, daemon=True).start()

    log = (tmp / "daemon.log").open("wb")
    argv = [PY, "-m", "healer", "run", "-c", str(cfg)]
    if args.profile:
        code = (
            "import cProfile, sys\nfrom healer.cli import main\np = cProfile.Profile()\np.enable()\n"
            f"try:\n    main(['run', '-c', {str(cfg)!r}])\n"
            f"finally:\n    p.disable()\n    p.dump_stats({str(args.profile)!r})\n"
        )
        argv = [PY, "-c", code]
    daemon = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    cpu1: tuple[float, float] | None = None
    try:
        deadline = time.monotonic() + 120
        while True:  # warm-up: every component healthy once
            healthy = query(
                db, "SELECT COUNT(DISTINCT component) FROM events WHERE type='component.recovered'"
            )
            if healthy and healthy[0][0] >= n:
                break
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"warm-up failed: {healthy} healthy of {n}; see {tmp / 'daemon.log'}")
            time.sleep(0.5)
        warmup = time.monotonic() - started
        time.sleep(2 * args.interval)  # let start-up work settle before measuring
        start_pos = query(db, "SELECT MAX(position) FROM events")[0][0]
        cpu0, wall0, wait0 = cpu_seconds(daemon.pid), time.monotonic(), run_queue_wait(daemon.pid)
        rss_max = 0
        observed: list[float] = []
        durable: list[float] = []
        bare: list[float] = []  # will -> the idle baseline subscriber
        added: list[float] = []  # healer's observation - the baseline's arrival, per will
        samples: list[dict[str, Any]] = []
        next_will = wall0
        turn = 0
        pending_reconnect: list[tuple[float, WillAgent]] = []
        while time.monotonic() - wall0 < args.duration:
            now = time.monotonic()
            rss_max = max(rss_max, status_kb(daemon.pid, "VmRSS"))
            for due, w in list(pending_reconnect):
                if now >= due:
                    w.connect()
                    pending_reconnect.remove((due, w))
            if wills and now >= next_will:
                next_will += 1 / args.wills_per_s
                w = wills[turn % len(wills)]
                turn += 1
                if w.sock is None:
                    continue
                before = query(db, "SELECT MAX(position) FROM events")[0][0]
                with lock:
                    seen = len(arrivals.get(w.name, []))
                    seen_bare = len(baseline.get(w.name, []))
                w.drop()
                row: list[tuple[Any, ...]] = []
                limit = time.monotonic() + 2
                while not row and time.monotonic() < limit:
                    row = query(
                        db,
                        "SELECT ts FROM events WHERE position > ? AND type='component.failed' "
                        "AND component=?",
                        (before, w.name),
                    )
                    if not row:
                        time.sleep(0.002)
                visible = time.time()
                limit = time.monotonic() + 2
                while time.monotonic() < limit:
                    with lock:
                        got = arrivals.get(w.name, [])[seen:]
                    if got:
                        break
                    time.sleep(0.002)
                limit = time.monotonic() + 2
                while time.monotonic() < limit:
                    with lock:
                        got_bare = baseline.get(w.name, [])[seen_bare:]
                    if got_bare:
                        break
                    time.sleep(0.002)
                if row and got and got_bare:
                    observed.append((row[0][0] - got[0]) * 1000)
                    durable.append((visible - got[0]) * 1000)
                    bare.append((got_bare[0] - got[0]) * 1000)
                    added.append((row[0][0] - got_bare[0]) * 1000)
                    samples.append(
                        {
                            "at": got[0],
                            "agent": w.name,
                            "observed_ms": observed[-1],
                            "baseline_ms": bare[-1],
                            "added_ms": added[-1],
                        }
                    )
                pending_reconnect.append((time.monotonic() + 0.5, w))
            time.sleep(0.01)
        wall1 = time.monotonic()
        cpu1, wait1 = cpu_seconds(daemon.pid), run_queue_wait(daemon.pid)
        hwm = status_kb(daemon.pid, "VmHWM")
        failed = query(
            db,
            "SELECT component, COUNT(*) FROM events WHERE position > ? AND "
            "type='component.failed' GROUP BY component",
            (start_pos,),
        )
        unexpected = {c: k for c, k in failed if not c.startswith("will-")}
    finally:
        daemon.send_signal(signal.SIGTERM)
        stop_at = time.monotonic()
        try:
            rc: int | str = daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            rc = "killed after 60 s"
        stop_s = time.monotonic() - stop_at
        if args.floor > 0 and rc == 0 and cpu1 is not None:
            floors.append(floor_window(floor_spec, args.floor, wills, args.wills_per_s))
        targets.kill()
        watcher.kill()
        sub.loop_stop()
        broker.kill()
    assert cpu1 is not None  # set, or the try above raised
    user_pct = 100 * (cpu1[0] - cpu0[0]) / (wall1 - wall0)
    sys_pct = 100 * (cpu1[1] - cpu0[1]) / (wall1 - wall0)
    cpu_pct = user_pct + sys_pct
    queued = 100 * (wait1 - wait0) / (wall1 - wall0)
    checks_per_s = n / args.interval
    load = os.getloadavg()

    def dist(xs: list[float]) -> str:
        top = max(xs, default=float("nan"))
        return f"{percentile(xs, 50):.1f} / {percentile(xs, 99):.1f} / {top:.1f} ms"

    lines = [
        f"probe load: {n} probes every {args.interval:g}s ({n_http} http, {n_tcp} tcp, "
        f"{n_file} heartbeat_file, {n_mqtt} mqtt_heartbeat), measured for {wall1 - wall0:.0f}s "
        f"after a {warmup:.1f}s warm-up",
        "",
        "| metric | result | goal |",
        "| --- | --- | --- |",
        f"| healer CPU, % of one core | {cpu_pct:.1f} % | <= 5 % |",
        f"| of which user / kernel (system) | {user_pct:.1f} % / {sys_pct:.1f} % | |",
        *floor_lines(floors, cpu_pct, checks_per_s),
        f"| healer peak RSS (VmHWM, whole run) | {hwm / 1024:.1f} MB | <= 120 MB |",
        f"| healer max RSS sampled in the window | {rss_max / 1024:.1f} MB | |",
        f"| last will -> observation (event ts), p50 / p99 / max | {dist(observed)} | p99 <= 20 ms |",
        f"| last will -> durable row seen (2 ms polling), p50 / p99 / max | {dist(durable)} | |",
        f"| baseline: last will -> an idle aiomqtt subscriber process, p50 / p99 / max | {dist(bare)} | |",
        f"| healer's share: observation - baseline arrival, p50 / p99 / max | {dist(added)} | |",
        f"| last-will samples | {len(observed)} | |",
        f"| unexpected component failures (probes that fell behind) | {sum(unexpected.values())} | 0 |",
        f"| daemon exit on SIGTERM | {rc} after {stop_s:.1f} s | 0 |",
        f"| healer runnable but waiting for a CPU (run-queue delay) | {queued:.1f} % of the window | |",
        "",
        f"machine: {os.cpu_count()} cores, load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)",
    ]
    if unexpected:
        lines.append(f"unexpected failures: {dict(sorted(unexpected.items())[:20])}")
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n")
    if args.samples is not None:
        args.samples.write_text("".join(json.dumps(x) + "\n" for x in samples))
    return 0


def floor_lines(floors: list[tuple[float, float]], healer_pct: float, checks_per_s: float) -> list[str]:
    if not floors:
        return []
    each = [u + k for u, k in floors]
    mean = sum(each) / len(each)
    mean_user = sum(u for u, _ in floors) / len(floors)
    own_us = (healer_pct - mean) / 100 * 1e6 / checks_per_s
    runs = " / ".join(f"{x:.1f}" for x in each)
    return [
        f"| floor: the same checks and MQTT traffic, nothing else ({runs} % before / after) | "
        f"{mean:.1f} % (user {mean_user:.1f} %) | |",
        f"| healer / floor | {healer_pct / mean:.2f}x | |",
        f"| healer's own work: (healer - floor) per check | {own_us:.1f} us of CPU | |",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
