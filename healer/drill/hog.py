"""Resource pressure beside a target: ``python -m healer.drill.hog --cpu N | --memory-mb M``.

Started by the cpu_pressure / memory_pressure faults. It exits on SIGTERM, after
``--max-seconds``, or as soon as the drill that started it is gone, so a drill killed with
SIGKILL cannot leave a hog behind for long.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time

_PAGE = 4096


def _burn(parent: int, deadline: float) -> None:
    while time.monotonic() < deadline and os.getppid() == parent:
        for _ in range(200_000):
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="healer.drill.hog")
    p.add_argument("--cpu", type=int, default=0)
    p.add_argument("--memory-mb", type=int, default=0)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--max-seconds", type=float, default=3600.0)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = time.monotonic() + args.max_seconds
    me = os.getpid()
    workers = [
        multiprocessing.Process(target=_burn, args=(me, deadline), daemon=True) for _ in range(args.cpu)
    ]
    for w in workers:
        w.start()
    hold = bytearray(args.memory_mb * 1024 * 1024)
    for i in range(0, len(hold), _PAGE):  # touch every page: resident, not just reserved
        hold[i] = 1
    print("ready", flush=True)
    try:
        while time.monotonic() < deadline and os.getppid() == args.parent:
            time.sleep(0.2)
    finally:
        for w in workers:
            w.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
