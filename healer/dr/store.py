"""The checkpoint catalogue: content-addressed blobs, one manifest per checkpoint, a HEAD per agent.

Layout under the daemon's state directory (dirs 0700, files 0600)::

    checkpoints/blobs/AB/ABCDEF...            the bytes, named by their sha256 (deduplicated)
    checkpoints/agents/AGENT/000000000003.json manifest: agent, seq, created_at, schema, label,
                                               sha256, blake3, size
    checkpoints/agents/AGENT/000000000003.corrupt  why it failed verification (it is never used)
    checkpoints/agents/AGENT/HEAD             {"seq", "sha256"}: the checkpoint the agent resumes from
    checkpoints/agents/AGENT/ledger.jsonl     the side-effect ledger (healer.dr.ledger)

Every file is written atomically (temp file, fsync, rename, fsync dir), blob before manifest
before HEAD, so a crash leaves at worst an unreferenced blob (or a ``blobs/.incoming-*`` temp
file), never a manifest without its bytes.

Two digests of the same bytes, taken together when the blob is written: the sha256 *names* the
blob (content addressing, deduplication), the BLAKE3 *checks* it on every verify and read. Both
are cryptographic, so a blob that matches its BLAKE3 is byte for byte the one whose sha256 names
it; BLAKE3 runs several times faster here (SIMD, and both cores for large blobs), and the check
runs on every restore while the name is computed once. A manifest written before the BLAKE3
existed (no ``blake3`` key) is checked by its sha256, as before. Verifying streams the blob
through a small buffer; restoring to a file copies it in the kernel (copy_file_range) and hashes
the copy.
A save moves HEAD to the new checkpoint; a rollback moves HEAD back (newer checkpoints stay, for
forensics, until retention removes them). Reading a checkpoint always re-hashes it.

The standard library and ``blake3`` only: agents import this through :mod:`healer.agent.state`.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import blake3

from healer.errors import HealerError
from healer.fsutil import atomic_write, fsync_dir

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SEQ_WIDTH = 12

Validator = Callable[[bytes], object]


class CheckpointError(HealerError):
    pass


class CorruptCheckpoint(CheckpointError):
    def __init__(self, cp: Checkpoint, reason: str) -> None:
        super().__init__(f"checkpoint {cp.agent}#{cp.seq} is corrupt: {reason}")
        self.checkpoint = cp
        self.reason = reason


@dataclass(frozen=True)
class Checkpoint:
    agent: str
    seq: int
    created_at: float
    sha256: str
    size: int
    schema: int = 1
    label: str | None = None
    blake3: str | None = None  # the check (None: a manifest older than it, checked by sha256)

    # The execute Protocol (healer.execute.builtins.checkpoint.CheckpointStore) names them.
    @property
    def name(self) -> str:
        return str(self.seq)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_name(value: str, what: str = "agent name") -> str:
    if not NAME_RE.match(value) or ".." in value:
        raise CheckpointError(f"invalid {what} {value!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return value


_CHUNK = 1 << 20
_T = TypeVar("_T")


def _b3() -> blake3.blake3:
    # AUTO: a 100 MB blob is hashed on every core (the work is split into independent subtrees).
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def _hash_fd(fd: int, *, sha: bool, b3: bool) -> tuple[str | None, str | None, int]:
    """sha256 and/or BLAKE3 and the size of the whole file behind ``fd``, read at explicit offsets
    (another thread may be fsyncing the same fd) through one reused buffer."""
    hs = hashlib.sha256() if sha else None
    hb = _b3() if b3 else None
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    size = 0
    while n := os.preadv(fd, [buf], size):
        if hs is not None:
            hs.update(view[:n])
        if hb is not None:
            hb.update(view[:n])
        size += n
    return (
        hs.hexdigest() if hs is not None else None,
        hb.hexdigest() if hb is not None else None,
        size,
    )


class _Background(Generic[_T]):
    """``fn()`` on its own thread (CPU work that releases the GIL: hashing a large buffer)."""

    def __init__(self, fn: Callable[[], _T], name: str) -> None:
        self._value: list[_T] = []
        self._failure: list[BaseException] = []

        def run() -> None:
            try:
                self._value.append(fn())
            except BaseException as exc:  # re-raised by result() in the caller's thread
                self._failure.append(exc)

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def result(self) -> _T:
        self._thread.join()
        if self._failure:
            raise self._failure[0]
        return self._value[0]

    def result_or_none(self) -> _T | None:
        self._thread.join()
        return self._value[0] if self._value else None


def _fsync_beside(fd: int, work: Callable[[], _T]) -> _T:
    """``work()`` (hashing: CPU) while another thread fsyncs ``fd`` (waiting on the disk): the
    two overlap instead of adding up. hashlib and blake3 release the GIL on large buffers. An
    fsync that failed fails the caller, as does ``work()`` (after the fsync thread has ended)."""
    sync = _Background(lambda: os.fsync(fd), "checkpoint-fsync")
    try:
        out = work()
    except BaseException:
        sync.result_or_none()
        raise
    sync.result()
    return out


def _copy_fd(src: int, dst: int) -> int:
    """Copy all of ``src`` to ``dst`` in the kernel (copy_file_range, else sendfile, else read/write)."""
    total = 0
    try:
        while n := os.copy_file_range(src, dst, 1 << 30):
            total += n
        return total
    except OSError:  # another filesystem or an old kernel: the portable ways
        pass
    try:
        while n := os.sendfile(dst, src, None, 1 << 30):
            total += n
        return total
    except OSError:
        pass
    while chunk := os.read(src, _CHUNK):
        while chunk:
            written = os.write(dst, chunk)
            total += written
            chunk = chunk[written:]
    return total


# -- durable files -----------------------------------------------------------------------------------
def private_dir(path: Path) -> Path:
    """Created 0700 if missing; an existing directory keeps its mode (agents may share it)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def append_line(path: Path, doc: dict[str, Any]) -> None:
    """One JSON line, appended and fsynced before returning (O_APPEND: concurrent writers interleave
    whole lines, since each line goes out in one write)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(doc, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a torn last line (crash mid-write) is ignored."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                out.append(doc)
    return out


# -- the store ---------------------------------------------------------------------------------------
class CheckpointStore:
    def __init__(self, root: Path) -> None:
        """``root`` is ``STATE_DIR/checkpoints``."""
        self.root = Path(root)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> CheckpointStore:
        return cls(Path(state_dir) / "checkpoints")

    def agent_dir(self, agent: str) -> Path:
        return self.root / "agents" / check_name(agent)

    def blob_path(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise CheckpointError(f"not a sha256: {sha256!r}")
        return self.root / "blobs" / sha256[:2] / sha256

    def _manifest_path(self, agent: str, seq: int) -> Path:
        return self.agent_dir(agent) / f"{seq:0{_SEQ_WIDTH}d}.json"

    def agents(self) -> list[str]:
        d = self.root / "agents"
        return (
            sorted(p.name for p in d.iterdir() if p.is_dir() and NAME_RE.match(p.name)) if d.is_dir() else []
        )

    # -- writing ---------------------------------------------------------------------------------
    def save(
        self,
        agent: str,
        data: bytes,
        *,
        label: str | None = None,
        schema: int = 1,
        created_at: float | None = None,
    ) -> Checkpoint:
        check_name(agent)
        return self._catalogue(agent, self._write_blob(data), label, schema, created_at)

    def save_file(
        self,
        agent: str,
        path: Path,
        *,
        label: str | None = None,
        schema: int = 1,
        created_at: float | None = None,
    ) -> Checkpoint:
        """A checkpoint of the file at ``path``: copied in the kernel (copy_file_range), then the
        copy is hashed, so the digests name exactly the bytes stored even if ``path`` changes
        meanwhile."""
        check_name(agent)
        return self._catalogue(agent, self._copy_blob(Path(path)), label, schema, created_at)

    def _catalogue(
        self,
        agent: str,
        blob: tuple[str, str, int],
        label: str | None,
        schema: int,
        created_at: float | None,
    ) -> Checkpoint:
        digest, check, size = blob
        seq = max((c.seq for c in self.list(agent)), default=0) + 1
        when = time.time() if created_at is None else created_at
        cp = Checkpoint(agent, seq, when, digest, size, schema, label, check)
        atomic_write(self._manifest_path(agent, seq), json.dumps(cp.as_dict(), sort_keys=True).encode())
        self.set_head(agent, cp)
        return cp

    # The bytes are all in memory already, so their sha256 (the name) is taken on another thread
    # from the start, beside the writes, the BLAKE3 (fed each chunk while it is in the CPU cache)
    # and the fsync: on two cores the save costs about the longest of them, not their sum. The
    # name is known only at the end, so the blob goes to a temp file in blobs/ and is renamed.
    def _write_blob(self, data: bytes | bytearray | memoryview) -> tuple[str, str, int]:
        view = memoryview(data).cast("B")
        hb = _b3()
        name = _Background(lambda: hashlib.sha256(view).hexdigest(), "checkpoint-sha256")

        def fill(fd: int) -> None:
            for off in range(0, len(view), _CHUNK):
                chunk = view[off : off + _CHUNK]
                hb.update(chunk)
                while chunk:
                    chunk = chunk[os.write(fd, chunk) :]

        def digests(fd: int) -> tuple[str, str, int]:
            return name.result(), hb.hexdigest(), len(view)

        try:
            return self._land(fill, digests)
        finally:
            name.result_or_none()  # never leave the thread reading a buffer the caller may reuse

    def _copy_blob(self, src: Path) -> tuple[str, str, int]:
        def fill(fd: int) -> None:
            with open(src, "rb") as f:
                _copy_fd(f.fileno(), fd)

        def digests(fd: int) -> tuple[str, str, int]:
            sha, check, size = _hash_fd(fd, sha=True, b3=True)
            assert sha is not None and check is not None
            return sha, check, size

        return self._land(fill, digests)

    def _land(
        self, fill: Callable[[int], None], digests: Callable[[int], tuple[str, str, int]]
    ) -> tuple[str, str, int]:
        blobs = private_dir(self.root / "blobs")
        fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".incoming-")
        try:
            os.fchmod(fd, 0o600)
            fill(fd)
            got = _fsync_beside(fd, lambda: digests(fd))
            os.close(fd)
            fd = -1
            # Same bytes already stored: replacing them anyway heals a blob that rotted since.
            blob = self.blob_path(got[0])
            private_dir(blob.parent)
            os.replace(tmp, blob)
            fsync_dir(blob.parent)
            return got
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def set_head(self, agent: str, cp: Checkpoint) -> None:
        head = {"seq": cp.seq, "sha256": cp.sha256}
        atomic_write(self.agent_dir(agent) / "HEAD", json.dumps(head).encode())

    def mark_corrupt(self, cp: Checkpoint, reason: str) -> None:
        path = self.agent_dir(cp.agent) / f"{cp.seq:0{_SEQ_WIDTH}d}.corrupt"
        atomic_write(path, json.dumps({"reason": reason, "at": time.time()}).encode())

    def clear_corrupt(self, cp: Checkpoint) -> bool:
        """Drop the corrupt mark (a drill that damaged the blob put the exact bytes back)."""
        try:
            os.unlink(self.agent_dir(cp.agent) / f"{cp.seq:0{_SEQ_WIDTH}d}.corrupt")
        except FileNotFoundError:
            return False
        fsync_dir(self.agent_dir(cp.agent))
        return True

    def remove(self, cp: Checkpoint) -> None:
        """Drop the manifest (and the blob when no other manifest uses it)."""
        d = self.agent_dir(cp.agent)
        for suffix in (".json", ".corrupt"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d / f"{cp.seq:0{_SEQ_WIDTH}d}{suffix}")
        fsync_dir(d)
        if not any(c.sha256 == cp.sha256 for a in self.agents() for c in self.list(a)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blob_path(cp.sha256))

    # -- reading ---------------------------------------------------------------------------------
    def list(self, agent: str) -> list[Checkpoint]:
        """All checkpoints of ``agent`` by sequence (corrupt ones included; see :meth:`is_corrupt`)."""
        d = self.agent_dir(agent)
        out = []
        for p in sorted(d.glob("*.json")) if d.is_dir() else []:
            with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
                doc = json.loads(p.read_text())
                out.append(
                    Checkpoint(
                        str(doc["agent"]),
                        int(doc["seq"]),
                        float(doc["created_at"]),
                        str(doc["sha256"]),
                        int(doc["size"]),
                        int(doc.get("schema", 1)),
                        doc.get("label"),
                        doc.get("blake3"),
                    )
                )
        return out

    def get(self, agent: str, seq: int) -> Checkpoint:
        for cp in self.list(agent):
            if cp.seq == seq:
                return cp
        raise CheckpointError(f"no checkpoint #{seq} for {agent!r}")

    def head(self, agent: str) -> int | None:
        try:
            return int(json.loads((self.agent_dir(agent) / "HEAD").read_text())["seq"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def corrupt_reason(self, cp: Checkpoint) -> str | None:
        path = self.agent_dir(cp.agent) / f"{cp.seq:0{_SEQ_WIDTH}d}.corrupt"
        try:
            return str(json.loads(path.read_text()).get("reason", "corrupt"))
        except FileNotFoundError:
            return None
        except ValueError:
            return "corrupt"

    def read(self, cp: Checkpoint, validator: Validator | None = None) -> bytes:
        """The bytes, re-hashed (and decoded by ``validator`` if given); CorruptCheckpoint if not."""
        known = self.corrupt_reason(cp)
        if known is not None:
            raise CorruptCheckpoint(cp, known)
        try:
            with open(self.blob_path(cp.sha256), "rb") as f:
                data = f.read(cp.size + 1)  # one buffer, filled by the kernel; +1 shows a longer blob
        except FileNotFoundError:
            raise CorruptCheckpoint(cp, "its blob is missing") from None
        hasher = _b3() if cp.blake3 is not None else hashlib.sha256()
        hasher.update(data)
        self._check(cp, hasher.hexdigest(), len(data))
        if validator is not None:
            try:
                validator(data)
            except Exception as exc:  # any decode failure means unusable state
                raise CorruptCheckpoint(cp, f"validator rejected it: {type(exc).__name__}: {exc}") from exc
        return data

    def export(self, cp: Checkpoint, dest: Path) -> None:
        """Restore ``cp`` into the file ``dest``: copied in the kernel next to it, the copy re-hashed
        (what the agent will read is what was saved), fsynced, renamed over ``dest``."""
        known = self.corrupt_reason(cp)
        if known is not None:
            raise CorruptCheckpoint(cp, known)
        dest = Path(dest)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.restore-")
        try:
            os.fchmod(fd, 0o600)
            try:
                with open(self.blob_path(cp.sha256), "rb") as f:
                    _copy_fd(f.fileno(), fd)
            except FileNotFoundError:
                raise CorruptCheckpoint(cp, "its blob is missing") from None
            _fsync_beside(fd, lambda: self._check_fd(cp, fd))
            os.close(fd)
            fd = -1
            os.replace(tmp, dest)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(dest.parent)

    @staticmethod
    def _check(cp: Checkpoint, digest: str | None, size: int) -> None:
        """``digest`` is the BLAKE3 if the manifest has one, else the sha256."""
        algo, want = ("blake3", cp.blake3) if cp.blake3 is not None else ("sha256", cp.sha256)
        if size != cp.size:
            raise CorruptCheckpoint(cp, f"{size} bytes where {cp.size} were saved")
        if digest != want:
            raise CorruptCheckpoint(cp, f"{algo} {str(digest)[:12]}... does not match {want[:12]}...")

    def _check_fd(self, cp: Checkpoint, fd: int) -> None:
        b3 = cp.blake3 is not None
        sha, check, size = _hash_fd(fd, sha=not b3, b3=b3)
        self._check(cp, check if b3 else sha, size)

    def _stream_check(self, cp: Checkpoint) -> None:
        """Re-hash the blob through one small reused buffer (nothing kept in memory)."""
        known = self.corrupt_reason(cp)
        if known is not None:
            raise CorruptCheckpoint(cp, known)
        try:
            fd = os.open(self.blob_path(cp.sha256), os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptCheckpoint(cp, "its blob is missing") from None
        try:
            self._check_fd(cp, fd)
        finally:
            os.close(fd)

    def verify(self, cp: Checkpoint, validator: Validator | None = None) -> str | None:
        """None if good; else the reason, and the checkpoint is marked corrupt."""
        try:
            if validator is None:
                self._stream_check(cp)
            else:
                self.read(cp, validator)
        except CorruptCheckpoint as exc:
            if self.corrupt_reason(cp) is None:
                self.mark_corrupt(cp, exc.reason)
            return exc.reason
        return None

    # -- retention -------------------------------------------------------------------------------
    def retain(self, agent: str, keep: int, protected: Iterable[int] = ()) -> builtins.list[Checkpoint]:
        """Remove all but the newest ``keep``, HEAD and ``protected`` sequences; the removed ones."""
        cps = self.list(agent)
        spare = {c.seq for c in cps[-keep:]} if keep > 0 else set()
        spare |= set(protected)
        head = self.head(agent)
        if head is not None:
            spare.add(head)
        removed = [c for c in cps if c.seq not in spare]
        for c in removed:
            self.remove(c)
        return removed
