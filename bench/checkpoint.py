"""Checkpoint save + verify + restore of a 100 MB state vs a plain file copy of the same bytes.

    python bench/checkpoint.py [--mb 100] [--runs 5]

Two pairs, side by side in one run, best of ``--runs`` each (a fresh random state per run:
content addressing must not dedupe the benchmark away):

- **in memory** (the headline): the copy is shutil.copyfile + fsync of the destination + reading
  it back; the checkpoint is AgentState.save (bytes in memory: sha256 name and BLAKE3 check
  taken while written, fsync, manifest, HEAD) + CheckpointStore.verify (streamed re-hash) +
  AgentState.load (read back, re-hashed).
- **file to file**: the copy is shutil.copyfile + fsync; the checkpoint is AgentState.save_file
  (kernel copy, hash of the copy) + verify + AgentState.load_into (kernel copy next to the
  destination, hash of the copy, fsync, rename).

The ratio is copy time / checkpoint time (1.0 = as fast as a copy; the goal is >= 0.5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from healer.agent.state import AgentState


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def copy_once(src: Path, dst: Path, read_back: bool) -> float:
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    fsync(dst)
    if read_back:
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


def checkpoint_file_once(state_dir: Path, src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    st = AgentState("bench-file", state_dir)
    cp = st.save_file(src)
    assert st.store.verify(cp) is None
    got = st.load_into(dst)
    assert got is not None and got.seq == cp.seq
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        copies, cps, fcopies, fcps = [], [], [], []
        for i in range(args.runs):
            data = os.urandom(args.mb << 20)
            src = root / f"src-{i}"
            src.write_bytes(data)
            fsync(src)
            copies.append(copy_once(src, root / f"dst-{i}", read_back=True))
            cps.append(checkpoint_once(root / "state", data))
            fcopies.append(copy_once(src, root / f"fdst-{i}", read_back=False))
            fcps.append(checkpoint_file_once(root / "state", src, root / f"restored-{i}"))
            for p in (src, root / f"dst-{i}", root / f"fdst-{i}", root / f"restored-{i}"):
                p.unlink()
        mb = args.mb
        print(f"state size {mb} MB, best of {args.runs}; load average {os.getloadavg()[0]:.2f}")
        c, k = min(copies), min(cps)
        print(f"in memory:    copy+fsync+read back {c:.3f} s ({mb / c:.0f} MB/s)  "
              f"checkpoint save+verify+load {k:.3f} s ({mb / k:.0f} MB/s)  ratio {c / k:.2f}")  # fmt: skip
        c, k = min(fcopies), min(fcps)
        print(f"file to file: copy+fsync {c:.3f} s ({mb / c:.0f} MB/s)  "
              f"checkpoint save_file+verify+load_into {k:.3f} s ({mb / k:.0f} MB/s)  ratio {c / k:.2f}")  # fmt: skip
        print("medians: in memory", f"{sorted(copies)[len(copies) // 2] / sorted(cps)[len(cps) // 2]:.2f},",
              "file to file", f"{sorted(fcopies)[len(fcopies) // 2] / sorted(fcps)[len(fcps) // 2]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
