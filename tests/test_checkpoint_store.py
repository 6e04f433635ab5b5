"""The checkpoint store's I/O paths on real files: both digests taken on save, kernel copies on
save_file / export, streamed verification, and what each does with a corrupt blob (and with a
manifest from before the BLAKE3 check existed)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import blake3
import pytest

from healer.agent.state import AgentState
from healer.dr.store import CheckpointStore, CorruptCheckpoint, _copy_fd, _hash_fd


def flip(path: Path, at: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def test_save_names_the_blob_by_its_sha256_private_and_without_temp_files(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp")
    data = os.urandom(3 * (1 << 20) + 123)  # several chunks and a partial one
    cp = store.save("a", data, label="x")
    blob = store.blob_path(cp.sha256)
    assert cp.sha256 == hashlib.sha256(data).hexdigest() and cp.size == len(data)
    assert blob.read_bytes() == data
    assert stat.S_IMODE(blob.stat().st_mode) == 0o600
    assert not [p for p in (tmp_path / "cp" / "blobs").iterdir() if p.name.startswith(".incoming-")]
    assert store.read(cp) == data and store.verify(cp) is None


def test_save_file_and_export_copy_in_the_kernel_and_check_the_copy(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp")
    src = tmp_path / "state.db"
    data = os.urandom(2 << 20)
    src.write_bytes(data)
    cp = store.save_file("a", src)
    assert cp.sha256 == hashlib.sha256(data).hexdigest()
    # The same bytes saved from memory land on the same blob (content addressed).
    assert store.save("a", data).sha256 == cp.sha256
    dest = tmp_path / "restored.db"
    dest.write_bytes(b"old state")
    store.export(cp, dest)
    assert dest.read_bytes() == data
    # A flipped bit: the copy does not match, and the destination keeps what it had.
    flip(store.blob_path(cp.sha256), 1000)
    dest.write_bytes(b"old state")
    with pytest.raises(CorruptCheckpoint, match="does not match"):
        store.export(cp, dest)
    assert dest.read_bytes() == b"old state"
    assert [p.name for p in tmp_path.iterdir() if ".restore-" in p.name] == []
    assert store.verify(cp) is not None  # streamed re-hash finds it too, and marks it
    assert store.corrupt_reason(cp) is not None


def test_the_manifest_records_both_digests_of_the_stored_bytes(tmp_path: Path) -> None:
    """The sha256 names the blob, the BLAKE3 checks it: both of exactly the bytes stored, on both
    save paths, and in the manifest file (what a restarted daemon reads back)."""
    store = CheckpointStore(tmp_path / "cp")
    data = os.urandom(5 * (1 << 20) + 7)
    src = tmp_path / "state.bin"
    src.write_bytes(data)
    for cp in (store.save("a", data), store.save_file("a", src)):
        assert cp.sha256 == hashlib.sha256(data).hexdigest()
        assert cp.blake3 == blake3.blake3(data).hexdigest()
        assert store.get("a", cp.seq) == cp  # as parsed back from the manifest on disk
    fd = os.open(store.blob_path(cp.sha256), os.O_RDONLY)
    try:
        assert _hash_fd(fd, sha=True, b3=True) == (cp.sha256, cp.blake3, len(data))
    finally:
        os.close(fd)


def test_a_flipped_byte_anywhere_fails_the_blake3_check_on_every_path(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp")
    data = os.urandom(3 << 20)
    for i, at in enumerate((0, (1 << 20) + 5, len(data) - 1)):  # first chunk, a middle one, the last byte
        cp = store.save(f"a{i}", data + bytes([i]))  # its own blob each time
        flip(store.blob_path(cp.sha256), at)
        with pytest.raises(CorruptCheckpoint, match=r"blake3 .* does not match"):
            store.read(cp)
        with pytest.raises(CorruptCheckpoint, match="blake3"):
            store.export(cp, tmp_path / f"out{i}")
        assert "blake3" in str(store.verify(cp))


def test_a_manifest_from_before_blake3_is_checked_by_its_sha256(tmp_path: Path) -> None:
    """A state directory written by an older healer (manifests without ``blake3``) keeps working:
    its checkpoints restore, and corruption in them is still caught, by the sha256."""
    store = CheckpointStore(tmp_path / "cp")
    cp = store.save("a", b"old state" * 1000)
    manifest = store.agent_dir("a") / f"{cp.seq:012d}.json"
    doc = json.loads(manifest.read_text())
    del doc["blake3"]
    manifest.write_text(json.dumps(doc))
    old = store.get("a", cp.seq)
    assert old.blake3 is None
    assert store.read(old) == b"old state" * 1000 and store.verify(old) is None
    flip(store.blob_path(old.sha256), 10)
    with pytest.raises(CorruptCheckpoint, match=r"sha256 .* does not match"):
        store.read(old)
    assert "sha256" in str(store.verify(old))


def test_read_rejects_a_blob_that_grew_or_shrank(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp")
    cp = store.save("a", b"0123456789")
    blob = store.blob_path(cp.sha256)
    blob.write_bytes(b"0123456789!")
    with pytest.raises(CorruptCheckpoint):
        store.read(cp)
    blob.write_bytes(b"012345678")
    assert store.verify(cp) is not None


def test_saving_the_same_bytes_again_heals_a_rotted_blob(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp")
    old = store.save("a", b"state-1")
    flip(store.blob_path(old.sha256))
    new = store.save("a", b"state-1")
    assert store.read(new) == b"state-1"


def test_load_into_falls_back_to_the_previous_good_checkpoint(tmp_path: Path) -> None:
    st = AgentState("a", tmp_path / "state")
    st.save(b"one")
    two = st.save(b"two")
    flip(st.store.blob_path(two.sha256))
    dest = tmp_path / "work.bin"
    got = st.load_into(dest)
    assert got is not None and got.seq == 1 and dest.read_bytes() == b"one"
    assert st.skipped and st.skipped[0][0] == 2 and st.head == 1


def test_copy_falls_back_to_plain_reads_where_the_kernel_cannot_copy(tmp_path: Path) -> None:
    r, w = os.pipe()  # neither copy_file_range nor sendfile read from a pipe
    os.write(w, b"x" * 5000)
    os.close(w)
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert _copy_fd(r, fd) == 5000
    finally:
        os.close(fd)
        os.close(r)
    assert out.read_bytes() == b"x" * 5000
