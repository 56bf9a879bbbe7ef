"""SQLite backend: WAL, foreign keys on, one writer thread, short reads on the event loop.

Writes queue on a single thread (SQLite has one writer anyway, and a write may wait
for another process's lock). Reads never wait for a lock under WAL, and the API's
reads are index lookups of a few microseconds, far less than the ~30 us of CPU a hop
to a thread costs (plus the GIL hand-offs, which on a loaded core add milliseconds).
So a read first runs on the event loop with a CPU budget (half a millisecond); one
that goes over it is interrupted and re-run on a reader thread, and its statement
goes straight to the threads from then on.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from runtime.store.base import Database, Executor, Params, Row, is_read
from runtime.store.errors import DatabaseUnavailable, ForeignKeyViolation, StoreError, UniqueViolation

BUSY_TIMEOUT_MS = 5000
# CPU a read may use on the event loop before it is moved to a reader thread; the API's
# reads take a few to a few tens of microseconds. Checked every _CHECK_STEPS SQLite VM
# steps (~10-30 ns each). Thread CPU time, so a preempted process does not count.
INLINE_READ_BUDGET_S = 0.0005
_CHECK_STEPS = 1000
_SLOW_STATEMENTS_MAX = 1024


def _connect(path: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _translate(exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        if "UNIQUE" in text or "PRIMARY KEY" in text:
            return UniqueViolation(text)
        if "FOREIGN KEY" in text:
            return ForeignKeyViolation(text)
    if isinstance(exc, sqlite3.OperationalError) and ("unable to open" in text or "locked" in text):
        return DatabaseUnavailable(text)
    return StoreError(text)


def _run(conn: sqlite3.Connection, sql: str, params: Params, fetch: bool) -> Any:
    try:
        cursor = conn.execute(sql, tuple(params))
        if fetch:
            return [dict(row) for row in cursor.fetchall()]
        return cursor.rowcount
    except sqlite3.Error as exc:
        raise _translate(exc) from exc


def _run_group(conn: sqlite3.Connection, batches: list[list[tuple[str, tuple]]]) -> list[list[int] | StoreError]:
    """Writer thread: several batches in one SQLite transaction, each in a savepoint of its own, so
    one batch's error undoes that batch alone; per batch its row counts or its error. An error of
    BEGIN or COMMIT (a lock held by another process past the busy timeout) fails them all."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    results: list[list[int] | StoreError] = []
    try:
        single = len(batches) == 1
        for statements in batches:
            if not single:
                conn.execute("SAVEPOINT batch")
            try:
                counts = [conn.execute(sql, params).rowcount for sql, params in statements]
            except sqlite3.Error as exc:
                if single:
                    conn.execute("ROLLBACK")
                    return [_translate(exc)]
                conn.execute("ROLLBACK TO batch")
                conn.execute("RELEASE batch")
                results.append(_translate(exc))
            else:
                if not single:
                    conn.execute("RELEASE batch")
                results.append(counts)
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise _translate(exc) from exc
        raise
    return results


