"""A real agent process for tests: ``python -m tests.mqtt_agent --name A --port P [...]``.

It uses healer.agent the way an agent would: heartbeats with a last will, a pybreaker breaker
around a real TCP dependency (``--dep-port``: refused connections are failures), and reports.
``--hang-after S`` blocks its event loop (a stuck agent: heartbeats stop, the link stays up).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

from healer.agent import AgentLink


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--prefix", default="healer")
    ap.add_argument("--heartbeat-interval", type=float, default=0.2)
    ap.add_argument("--keepalive", type=int, default=60)
    ap.add_argument("--hang-after", type=float, default=None)
    ap.add_argument("--dep-port", type=int, default=None)
    ap.add_argument("--dep-interval", type=float, default=0.05)
    ap.add_argument("--fail-max", type=int, default=3)
    ap.add_argument("--reset-timeout", type=float, default=0.3)
    ap.add_argument("--report", action="append", default=[], help="KIND=JSONVALUE, sent once connected")
    ap.add_argument("--ready-file", type=Path, default=None)
    args = ap.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with AgentLink(
        args.name,
        args.host,
        args.port,
        prefix=args.prefix,
        heartbeat_interval=args.heartbeat_interval,
        keepalive=args.keepalive,
        reconnect_max=0.5,
    ) as link:
        await link.wait_connected(20)
        for item in args.report:
            kind, _, value = item.partition("=")
            link.report(kind, json.loads(value) if value else None, "reported by tests.mqtt_agent")
        if args.ready_file is not None:
            args.ready_file.write_text("ready\n")
        tasks = []
        if args.dep_port is not None:
            breaker = link.circuit_breaker(
                "dep-svc", fail_max=args.fail_max, reset_timeout=args.reset_timeout
            )
            tasks.append(asyncio.create_task(_use_dependency(breaker, args.dep_port, args.dep_interval)))
        if args.hang_after is not None:
            await asyncio.sleep(args.hang_after)
            time.sleep(3600)  # a stuck agent: nothing on its loop runs any more
        await stop.wait()
        for t in tasks:
            t.cancel()
    return 0


async def _use_dependency(breaker: object, port: int, interval: float) -> None:
    import pybreaker

    while True:
        with contextlib.suppress(OSError, pybreaker.CircuitBreakerError, TimeoutError), breaker.calling():  # type: ignore[attr-defined]
            async with asyncio.timeout(1):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        await asyncio.sleep(interval)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
