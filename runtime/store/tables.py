"""Generic tenant-scoped table access: the only place that builds CRUD SQL.

Column names come from the TableSpec in code, never from input, so the
statements built here are safe; values always travel as parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from runtime.store.base import Executor, Row


class _AllTenants:
    def __repr__(self) -> str:
        return "ALL_TENANTS"


# Passed as tenant_id by admin paths that may see every tenant; None is never accepted,
# so a forgotten tenant id fails loudly instead of widening the query.
ALL_TENANTS: Final = _AllTenants()
TenantScope = str | _AllTenants


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[str, ...]
    json_columns: frozenset[str] = field(default_factory=frozenset)
    bool_columns: frozenset[str] = field(default_factory=frozenset)
    tenant_column: str | None = "tenant_id"
    order_by: str = "created_at, id"
    column_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_set", frozenset(self.columns))  # O(1) checks of row keys


def _encode(spec: TableSpec, row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    columns, json_columns, bool_columns = spec.column_set, spec.json_columns, spec.bool_columns
    for key, value in row.items():
        if key not in columns:
            raise KeyError(f"{spec.name} has no column {key}")
        if value is not None:
            if key in json_columns:
                value = orjson.dumps(value).decode()
            elif key in bool_columns:
                value = bool(value)
        out[key] = value
    return out


def encode(spec: TableSpec, row: dict[str, Any]) -> dict[str, Any]:
    """A row's values as the database takes them (JSON as text, bools as bools)."""
    return _encode(spec, row)


# INSERT statements by table and column list: a call's row and events are inserted with the same
# keys every time. The keys come from code (checked against the spec), so the set stays small.
_INSERTS: dict[tuple[str, tuple[str, ...]], str] = {}
_INSERTS_MAX = 1024


def _insert_sql(name: str, keys: tuple[str, ...]) -> str:
    sql = _INSERTS.get((name, keys))
    if sql is None:
        sql = f"INSERT INTO {name} ({', '.join(keys)}) VALUES ({', '.join('?' for _ in keys)})"
        if len(_INSERTS) < _INSERTS_MAX:
            _INSERTS[(name, keys)] = sql
    return sql


def decode(spec: TableSpec, row: Row) -> Row:
    for key in spec.json_columns:
        value = row.get(key)
        if isinstance(value, (str, bytes)):
            row[key] = orjson.loads(value)
    for key in spec.bool_columns:
        if key in row and row[key] is not None:
            row[key] = bool(row[key])
    return row


# Writes through Table per table name, in this process: a cache of a table's rows can tell that
# this process changed the table since it read it. (Other processes, e.g. the CLI: see the cache's TTL.)
WRITES: dict[str, int] = {}


def _wrote(name: str) -> None:
    WRITES[name] = WRITES.get(name, 0) + 1


def wrote(name: str) -> None:
    """Count a write to ``name`` made with SQL of its own (not through Table): caches drop it."""
    _wrote(name)


def committed(tables: object) -> None:
    """Count again, once a transaction or write batch has committed, the writes of the tables it
    used: a cache filled between a statement and its commit (old rows, new count) is dropped too."""
    for value in vars(tables).values():
        if isinstance(value, Table):
            _wrote(value.spec.name)


