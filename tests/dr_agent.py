"""A real agent process using healer.agent.state: ``python -m tests.dr_agent --name A --state-dir S ...``.

Fresh (no checkpoint): saves checkpoints 1..5 (``--checkpoints N``: 1..N; state ``{"step": i}``, labels ``cpI``); right after
checkpoint 3 it books orders A, B, C through the booking service (if ``--booking`` is given) (tests/ledger.py; each booking a
compensatable effect whose compensation is ``POST /undo/order-X``) and makes one read-only
quote; ``--pivot-after N`` records a pivot (a captured payment) after checkpoint N,
``--book-after5`` books order D after checkpoint 5. Then it waits for ``--go`` (if given) and
exits 3: "my memory is corrupt". ``--sick-file F --after-sick K``: instead, it creates F
(an exec probe fails on it), saves K more checkpoints (the first 0.8 s later) and runs on; a
resumed agent removes F.

Resumed (a checkpoint to load): writes what it loaded to ``--resumed-file`` and runs until
SIGTERM. ``--role R --act-every S``: instead, it tries a fenced action every S seconds and logs
``acted`` / ``fenced`` lines to ``--acts-file`` (the failover test).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from healer.agent.state import AgentState, Fenced


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--booking", default="")
    ap.add_argument("--go", type=Path, default=None)
    ap.add_argument("--pivot-after", type=int, default=None)
    ap.add_argument("--book-after5", action="store_true")
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--sick-file", type=Path, default=None)
    ap.add_argument("--after-sick", type=int, default=0)
    ap.add_argument("--resumed-file", type=Path, default=None)
    ap.add_argument("--role", default=None)
    ap.add_argument("--act-every", type=float, default=None)
    ap.add_argument("--acts-file", type=Path, default=None)
    args = ap.parse_args()
    running = True

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    st = AgentState(args.name, args.state_dir, validator=json.loads, role=args.role)

    if args.act_every is not None:
        assert args.acts_file is not None
        n = 0
        while running:
            n += 1
            try:
                with st.effect(f"{args.name}-act-{n}", "act", kind="read_only"):
                    line = f"acted {args.name} {n} token={st.token}"
            except Fenced as exc:
                line = f"fenced {args.name} {n}: {exc}"
            with open(args.acts_file, "a") as f:
                f.write(line + "\n")
            time.sleep(args.act_every)
        return 0

    got = st.load()
    if got is not None:
        cp, data = got
        if args.resumed_file is not None:
            doc = {"seq": cp.seq, "state": json.loads(data), "skipped": st.skipped}
            args.resumed_file.write_text(json.dumps(doc))
        if args.sick_file is not None:
            args.sick_file.unlink(missing_ok=True)  # healthy again from the restored state
        while running:
            time.sleep(0.1)
        return 0

    for i in range(1, args.checkpoints + 1):
        st.save(json.dumps({"step": i}).encode(), label=f"cp{i}")
        if i == 3 and args.booking:
            for o in ("A", "B", "C"):
                name = f"order-{o}"
                with st.effect(f"book-{o}", f"book {name}", compensation=undo(args.booking, name)):
                    post(f"{args.booking}/apply/{name}", f"book-{o}")
            with st.effect("quote-1", "read a quote", kind="read_only"):
                pass
        if i == args.pivot_after:
            with st.effect("pay-1", "capture payment", kind="pivot"):
                post(f"{args.booking}/apply/payment", "pay-1")
        if i == 5 and args.book_after5:
            with st.effect("book-D", "book order-D", compensation=undo(args.booking, "order-D")):
                post(f"{args.booking}/apply/order-D", "book-D")
    if args.sick_file is not None:
        # Unhealthy but alive: healer sees it through a probe, while the agent keeps saving
        # (checkpoints made after the incident opened: "before-incident" must pass them over).
        args.sick_file.touch()
        for j in range(args.after_sick):
            time.sleep(0.8 if j == 0 else 0.2)
            i = args.checkpoints + j + 1
            st.save(json.dumps({"step": i, "sick": True}).encode(), label=f"cp{i}")
        while running:
            time.sleep(0.1)
        return 0
    if args.go is not None:
        while not args.go.exists() and running:
            time.sleep(0.05)
    print("state corruption detected: exiting", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