class _WriterExecutor(Executor):
    """Statements inside a transaction: all on the writer thread and connection."""

    dialect = "sqlite"

    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._db._on_writer(_run, sql, params, False)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._db._on_writer(_run, sql, params, True)


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, url: str, *, readers: int = 4) -> None:
        self.url = url
        self.path = url[len("sqlite:///"):]
        self._readers = readers
        self._writer: sqlite3.Connection | None = None
        self._write_pool: ThreadPoolExecutor | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._write_lock = asyncio.Lock()
        self._loop_conn: sqlite3.Connection | None = None  # reads on the event loop
        self._slow: set[str] = set()  # statements that went over the inline budget once
        self._inline_deadline = 0.0  # thread CPU time at which the running inline read is stopped
        self.inline_fallbacks = 0
        # run_batch: batches waiting for the writer, and the task that hands them over (group commit).
        self._batches: list[tuple[list[tuple[str, tuple]], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.batch_groups = 0  # writer hops made by run_batch (a hop may carry several batches)

    async def connect(self) -> None:
        if self._writer is not None:
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._read_pool = ThreadPoolExecutor(self._readers, thread_name_prefix="sqlite-reader")
        loop = asyncio.get_running_loop()

        def open_writer() -> sqlite3.Connection:
            try:
                conn = _connect(self.path)
            except sqlite3.Error as exc:
                raise DatabaseUnavailable(f"cannot open {self.path}: {exc}") from exc
            sqlite_utils.Database(conn).enable_wal()
            return conn

        self._writer = await loop.run_in_executor(self._write_pool, open_writer)
        try:
            # Never waits for a lock: a busy read goes to a reader thread instead.
            self._loop_conn = _connect(self.path, busy_timeout_ms=0)
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"cannot open {self.path}: {exc}") from exc
        # Non-zero interrupts the statement. (SQLite counts VM steps per prepared statement
        # across runs, so the handler also fires in short reads: hence a clock, not a count.)
        self._loop_conn.set_progress_handler(lambda: time.thread_time() > self._inline_deadline, _CHECK_STEPS)

    async def close(self) -> None:
        if self._writer is None:
            return
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._write_pool, self._writer.close)
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        with self._read_conns_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
        self._write_pool.shutdown(wait=True)
        self._read_pool.shutdown(wait=True)
        self._writer = None
        self._write_pool = self._read_pool = None

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._read_conns_lock:
                self._read_conns.append(conn)
        return conn

    def _read(self, sql: str, params: Params) -> list[Row]:
        return _run(self._reader(), sql, params, True)

    def _read_inline(self, sql: str, params: Params) -> list[Row] | None:
        """Run a read on the event loop; None when it went over budget or was busy (the caller retries)."""
        self._inline_deadline = time.thread_time() + INLINE_READ_BUDGET_S
        try:
            cursor = self._loop_conn.execute(sql, tuple(params))
            return [dict(row) for row in cursor.fetchall()]
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if text == "interrupted":
                if len(self._slow) < _SLOW_STATEMENTS_MAX:
                    self._slow.add(sql)
            elif "locked" not in text and "busy" not in text:
                raise _translate(exc) from exc
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        self.inline_fallbacks += 1
        return None

    async def _on_writer(self, fn: Any, *args: Any) -> Any:
        if self._writer is None:
            raise DatabaseUnavailable("database is not connected")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._write_pool, fn, self._writer, *args)

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._write_lock:
            return await self._on_writer(_run, sql, params, False)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        if is_read(sql):
            if self._read_pool is None or self._loop_conn is None:
                raise DatabaseUnavailable("database is not connected")
            if sql not in self._slow:
                rows = self._read_inline(sql, params)
                if rows is not None:
                    return rows
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._read_pool, self._read, sql, params)
        async with self._write_lock:  # INSERT/UPDATE ... RETURNING
            return await self._on_writer(_run, sql, params, True)

    async def run_batch(self, statements: Sequence[tuple[str, Params]]) -> list[int]:
        """One writer hop for the whole batch. Batches that arrive while a hop is in flight wait
        for it and then go together in the next hop, one SQLite transaction with a savepoint per
        batch (group commit): each batch is still all or nothing, and done only once committed."""
        if self._writer is None:
            raise DatabaseUnavailable("database is not connected")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._batches.append(([(sql, tuple(params)) for sql, params in statements], future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_batches())
        return await future

    async def _flush_batches(self) -> None:
        while self._batches:
            group, self._batches = self._batches, []
            async with self._write_lock:
                self.batch_groups += 1
                try:
                    results = await self._on_writer(_run_group, [statements for statements, _ in group])
                except Exception as exc:  # BEGIN or COMMIT failed: nothing of the group was written
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
            for (_, future), result in zip(group, results, strict=True):
                if future.done():  # the caller was cancelled; its batch may still have committed
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        async with self._write_lock:
            await self._on_writer(_run, "BEGIN IMMEDIATE", (), False)
            try:
                yield _WriterExecutor(self)
            except BaseException:
                await self._on_writer(_run, "ROLLBACK", (), False)
                raise
            else:
                await self._on_writer(_run, "COMMIT", (), False)

    async def ping(self) -> bool:
        try:
            return await self.fetchval("SELECT 1") == 1
        except StoreError:
            return False

    async def table_names(self) -> list[str]:
        return await self._on_writer(lambda conn: sqlite_utils.Database(conn).table_names())