class Table:
    def __init__(self, spec: TableSpec, db: Executor) -> None:
        self.spec = spec
        self.db = db

    def _scope(self, tenant_id: TenantScope, where: list[str], params: list[Any]) -> None:
        if tenant_id is ALL_TENANTS:
            return
        if not isinstance(tenant_id, str):
            raise TypeError(f"{self.spec.name}: tenant_id must be a tenant id or ALL_TENANTS")
        column = self.spec.tenant_column or "id"
        where.append(f"{column} = ?")
        params.append(tenant_id)

    def on(self, executor: Executor) -> Table:
        """The same table bound to a transaction."""
        return Table(self.spec, executor)

    async def insert(self, row: dict[str, Any]) -> Row:
        values = _encode(self.spec, row)
        await self.db.execute(_insert_sql(self.spec.name, tuple(values)), list(values.values()))
        _wrote(self.spec.name)
        return decode(self.spec, dict(values))

    async def get(self, id_: str, *, tenant_id: TenantScope) -> Row | None:
        where, params = ["id = ?"], [id_]
        self._scope(tenant_id, where, params)
        row = await self.db.fetchone(f"SELECT * FROM {self.spec.name} WHERE {' AND '.join(where)}", params)
        return decode(self.spec, row) if row else None

    async def find(self, *, tenant_id: TenantScope, **equals: Any) -> Row | None:
        rows, _ = await self.list(tenant_id=tenant_id, equals=equals, limit=1, offset=0, count=False)
        return rows[0] if rows else None

    async def list(
        self,
        *,
        tenant_id: TenantScope,
        equals: dict[str, Any] | None = None,
        limit: int = 50,
        offset: int = 0,
        descending: bool = False,
        count: bool = True,
    ) -> tuple[list[Row], int]:
        where: list[str] = []
        params: list[Any] = []
        self._scope(tenant_id, where, params)
        for key, value in (equals or {}).items():
            if key not in self.spec.column_set:
                raise KeyError(f"{self.spec.name} has no column {key}")
            if value is None:
                where.append(f"{key} IS NULL")
            elif isinstance(value, tuple):  # any of these values
                where.append(f"{key} IN ({', '.join('?' for _ in value)})")
                params.extend(_encode(self.spec, {key: v})[key] for v in value)
            else:
                where.append(f"{key} = ?")
                params.append(_encode(self.spec, {key: value})[key])
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        order = self.spec.order_by
        if descending:
            order = ", ".join(f"{part.strip()} DESC" for part in order.split(","))
        rows = await self.db.fetchall(
            f"SELECT * FROM {self.spec.name}{clause} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        total = len(rows)
        if count and (offset or len(rows) >= limit):
            total = int(await self.db.fetchval(f"SELECT COUNT(*) AS n FROM {self.spec.name}{clause}", params))
        elif count:
            total = offset + len(rows)
        return [decode(self.spec, r) for r in rows], total

    async def update(self, id_: str, changes: dict[str, Any], *, tenant_id: TenantScope) -> Row | None:
        if not changes:
            return await self.get(id_, tenant_id=tenant_id)
        values = _encode(self.spec, changes)
        sets = ", ".join(f"{k} = ?" for k in values)
        where, params = ["id = ?"], [id_]
        self._scope(tenant_id, where, params)
        row = await self.db.fetchone(
            f"UPDATE {self.spec.name} SET {sets} WHERE {' AND '.join(where)} RETURNING *",
            [*values.values(), *params],
        )
        _wrote(self.spec.name)
        return decode(self.spec, row) if row else None

    async def update_if(self, id_: str, changes: dict[str, Any], *, tenant_id: TenantScope,
                        status_in: tuple[str, ...]) -> Row | None:
        """``update``, only while the row's ``status`` is one of ``status_in`` (checked on the row
        as it is written, so two writers cannot both move it on); None when it is not."""
        values = _encode(self.spec, changes)
        sets = ", ".join(f"{k} = ?" for k in values)
        where, params = ["id = ?"], [id_]
        self._scope(tenant_id, where, params)
        where.append(f"status IN ({', '.join('?' for _ in status_in)})")
        params.extend(status_in)
        row = await self.db.fetchone(
            f"UPDATE {self.spec.name} SET {sets} WHERE {' AND '.join(where)} RETURNING *",
            [*values.values(), *params],
        )
        _wrote(self.spec.name)
        return decode(self.spec, row) if row else None

    async def set(self, id_: str, changes: dict[str, Any], *, tenant_id: TenantScope) -> None:
        """``update`` without reading the row back (no RETURNING): usable in a WriteBatch."""
        values = _encode(self.spec, changes)
        sets = ", ".join(f"{k} = ?" for k in values)
        where, params = ["id = ?"], [id_]
        self._scope(tenant_id, where, params)
        await self.db.execute(f"UPDATE {self.spec.name} SET {sets} WHERE {' AND '.join(where)}",
                              [*values.values(), *params])
        _wrote(self.spec.name)

    async def delete(self, id_: str, *, tenant_id: TenantScope) -> bool:
        where, params = ["id = ?"], [id_]
        self._scope(tenant_id, where, params)
        try:
            return await self.db.execute(f"DELETE FROM {self.spec.name} WHERE {' AND '.join(where)}", params) > 0
        finally:
            _wrote(self.spec.name)
