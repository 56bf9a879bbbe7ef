"""PostgreSQL backend on an asyncpg pool.

SQL arrives with ``?`` placeholders and is rewritten to ``$n`` once per distinct
statement. A ``schema`` query parameter in the URL (``...?schema=tenant_a``) sets
the search_path, which is how tests and side-by-side installs share one database.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import asyncpg

from runtime.store.base import Database, Executor, Params, Row
from runtime.store.errors import DatabaseUnavailable, ForeignKeyViolation, StoreError, UniqueViolation

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@lru_cache(maxsize=1024)
def to_dollar(sql: str) -> str:
    """``?`` -> ``$1, $2, ...`` (our SQL never carries a literal question mark)."""
    parts = sql.split("?")
    out = [parts[0]]
    for index, part in enumerate(parts[1:], start=1):
        out.append(f"${index}{part}")
    return "".join(out)


def _translate(exc: Exception) -> StoreError:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return UniqueViolation(getattr(exc, "constraint_name", None) or str(exc))
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return ForeignKeyViolation(str(exc))
    if isinstance(exc, (OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError)):
        return DatabaseUnavailable(str(exc))
    return StoreError(str(exc))


def split_schema(url: str) -> tuple[str, str | None]:
    """Remove our ``schema`` parameter from the URL (asyncpg does not know it)."""
    parsed = urlparse(url)
    query = parse_qsl(parsed.query)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name in database url: {schema!r}")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunparse(parsed._replace(query=rest)), schema


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset without asyncpg's default reset query.

    By default every release runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL``: a second round trip for each of our one-statement acquires (about 10 % of
    the server's CPU and a third of Postgres's under API load, bench/api.py). Our statements
    leave no session state (no SET, LISTEN, cursors or session-level advisory locks; the
    migration lock is transaction-scoped), and asyncpg still rolls back an open transaction
    before calling this. Code that adds session state must use a connection of its own.
    """


def _rowcount(status: str) -> int:
    # asyncpg returns the command tag, e.g. "UPDATE 3" or "INSERT 0 1".
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _ConnExecutor(Executor):
    dialect = "postgres"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            return _rowcount(await self._conn.execute(to_dollar(sql), *params))
        except (asyncpg.PostgresError, OSError) as exc:
            raise _translate(exc) from exc

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            return [dict(r) for r in await self._conn.fetch(to_dollar(sql), *params)]
        except (asyncpg.PostgresError, OSError) as exc:
            raise _translate(exc) from exc


class PostgresDatabase(Database):
    dialect = "postgres"

    def __init__(self, url: str, *, pool_min: int = 1, pool_max: int = 10) -> None:
        self.url = url
        self._dsn, self.schema = split_schema(url)
        self._pool_min = pool_min
        self._pool_max = max(pool_min, pool_max)
        self._pool: asyncpg.Pool | None = None

    async def connect(self) -> None:
        if self._pool is not None:
            return
        settings: dict[str, Any] = {}
        try:
            if self.schema:
                conn = await asyncpg.connect(self._dsn)
                try:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
                settings["search_path"] = self.schema
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=self._pool_min, max_size=self._pool_max, server_settings=settings,
                reset=_keep_session,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("database is not connected")
        return self._pool

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._require_pool().acquire() as conn:
            return await _ConnExecutor(conn).execute(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._require_pool().acquire() as conn:
            return await _ConnExecutor(conn).fetchall(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        async with self._require_pool().acquire() as conn, conn.transaction():
            yield _ConnExecutor(conn)

    async def ping(self) -> bool:
        try:
            return await self.fetchval("SELECT 1") == 1
        except StoreError:
            return False

    async def table_names(self) -> list[str]:
        rows = await self.fetchall(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "ORDER BY table_name"
        )
        return [r["table_name"] for r in rows]

    async def drop_schema(self) -> None:
        """Tests: remove this database's schema and everything in it."""
        if not self.schema:
            raise StoreError("drop_schema needs a schema in the url")
        await self.close()
        conn = await asyncpg.connect(self._dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()
