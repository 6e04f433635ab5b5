"""The SQLite event store: real files, real concurrency, real permissions."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
from pathlib import Path

import pytest

from healer.errors import StoreError
from healer.knowledge.events import Event
from healer.knowledge.store import SINGLE_STATEMENT_ROWS, SQLiteEventStore, bundled_migrations


async def test_concurrent_appends_get_gapless_ordered_positions(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path / "s", batch_max=64)
    try:

        async def writer(n: int) -> list[int]:
            out = []
            for i in range(50):
                recs = await store.append([Event("test.appended", float(i), f"c{n}", None, {"i": i, "n": n})])
                out.append(recs[0].position)
            return out

        results = await asyncio.gather(*(writer(n) for n in range(8)))
        every = sorted(p for r in results for p in r)
        assert every == list(range(1, 401))
        for r in results:
            assert r == sorted(r), "one writer's events keep their order"
        read = await store.read()
        assert [e.position for e in read] == every
        assert await store.last_position() == 400
        # Reading by position resumes exactly where it left off.
        tail = await store.read(after=390)
        assert [e.position for e in tail] == list(range(391, 401))
        assert tail[0].data["i"] in range(50)
    finally:
        await store.close()


async def test_batches_share_commits(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path / "s", batch_max=512)
    try:
        n = 300
        await asyncio.gather(*(store.append([Event("x.happened", 0.0)]) for _ in range(n)))
        assert store.appended_total == n
    finally:
        await store.close()


@pytest.mark.parametrize("size", [1, 3, SINGLE_STATEMENT_ROWS, SINGLE_STATEMENT_ROWS + 1, 300])
async def test_a_commit_is_all_or_nothing_on_both_paths(tmp_path: Path, size: int) -> None:
    """Small commits are one multi-row INSERT, larger ones BEGIN/executemany/COMMIT: both
    record every event intact, and a commit that fails part-way leaves nothing behind."""
    store = await SQLiteEventStore.open(tmp_path / "s")
    try:
        batch = [Event("x.happened", float(i), f"c{i}", i, {"i": i, "s": "é" * i}) for i in range(size)]
        recorded = await store.append(batch)
        assert [r.position for r in recorded] == list(range(1, size + 1))
        read = await store.read()
        assert [(e.ts, e.component, e.incident, e.data) for e in read] == [
            (ev.ts, ev.component, ev.incident, ev.data) for ev in batch
        ]
        # Another connection makes the last row of the next commit fail.
        with contextlib.closing(sqlite3.connect(tmp_path / "s" / "events.db")) as other:
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.type = 'x.refused' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
            other.commit()
        bad = [Event("x.happened", 0.0) for _ in range(size - 1)] + [Event("x.refused", 0.0)]
        with pytest.raises(StoreError, match="refused by the test"):
            await store.append(bad)
        assert await store.last_position() == size, "none of the failed commit's rows remain"
        [after] = await store.append([Event("x.happened", 9.0)])
        assert after.position == size + 1, "positions stay gapless after a failed commit"
    finally:
        await store.close()


async def test_log_is_append_only(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path / "s")
    await store.append([Event("x.happened", 1.0, data={"v": 1})])
    await store.close()
    conn = sqlite3.connect(tmp_path / "s" / "events.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET data = '{}'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events")
    conn.close()


async def test_files_are_private_and_wal_is_on(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path / "s", exclusive=True)
    await store.append([Event("x.happened", 1.0)])
    try:
        assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
        for f in (tmp_path / "s").iterdir():
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
        conn = sqlite3.connect(tmp_path / "s" / "events.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    finally:
        await store.close()


async def test_only_one_daemon_may_write_a_store(tmp_path: Path) -> None:
    first = await SQLiteEventStore.open(tmp_path / "s", exclusive=True)
    try:
        with pytest.raises(StoreError, match="another healer daemon"):
            await SQLiteEventStore.open(tmp_path / "s", exclusive=True)
        reader = await SQLiteEventStore.open(tmp_path / "s", readonly=True)
        await reader.close()
    finally:
        await first.close()
    again = await SQLiteEventStore.open(tmp_path / "s", exclusive=True)
    await again.close()


async def test_migrations_are_recorded_and_newer_stores_refused(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path / "s")
    newest = bundled_migrations()[-1].version
    assert await store.schema_version() == newest
    await store.close()
    # Re-opening applies nothing twice.
    store = await SQLiteEventStore.open(tmp_path / "s")
    await store.close()
    conn = sqlite3.connect(tmp_path / "s" / "events.db")
    rows = conn.execute("SELECT version FROM schema_migrations").fetchall()
    assert [r[0] for r in rows] == [m.version for m in bundled_migrations()]
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'future', 0)", (newest + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this healer"):
        await SQLiteEventStore.open(tmp_path / "s")


async def test_readonly_open_of_a_missing_store_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no event store"):
        await SQLiteEventStore.open(tmp_path / "nothing", readonly=True)
