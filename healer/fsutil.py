"""Durable, private files: the one implementation every package uses (standard library only,
so the agent library can import it without the daemon's dependencies)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def ensure_private_dir(path: Path) -> Path:
    """``path`` and its missing parents, mode 0700 (an existing one is tightened when we own it)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(PermissionError):
        os.chmod(path, 0o700)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path, data: bytes | bytearray | memoryview | Iterable[bytes], mode: int = 0o600
) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new content, never a mix, and a
    crash leaves one of the two: temp file in the same directory, fsync, rename, fsync dir.
    A missing parent is created 0700; an existing one is left as it is (it may not be ours)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            for chunk in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
