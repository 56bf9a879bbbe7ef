"""SQLite backend: WAL, foreign keys on, one writer thread, short reads and writes on the event loop.

Reads never wait for a lock under WAL, and the API's reads are index lookups of a few
microseconds, far less than the ~30 us of CPU a hop to a thread costs (plus the GIL
hand-offs, which on a loaded core add milliseconds). So a read first runs on the event
loop with a CPU budget (half a millisecond); one that goes over it is interrupted and
re-run on a reader thread, and its statement goes straight to the threads from then on.

Small writes (``execute`` and ``run_batch``: a call's row and events) likewise commit on
the event loop when nothing else is writing: a transaction of a few inserts costs ~20-40 us,
the hop to the writer thread and back as much again. They never wait there: if another
connection holds the write lock (the writer thread, another process) or the write goes over
the CPU budget, it is rolled back and queued for the writer thread, which waits for locks
(busy timeout) and runs transactions. The loop's connection never checkpoints the WAL itself
(a checkpoint copies pages and fsyncs: milliseconds); the writer thread does, in the background.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from runtime.files import create_private_file, make_private_folders
from runtime.store.base import Database, Executor, Params, Row, is_read
from runtime.store.errors import DatabaseUnavailable, ForeignKeyViolation, StoreError, UniqueViolation

log = logging.getLogger("voicectl.store")

BUSY_TIMEOUT_MS = 5000
# CPU a read may use on the event loop before it is moved to a reader thread; the API's
# reads take a few to a few tens of microseconds. Checked every _CHECK_STEPS SQLite VM
# steps (~10-30 ns each). Thread CPU time, so a preempted process does not count.
INLINE_READ_BUDGET_S = 0.0005
_CHECK_STEPS = 1000
_SLOW_STATEMENTS_MAX = 1024
# Write transactions committed on the loop between two WAL checkpoints on the writer thread (the
# loop's connection has auto-checkpointing off: a checkpoint copies pages and fsyncs). One writes
# ~10 pages: about SQLite's own default of a checkpoint per 1,000 pages.
CHECKPOINT_EVERY = 100
# The WAL file is cut back to this after it starts over (it keeps its largest size otherwise).
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# A write transaction on the loop: its CPU budget (then it is rolled back and redone on the writer
# thread), and the most batches it carries (a call's batch takes ~50-100 us).
INLINE_WRITE_BUDGET_S = 0.001
_INLINE_GROUP_MAX = 4
# Statements ``execute`` may commit on the loop (DDL, PRAGMA or VACUUM keep to the writer thread).
_DML = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


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


def _retry_on_writer(exc: sqlite3.Error) -> bool:
    """An error of a write on the loop that the writer thread may not get: the CPU budget ran out
    (interrupted), or another connection holds the lock (the loop never waits for it)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc)
    return text == "interrupted" or "locked" in text or "busy" in text


