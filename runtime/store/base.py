"""The one interface both backends implement: run portable SQL, get dict rows."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

Row = dict[str, Any]
Params = Sequence[Any]

_READ = re.compile(r"^\s*(SELECT|WITH)\b", re.IGNORECASE)


def is_read(sql: str) -> bool:
    return bool(_READ.match(sql))


class Executor(ABC):
    """Runs SQL written with ``?`` placeholders; a transaction is also an Executor."""

    dialect: str

    @abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; return the number of rows it changed."""

    @abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else next(iter(row.values()))


class Database(Executor):
    url: str

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Executor]:
        """All statements on the yielded executor commit together or not at all."""

    async def run_batch(self, statements: Sequence[tuple[str, Params]]) -> list[int]:
        """Run write statements as one transaction, all or nothing; their changed-row counts.

        For a few small writes known up front (a call row, an event and its outbox rows): the
        SQLite backend runs the whole batch in one hop to its writer thread (and merges batches
        that queue up meanwhile into one SQLite transaction), where ``transaction()`` costs a
        hop per statement. Here (PostgreSQL): one transaction on one connection."""
        async with self.transaction() as tx:
            return [await tx.execute(sql, params) for sql, params in statements]

    @abstractmethod
    async def ping(self) -> bool: ...

    async def table_names(self) -> list[str]:
        raise NotImplementedError


def open_database(url: str, *, readers: int = 4, pool_min: int = 1, pool_max: int = 10) -> Database:
    """Pick the backend from the URL scheme; nothing connects until ``connect()``."""
    if url.startswith("sqlite:///"):
        from runtime.store.sqlite import SQLiteDatabase

        return SQLiteDatabase(url, readers=readers)
    if url.startswith(("postgresql://", "postgres://")):
        from runtime.store.postgres import PostgresDatabase

        return PostgresDatabase(url, pool_min=pool_min, pool_max=pool_max)
    raise ValueError(f"unsupported database url: {url}")
