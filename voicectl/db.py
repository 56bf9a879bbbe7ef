"""voicectl db migrate|status: the database schema (forward-only, versioned migrations)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from voicectl.common import (
    JsonOpt,
    errors,
    load_settings,
    new_app,
    print_details,
    print_json,
    redact_url,
    run_async,
    say,
)

if TYPE_CHECKING:
    from runtime.config import Settings
    from runtime.store.base import Database

T = TypeVar("T")

app = new_app("Database schema: apply migrations, show their status.")


async def with_database(settings: Settings, fn: Callable[[Database], Awaitable[T]]) -> T:
    from runtime.store.base import open_database

    db = open_database(
        settings.database_url,
        readers=settings.database.sqlite_readers,
        pool_min=settings.database.pool_min,
        pool_max=min(settings.database.pool_max, 2),
    )
    await db.connect()
    try:
        return await fn(db)
    finally:
        await db.close()


def _status_dict(settings: Settings, status: Any) -> dict[str, Any]:
    from runtime.store.schema import MIGRATIONS

    return {
        "database": redact_url(settings.database_url),
        "current": status.current,
        "latest": status.latest,
        "up_to_date": status.up_to_date,
        "pending": [{"version": m.version, "name": m.name} for m in MIGRATIONS if m.version in status.missing],
    }


@app.command("migrate")
def migrate(as_json: JsonOpt = False) -> None:
    """Apply the migrations the database lacks (safe to repeat; `serve` does it too)."""
    with errors():
        settings = load_settings()

        async def go(db: Database) -> dict[str, Any]:
            from runtime.store import migrate as migrations

            applied = await migrations.migrate(db)
            return {"applied": applied, **_status_dict(settings, await migrations.status(db))}

        data = run_async(with_database(settings, go))
    if as_json:
        print_json(data)
        return
    if data["applied"]:
        say(f"applied migration(s) {', '.join(str(v) for v in data['applied'])}; "
            f"schema is at version {data['current']}")
    else:
        say(f"nothing to do: schema is at version {data['current']} (latest {data['latest']})")


@app.command("status")
def status(
    as_json: JsonOpt = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when migrations are pending.")] = False,
) -> None:
    """Show the schema version and pending migrations (applies nothing)."""
    with errors():
        settings = load_settings()

        async def go(db: Database) -> dict[str, Any]:
            from runtime.store import migrate as migrations

            return _status_dict(settings, await migrations.status(db))

        data = run_async(with_database(settings, go))
    if as_json:
        print_json(data)
    else:
        shown = dict(data)
        shown["pending"] = ", ".join(f"{p['version']} {p['name']}" for p in data["pending"]) or "none"
        print_details(shown)
    if check and not data["up_to_date"]:
        raise typer.Exit(1)
