"""Checkpoint save + verify + restore of a 100 MB state vs a plain file copy of the same bytes.

    python bench/checkpoint.py [--mb 100] [--runs 3]

Both sides write durably (fsync) and read back: the copy is shutil.copyfile + fsync of the
destination + reading it back; the checkpoint is AgentState.save (sha256, atomic write, fsync,
manifest, HEAD) + CheckpointStore.verify (re-hash) + AgentState.load (re-hash on read). The
ratio is copy time / checkpoint time (1.0 = as fast as a copy; the goal is >= 0.5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from healer.agent.state import AgentState


def copy_once(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    dst.read_bytes()
    return time.perf_counter() - t0


def checkpoint_once(state_dir: Path, data: bytes) -> float:
    t0 = time.perf_counter()
    st = AgentState("bench", state_dir)
    cp = st.save(data)
    assert st.store.verify(cp) is None
    got = st.load()
    assert got is not None and len(got[1]) == len(data)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # A fresh random state per run: content addressing must not dedupe the benchmark away.
        copies, cps = [], []
        for i in range(args.runs):
            data = os.urandom(args.mb << 20)
            src = root / f"src-{i}"
            src.write_bytes(data)
            copies.append(copy_once(src, root / f"dst-{i}"))
            cps.append(checkpoint_once(root / "state", data))
        c, k = min(copies), min(cps)
        print(f"state size            {args.mb} MB, best of {args.runs}")
        print(f"plain copy (+fsync)   {c:.3f} s  {args.mb / c:.0f} MB/s")
        print(f"checkpoint save+verify+restore  {k:.3f} s  {args.mb / k:.0f} MB/s")
        print(f"ratio (copy time / checkpoint time)  {c / k:.2f}")


if __name__ == "__main__":
    main()