def _settle(group: list[tuple[Any, asyncio.Future]], results: Sequence[Any]) -> None:
    """Each batch's future gets its result, or its error (an exception instance)."""
    for (_, future, *_), result in zip(group, results, strict=True):
        if future.done():  # the caller was cancelled
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


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
        self._inline_deadline = math.inf  # thread CPU time at which the running inline read or write is stopped (none yet)
        self.inline_fallbacks = 0
        # run_batch: batches waiting for the writer, and the task that hands them over (group commit);
        # each with whether it may still be tried on the loop (not if it was busy or too slow there).
        self._batches: list[tuple[list[tuple[str, tuple]], asyncio.Future, bool]] = []
        self._flusher: asyncio.Task | None = None
        self.batch_groups = 0  # writer hops made by run_batch (a hop may carry several batches)
        self.inline_writes = 0  # writes committed on the loop
        self.inline_write_fallbacks = 0  # writes that were busy or over budget there
        self._checkpoint: asyncio.Task | None = None
        # run_batch: batches to commit on the loop at the end of this loop iteration (group commit there).
        self._pending: list[tuple[list[tuple[str, tuple]], asyncio.Future]] = []
        self._commit_scheduled = False

    async def connect(self) -> None:
        if self._writer is not None:
            return
        make_private_folders(Path(self.path).parent)
        create_private_file(Path(self.path))  # SQLite gives the WAL and shared-memory files its mode
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._read_pool = ThreadPoolExecutor(self._readers, thread_name_prefix="sqlite-reader")
        loop = asyncio.get_running_loop()

        def open_writer() -> sqlite3.Connection:
            try:
                conn = _connect(self.path)
            except sqlite3.Error as exc:
                raise DatabaseUnavailable(f"cannot open {self.path}: {exc}") from exc
            sqlite_utils.Database(conn).enable_wal()
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
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
        self._loop_conn.execute("PRAGMA wal_autocheckpoint = 0")  # see CHECKPOINT_EVERY
        self._loop_conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")

    async def close(self) -> None:
        if self._writer is None:
            return
        while self._pending:
            self._commit_pending()
        for task in (self._flusher, self._checkpoint):
            if task is not None and not task.done():
                await asyncio.shield(task)
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

    def _writer_idle(self) -> bool:
        """No write of this process is queued for or running on the writer thread, so a write
        committed on the loop now goes after every earlier one."""
        return (not self._write_lock.locked() and not self._batches
                and (self._flusher is None or self._flusher.done()) and self._loop_conn is not None)

    def _loop_idle(self) -> bool:
        """And none is waiting to commit on the loop either."""
        return not self._pending and self._writer_idle()

    def _write_inline(self, batches: list[list[tuple[str, tuple]]],
                      fetch: bool = False) -> list[list[Any] | StoreError] | None:
        """Run batches on the event loop in one transaction, a savepoint each when several (as
        _run_group): per batch its row counts (``fetch``: its statements' rows) or its error. None
        when the database was busy or the CPU budget ran out: everything was rolled back, for the
        caller to hand to the writer thread."""
        conn = self._loop_conn
        self._inline_deadline = time.thread_time() + INLINE_WRITE_BUDGET_S
        single = len(batches) == 1
        results: list[list[Any] | StoreError] = []
        try:
            conn.execute("BEGIN IMMEDIATE")  # busy timeout 0: fails at once if another holds the lock
            for statements in batches:
                if not single:
                    conn.execute("SAVEPOINT batch")
                try:
                    if fetch:
                        out = [[dict(row) for row in conn.execute(sql, params).fetchall()]
                               for sql, params in statements]
                    else:
                        out = [conn.execute(sql, params).rowcount for sql, params in statements]
                except sqlite3.Error as exc:
                    if _retry_on_writer(exc):
                        raise
                    deadline = self._inline_deadline
                    self._inline_deadline = math.inf  # undoing must not be interrupted
                    conn.execute("ROLLBACK" if single else "ROLLBACK TO batch")
                    if single:
                        return [_translate(exc)]
                    conn.execute("RELEASE batch")
                    self._inline_deadline = deadline  # the batches after it keep to the budget
                    results.append(_translate(exc))
                else:
                    if not single:
                        conn.execute("RELEASE batch")
                    results.append(out)
            # Never interrupted: SQLite calls the progress handler once more after a statement has
            # run, so an "interrupted" COMMIT may have committed (the batches were written twice).
            self._inline_deadline = math.inf
            conn.execute("COMMIT")
        except BaseException as exc:
            self._inline_deadline = math.inf
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and _retry_on_writer(exc):
                self.inline_write_fallbacks += 1
                return None
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc) from exc
            raise
        self.inline_writes += 1
        if self.inline_writes % CHECKPOINT_EVERY == 0 and (self._checkpoint is None or self._checkpoint.done()):
            self._checkpoint = asyncio.get_running_loop().create_task(self._checkpoint_wal())
        return results

    def _write_one_inline(self, sql: str, params: Params, fetch: bool) -> Any:
        """One write statement on the loop when nothing else is writing: its row count or rows;
        None to run it on the writer thread instead."""
        if self._writer is None or not self._loop_idle() or not _DML.match(sql):
            return None
        results = self._write_inline([[(sql, tuple(params))]], fetch)
        if results is None:
            return None
        if isinstance(results[0], BaseException):
            raise results[0]
        return results[0][0]

    def _commit_inline(self, group: list[tuple[list[tuple[str, tuple]], asyncio.Future]]) -> list:
        """Commit queued batches on the loop, up to _INLINE_GROUP_MAX per transaction, and settle
        their futures; what was busy or over budget there is returned, in order, for the writer."""
        group = [item[:2] for item in group if not item[1].done()]  # a cancelled caller's batch is dropped
        for i in range(0, len(group), _INLINE_GROUP_MAX):
            chunk = group[i:i + _INLINE_GROUP_MAX]
            try:
                results = self._write_inline([statements for statements, _ in chunk])
            except Exception as exc:  # BEGIN or COMMIT failed: nothing of the chunk was written
                results = [exc] * len(chunk)
            if results is None:
                return [(statements, future, False) for statements, future in group[i:]]
            _settle(chunk, results)
        return []

    def _commit_pending(self) -> None:
        """End of the loop iteration in which the first of ``_pending`` arrived: commit them on the
        loop, _INLINE_GROUP_MAX at a time with the loop's other work in between. If the writer thread
        has the database meanwhile (a checkpoint, a transaction), or a batch cannot be committed
        here, the rest queue for the writer thread, ahead of anything queued for it since."""
        self._commit_scheduled = False
        if not self._pending:
            return
        if self._loop_conn is None:  # closed meanwhile
            pending, self._pending = self._pending, []
            _settle(pending, [DatabaseUnavailable("database is not connected")] * len(pending))
            return
        if self._write_lock.locked() or self._batches:
            self._to_writer([(statements, future, True) for statements, future in self._pending])
            self._pending = []
            return
        chunk, self._pending = self._pending[:_INLINE_GROUP_MAX], self._pending[_INLINE_GROUP_MAX:]
        left = self._commit_inline(chunk)
        if left:
            self._to_writer(left + [(statements, future, True) for statements, future in self._pending])
            self._pending = []
        elif self._pending:
            self._schedule_commit()

    def _schedule_commit(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_pending)

    def _to_writer(self, items: list[tuple[list[tuple[str, tuple]], asyncio.Future, bool]]) -> None:
        self._batches[:0] = items
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_batches())

    async def _checkpoint_wal(self) -> None:
        """Copy the WAL into the database on the writer thread (PASSIVE: never waits for a lock).
        The WAL starts over only after a checkpoint has copied all of it, and writes on the loop go
        on during this one (without more, it grew to hundreds of MB): so a second pass, holding
        the write lock (writes of this process queue meanwhile), copies what they added."""
        try:
            await self._on_writer(_run, "PRAGMA wal_checkpoint(PASSIVE)", (), True)
            async with self._write_lock:
                await self._on_writer(_run, "PRAGMA wal_checkpoint(PASSIVE)", (), True)
        except Exception:  # the next one retries; the WAL only grows meanwhile
            log.warning("WAL checkpoint failed", exc_info=True)

    async def _on_writer(self, fn: Any, *args: Any) -> Any:
        if self._writer is None:
            raise DatabaseUnavailable("database is not connected")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._write_pool, fn, self._writer, *args)

    async def execute(self, sql: str, params: Params = ()) -> int:
        count = self._write_one_inline(sql, params, False)
        if count is not None:
            return count
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
        rows = self._write_one_inline(sql, params, True)  # INSERT/UPDATE ... RETURNING
        if rows is not None:
            return rows
        async with self._write_lock:
            return await self._on_writer(_run, sql, params, True)

    async def run_batch(self, statements: Sequence[tuple[str, Params]]) -> list[int]:
        """All or nothing, done once committed. Batches that arrive in one loop iteration commit
        together at its end, on the loop, in one transaction with a savepoint each (group
        commit: a call's batch writes ~10 pages, and consecutive ones share half of them). While
        the writer thread is busy they queue for it instead and go there together in its next
        hop (or on the loop, if that is free again by then)."""
        if self._writer is None:
            raise DatabaseUnavailable("database is not connected")
        batch = [(sql, tuple(params)) for sql, params in statements]
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._writer_idle():
            self._pending.append((batch, future))
            self._schedule_commit()
        else:
            self._batches.append((batch, future, True))
            if self._flusher is None or self._flusher.done():
                self._flusher = loop.create_task(self._flush_batches())
        return await future

    async def _flush_batches(self) -> None:
        while self._batches:
            async with self._write_lock:
                group, self._batches = self._batches, []
                # Queued only because the writer thread was busy: the loop may take them now.
                if self._loop_conn is not None and all(item[2] for item in group):
                    group = self._commit_inline(group)
                    if not group:
                        continue
                self.batch_groups += 1
                try:
                    results = await self._on_writer(_run_group, [item[0] for item in group])
                except Exception as exc:  # BEGIN or COMMIT failed: nothing of the group was written
                    results = [exc] * len(group)
            _settle(group, results)  # a cancelled caller's batch may still have committed

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
