"""Apply the migrations in schema.py, each in its own transaction, recorded in schema_migrations."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.ids import now_iso
from runtime.store.base import Database
from runtime.store.schema import LATEST_VERSION, MIGRATIONS


@dataclass(frozen=True)
class MigrationStatus:
    current: int
    latest: int
    # Versions not applied, below ``current`` too: branches merged later may bring a lower number
    # than one already applied (``migrate`` applies each missing one, whatever its number).
    missing: tuple[int, ...] = ()

    @property
    def up_to_date(self) -> bool:
        return self.current >= self.latest and not self.missing


# Any constant: serialises the bookkeeping-table creation across processes on PostgreSQL.
_PG_LOCK_KEY = 0x766F696365  # "voice"
_CREATE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
)


async def _ensure_table(db: Database) -> None:
    if db.dialect == "postgres":
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type (a unique violation).
        async with db.transaction() as tx:
            await tx.fetchval("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK_KEY,))
            await tx.execute(_CREATE)
        return
    await db.execute(_CREATE)


async def current_version(db: Database) -> int:
    await _ensure_table(db)
    return int(await db.fetchval("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations") or 0)


async def status(db: Database) -> MigrationStatus:
    await _ensure_table(db)
    applied = {int(r["version"]) for r in await db.fetchall("SELECT version FROM schema_migrations")}
    missing = tuple(m.version for m in MIGRATIONS if m.version not in applied)
    return MigrationStatus(max(applied, default=0), LATEST_VERSION, missing)


async def migrate(db: Database) -> list[int]:
    """Apply what is missing; return the versions applied. Safe to run concurrently."""
    await _ensure_table(db)
    applied: list[int] = []
    for migration in MIGRATIONS:
        async with db.transaction() as tx:
            # Re-check inside the transaction so two processes never apply one twice.
            done = await tx.fetchval("SELECT version FROM schema_migrations WHERE version = ?", (migration.version,))
            if done is not None:
                continue
            if db.dialect == "postgres":
                await tx.execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
                if await tx.fetchval(
                    "SELECT version FROM schema_migrations WHERE version = ?", (migration.version,)
                ) is not None:
                    continue
            for statement in migration.render(db.dialect):
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, now_iso()),
            )
            applied.append(migration.version)
    return applied
