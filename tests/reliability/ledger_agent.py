"""An agent that writes every start to an external ledger before becoming the fake agent.

The ledger is the judge of "no action executed twice": each line names the process and the
idempotency key of the recorded action that started it (healer passes it in the environment).
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    ledger = sys.argv[1]
    line = json.dumps(
        {
            "component": os.environ.get("HEALER_SUPERVISED_COMPONENT"),
            "pid": os.getpid(),
            "key": os.environ.get("HEALER_ACTION_KEY"),
        }
    )
    fd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, (line + "\n").encode())
    os.fsync(fd)
    os.close(fd)
    os.execv(sys.executable, [sys.executable, "-m", "healer.demo.fakeagent", *sys.argv[2:]])


if __name__ == "__main__":
    main()
