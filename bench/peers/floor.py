"""The practical floor: the least a supervisor can do — spawn, wait on a pidfd, respawn at once.

No health checks, no logging, no policy: whatever healer adds on top of this is its overhead.
Usage: python floor.py -- ARGV...
"""

from __future__ import annotations

import os
import select
import subprocess
import sys


def main() -> int:
    argv = sys.argv[sys.argv.index("--") + 1 :]
    while True:
        proc = subprocess.Popen(argv)
        fd = os.pidfd_open(proc.pid)
        select.select([fd], [], [])
        os.close(fd)
        proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
