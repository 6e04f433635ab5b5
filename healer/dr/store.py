"""The checkpoint catalogue: content-addressed blobs, one manifest per checkpoint, a HEAD per agent.

Layout under the daemon's state directory (dirs 0700, files 0600)::

    checkpoints/blobs/AB/ABCDEF...            the bytes, named by their sha256 (deduplicated)
    checkpoints/agents/AGENT/000000000003.json manifest: agent, seq, created_at, schema, label,
                                               sha256, size
    checkpoints/agents/AGENT/000000000003.corrupt  why it failed verification (it is never used)
    checkpoints/agents/AGENT/HEAD             {"seq", "sha256"}: the checkpoint the agent resumes from
    checkpoints/agents/AGENT/ledger.jsonl     the side-effect ledger (healer.dr.ledger)

Every file is written atomically (temp file, fsync, rename, fsync dir), blob before manifest
before HEAD, so a crash leaves at worst an unreferenced blob, never a manifest without its bytes.
A save moves HEAD to the new checkpoint; a rollback moves HEAD back (newer checkpoints stay, for
forensics, until retention removes them). Reading a checkpoint always re-hashes it.

Standard library only: agents import this through :mod:`healer.agent.state`.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
        digest = hashlib.sha256(data).hexdigest()
        blob = self.blob_path(digest)
        if not blob.exists():
            atomic_write(blob, data)
        seq = max((c.seq for c in self.list(agent)), default=0) + 1
        cp = Checkpoint(
            agent, seq, time.time() if created_at is None else created_at, digest, len(data), schema, label
        )
        atomic_write(self._manifest_path(agent, seq), json.dumps(cp.as_dict(), sort_keys=True).encode())
        self.set_head(agent, cp)
        return cp

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
        h = hashlib.sha256()
        parts = []
        try:
            with open(self.blob_path(cp.sha256), "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    parts.append(chunk)
        except FileNotFoundError:
            raise CorruptCheckpoint(cp, "its blob is missing") from None
        data = b"".join(parts)
        if h.hexdigest() != cp.sha256 or len(data) != cp.size:
            raise CorruptCheckpoint(cp, f"sha256 {h.hexdigest()[:12]}... does not match {cp.sha256[:12]}...")
        if validator is not None:
            try:
                validator(data)
            except Exception as exc:  # the agent's own decoder: any failure means unusable state
                raise CorruptCheckpoint(cp, f"validator rejected it: {type(exc).__name__}: {exc}") from exc
        return data

    def verify(self, cp: Checkpoint, validator: Validator | None = None) -> str | None:
        """None if good; else the reason, and the checkpoint is marked corrupt."""
        try:
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
