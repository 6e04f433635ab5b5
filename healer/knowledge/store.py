"""The event store: append (batched through one writer), read by position.

:class:`EventStore` is the small interface every stage depends on; :class:`SQLiteEventStore`
is the single-host backend (a PostgreSQL backend for multi-host fleets plugs in behind the
same Protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import orjson

from healer.errors import StoreError
from healer.fsutil import ensure_private_dir
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.projections import FleetState

DB_NAME = "events.db"
LOCK_NAME = "healer.lock"


class EventStore(Protocol):
    async def append(self, events: Sequence[Event | RecordedEvent]) -> list[RecordedEvent]:
        """Durably record ``events`` in order; return them with their positions.

        A :class:`RecordedEvent` (the control loop knows the positions it will get) comes back
        as it is if it got the position it carries."""

    async def read(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """Events with position > ``after``, in order."""

    async def last_position(self) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def bundled_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("healer._knowledge").joinpath("migrations").iterdir():
        m = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def _row_to_event(row: Any) -> RecordedEvent:
    return _new(RecordedEvent, (row[0], row[2], row[1], row[3], row[4], loads(row[5])))


_new = tuple.__new__  # RecordedEvent is a named tuple: skip its __new__'s extra call


_DUMP_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def dumps(data: Mapping[str, Any]) -> str:
    """An event's data as stored: JSON with sorted keys.

    orjson is several times faster than the standard encoder, whose cost was a fifth of the
    control loop's. What orjson cannot encode (an integer beyond 64 bits) goes through the
    standard encoder, which decides (or raises). NaN and infinities, which are not JSON, are
    stored as null: the standard encoder wrote tokens other readers of the log reject.
    """
    try:
        return orjson.dumps(data, option=_DUMP_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(data, sort_keys=True)


def loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN / Infinity, which logs written before orjson may hold


_SELECT = "SELECT position, ts, type, component, incident, data FROM events"


_INSERT = "INSERT INTO events (position, ts, type, component, incident, data) VALUES "
_ROW = "(?, ?, ?, ?, ?, ?)"
# Commits of up to this many events are one multi-row INSERT. Bounded so that every such
# statement stays in sqlite3's statement cache (128): compiling a statement is linear in its
# rows, and a large batch of a size never seen before compiled slower than executemany ran.
SINGLE_STATEMENT_ROWS = 32
_INSERT_ROWS = {n: _INSERT + ", ".join([_ROW] * n) for n in range(1, SINGLE_STATEMENT_ROWS + 1)}


class SQLiteEventStore:
    """SQLite in WAL mode. Appends from any task go through one writer task that commits them
    in batches: one fsync covers many events, and positions stay gapless."""

    def __init__(self, conn: aiosqlite.Connection, *, readonly: bool, batch_max: int = 512) -> None:
        self._conn = conn
        self._readonly = readonly
        self._batch_max = batch_max
        self._queue: asyncio.Queue[
            tuple[Sequence[Event | RecordedEvent], asyncio.Future[list[RecordedEvent]]]
        ] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._last = 0
        self._lock_fd: int | None = None
        self.appended_total = 0

    # -- opening -------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        state_dir: Path,
        *,
        readonly: bool = False,
        synchronous: str = "FULL",
        batch_max: int = 512,
        exclusive: bool = False,
    ) -> SQLiteEventStore:
        """Open (and migrate) the store under ``state_dir``.

        ``exclusive`` takes the state directory's lock: only one daemon may write a store.
        """
        db = state_dir / DB_NAME
        lock_fd = None
        if readonly:
            if not db.exists():
                raise StoreError(f"no event store at {db} (has the daemon run with this state directory?)")
            uri = f"file:{db}?mode=ro"
        else:
            old = os.umask(0o077)  # the db, its WAL and shm files are private to the daemon's user
            try:
                ensure_private_dir(state_dir)
            finally:
                os.umask(old)
            uri = f"file:{db}"
            if exclusive:
                lock_fd = _take_lock(state_dir / LOCK_NAME)
        try:
            old = os.umask(0o077)
            try:
                conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
                await conn.execute("PRAGMA busy_timeout = 5000")
                if not readonly:
                    await conn.execute("PRAGMA journal_mode = WAL")
                    await conn.execute(
                        f"PRAGMA synchronous = {'FULL' if synchronous == 'FULL' else 'NORMAL'}"
                    )
            finally:
                os.umask(old)
        except (sqlite3.Error, OSError) as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            raise StoreError(f"cannot open event store {db}: {exc}") from exc
        store = cls(conn, readonly=readonly, batch_max=batch_max)
        store._lock_fd = lock_fd
        try:
            if not readonly:
                await store._migrate()
            else:
                await store._check_version()
            store._last = await store.last_position()
        except BaseException:
            await store.close()
            raise
        return store

    async def _migrate(self) -> None:
        conn = self._conn
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            async with conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cur:
                row = await cur.fetchone()
            current = int(row[0]) if row else 0
            migrations = bundled_migrations()
            newest = migrations[-1].version if migrations else 0
            if current > newest:
                raise StoreError(
                    f"event store schema version {current} is newer than this healer ({newest}): "
                    "upgrade healer"
                )
            for m in migrations:
                if m.version <= current:
                    continue
                # One transaction per migration: a crash mid-way leaves the previous version intact.
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _split_sql(m.sql):
                        await conn.execute(stmt)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) "
                        "VALUES (?, ?, strftime('%s','now'))",
                        (m.version, m.name),
                    )
                    await conn.execute("COMMIT")
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot migrate event store: {exc}") from exc

    async def _check_version(self) -> None:
        try:
            async with self._conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"event store is not initialised: {exc}") from exc
        newest = bundled_migrations()[-1].version
        if row and int(row[0]) > newest:
            raise StoreError(f"event store schema version {row[0]} is newer than this healer ({newest})")

    async def schema_version(self) -> int:
        async with self._conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- writing -------------------------------------------------------------------------
    async def append(self, events: Sequence[Event | RecordedEvent]) -> list[RecordedEvent]:
        if self._readonly:
            raise StoreError("store opened read-only")
        if not events:
            return []
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        fut: asyncio.Future[list[RecordedEvent]] = asyncio.get_running_loop().create_future()
        await self._queue.put((events, fut))
        return await fut

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            count = len(batch[0][0])
            while count < self._batch_max and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                count += len(item[0])
            try:
                results = await self._commit(batch)
            except Exception as exc:
                err = (
                    exc if isinstance(exc, StoreError) else StoreError(f"cannot append to event store: {exc}")
                )
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                    self._queue.task_done()
                continue
            for (_, fut), recorded in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(recorded)
                self._queue.task_done()

    async def _commit(
        self, batch: list[tuple[Sequence[Event | RecordedEvent], asyncio.Future[list[RecordedEvent]]]]
    ) -> list[list[RecordedEvent]]:
        pos = self._last
        results: list[list[RecordedEvent]] = []
        rows = []
        for events, _ in batch:
            recorded = []
            for ev in events:
                pos += 1
                if isinstance(ev, RecordedEvent) and ev.position == pos:
                    rows.append((pos, ev.ts, ev.type, ev.component, ev.incident, dumps(ev.data)))
                    recorded.append(ev)
                    continue
                data = dict(ev.data)
                rows.append((pos, ev.ts, ev.type, ev.component, ev.incident, dumps(data)))
                recorded.append(RecordedEvent(pos, ev.type, ev.ts, ev.component, ev.incident, data))
            results.append(recorded)
        conn = self._conn
        if len(rows) <= SINGLE_STATEMENT_ROWS:
            # One statement is its own transaction in autocommit mode: atomic and durable like
            # BEGIN/INSERT/COMMIT, in one trip to SQLite's thread instead of three (each trip
            # wakes the event loop; this is most commits of a daemon at steady state).
            flat = [value for row in rows for value in row]
            await conn.execute(_INSERT_ROWS[len(rows)], flat)
        else:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await conn.executemany(_INSERT_ROWS[1], rows)
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
                raise
        self._last = pos
        self.appended_total += len(rows)
        return results

    # -- reading -------------------------------------------------------------------------
    async def read(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        sql = _SELECT + " WHERE position > ? ORDER BY position"
        args: tuple[Any, ...] = (after,)
        if limit is not None:
            sql += " LIMIT ?"
            args = (after, limit)
        async with self._conn.execute(sql, args) as cur:
            rows = await cur.fetchall()
        return [_row_to_event(r) for r in rows]

    async def iterate(self, after: int = 0, page: int = 5000) -> AsyncIterator[RecordedEvent]:
        while True:
            chunk = await self.read(after, page)
            for ev in chunk:
                yield ev
            if len(chunk) < page:
                return
            after = chunk[-1].position

    async def read_incident(self, incident: int) -> list[RecordedEvent]:
        async with self._conn.execute(_SELECT + " WHERE incident = ? ORDER BY position", (incident,)) as cur:
            rows = await cur.fetchall()
        return [_row_to_event(r) for r in rows]

    async def read_where(
        self,
        after: int = 0,
        *,
        component: str | None = None,
        incident: int | None = None,
        until: int | None = None,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Events after ``after`` (up to ``until``) of one component and/or incident, in order:
        the indexes on (component, position) and incident keep this a seek, not a scan."""
        sql = _SELECT + " WHERE position > ?"
        args: list[Any] = [after]
        if until is not None:
            sql += " AND position <= ?"
            args.append(until)
        if component is not None:
            sql += " AND component = ?"
            args.append(component)
        if incident is not None:
            sql += " AND incident = ?"
            args.append(incident)
        sql += " ORDER BY position"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        async with self._conn.execute(sql, args) as cur:
            rows = await cur.fetchall()
        return [_row_to_event(r) for r in rows]

    async def ts_at(self, position: int) -> float | None:
        async with self._conn.execute("SELECT ts FROM events WHERE position = ?", (position,)) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row else None

    async def data_version(self) -> int:
        """Changes whenever another connection commits: followers skip queries while it holds."""
        async with self._conn.execute("PRAGMA data_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def last_position(self) -> int:
        async with self._conn.execute("SELECT COALESCE(MAX(position), 0) FROM events") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        if self._writer is not None:
            # Let queued appends finish: they were acknowledged to nobody yet, but callers wait.
            await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        with contextlib.suppress(Exception):
            await self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


async def rebuild_state(store: EventStore, page: int = 5000) -> FleetState:
    """Fold the whole log into a fresh snapshot."""
    state = FleetState()
    after = 0
    with paused_gc():
        while True:
            chunk = await store.read(after, page)
            state.apply_all(chunk)
            if len(chunk) < page:
                return state
            after = chunk[-1].position


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic collector off while folding a log: the fold allocates millions of objects and
    frees none in cycles, so each full collection re-scans the growing state for nothing (about
    a third of a large fold's time). The collector's state is restored afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _take_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"another healer daemon is using {path.parent} (lock {path} is held)") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements; CREATE TRIGGER bodies contain ';' and stay whole."""
    statements, buf = [], []
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        buf.append(line)
        joined = "\n".join(buf)
        if sqlite3.complete_statement(joined):
            statements.append(joined.strip())
            buf = []
    if buf:
        statements.append("\n".join(buf))
    return statements
