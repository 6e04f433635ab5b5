"""A real asyncio agent using healer.agent (AgentLink over MQTT + AgentState): the pause test.

    python tests/dr_mqtt_agent.py --name A --state-dir S --booking URL --mqtt-port P --sick-file F
        --acts-file LOG --resumed-file R [--pause-delay S] [--no-mqtt]

Fresh (no checkpoint): saves checkpoints 1..5 (labels cpI), booking orders A, B, C after 3
(compensatable effects, undone by ``POST /undo/order-X``); then creates F (an exec probe fails on
it: "unhealthy") and keeps acting every 0.05 s (``acted PID N`` lines) unless paused. A pause
request runs ``on_pause`` (``--pause-delay``: how long reaching a safe point takes), after which
the link acknowledges and the agent logs ``paused PID N`` and acts no more. ``--no-mqtt``: it
never connects (healer's pause gets no acknowledgement).

Resumed (a checkpoint to load): writes it to R, removes F, and acts on until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

from healer.agent import AgentLink
from healer.agent.state import AgentState


def post(url: str, key: str) -> None:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Idempotency-Key": key})
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def undo(base: str, name: str) -> dict[str, Any]:
    return {
        "actuator": "http",
        "action": "request",
        "params": {"method": "POST", "url": f"{base}/undo/{name}", "idempotent": True},
    }


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--booking", required=True)
    ap.add_argument("--mqtt-port", type=int, required=True)
    ap.add_argument("--sick-file", type=Path, required=True)
    ap.add_argument("--acts-file", type=Path, required=True)
    ap.add_argument("--resumed-file", type=Path, required=True)
    ap.add_argument("--pause-delay", type=float, default=0.0)
    ap.add_argument("--no-mqtt", action="store_true")
    args = ap.parse_args()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pid = os.getpid()
    st = AgentState(args.name, args.state_dir, validator=json.loads)
    n = 0

    def log(line: str) -> None:
        with open(args.acts_file, "a") as f:
            f.write(f"{line} {pid} {n}\n")

    async def on_pause() -> None:
        await asyncio.sleep(args.pause_delay)  # finishing the action in hand
        log("paused")

    async def act(link: AgentLink | None) -> None:
        nonlocal n
        while not stop.is_set():
            if link is None or not link.paused:
                n += 1
                with st.effect(f"act-{pid}-{n}", "look around", kind="read_only"):
                    log("acted")
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass

    async def run(link: AgentLink | None) -> None:
        got = st.load()
        if got is not None:
            cp, data = got
            args.resumed_file.write_text(json.dumps({"seq": cp.seq, "state": json.loads(data)}))
            args.sick_file.unlink(missing_ok=True)
        else:
            for i in range(1, 6):
                st.save(json.dumps({"step": i}).encode(), label=f"cp{i}")
                if i == 3:
                    for o in ("A", "B", "C"):
                        name = f"order-{o}"
                        with st.effect(f"book-{o}", f"book {name}", compensation=undo(args.booking, name)):
                            post(f"{args.booking}/apply/{name}", f"book-{o}")
            args.sick_file.touch()
        await act(link)

    if args.no_mqtt:
        await run(None)
        return 0
    # Connected (and subscribed to its control topic) before it can fall sick.
    async with AgentLink(args.name, "127.0.0.1", args.mqtt_port, on_pause=on_pause) as link:
        await link.wait_connected()
        await run(link)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
