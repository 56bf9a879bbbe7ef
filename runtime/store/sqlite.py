"""SQLite backend: WAL, foreign keys on, one writer thread, reads on a small thread pool.

Every call leaves the event loop: writes queue on a single thread (SQLite has one
writer anyway), reads run on reader threads with their own connections, which WAL
lets proceed while the writer commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from runtime.store.base import Database, Executor, Params, Row, is_read
from runtime.store.errors import DatabaseUnavailable, ForeignKeyViolation, StoreError, UniqueViolation

BUSY_TIMEOUT_MS = 5000


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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

    async def close(self) -> None:
        if self._writer is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._write_pool, self._writer.close)
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
            if self._read_pool is None:
                raise DatabaseUnavailable("database is not connected")
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._read_pool, self._read, sql, params)
        async with self._write_lock:  # INSERT/UPDATE ... RETURNING
            return await self._on_writer(_run, sql, params, True)

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
