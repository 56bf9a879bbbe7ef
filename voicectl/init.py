"""voicectl init: write a config, create and migrate the database, the master key and the first admin key."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from voicectl.common import (
    EXIT_CONFLICT,
    JsonOpt,
    cli_invocation,
    config_path,
    errors,
    fail,
    open_plane,
    print_json,
    redact_url,
    run_async,
    say,
    show_once,
)

DEFAULT_DATABASE = "sqlite:///voicectl.db"

CONFIG_TEMPLATE = """\
# voicectl configuration, written by `voicectl init`.
# Every key with its default and a comment: config.example.yaml.
# Check a change with `voicectl config check`. Relative paths resolve against
# this file's folder; VOICECTL_<SECTION>__<KEY> environment variables override.

server:
  host: 127.0.0.1
  port: 8080

database:
  url: {database}

secrets:
  # auto: the OS keyring if there is one, else an encrypted file keyed by the master key
  backend: {backend}
  master_key_file: master.key
"""


class Backend(StrEnum):
    auto = "auto"
    keyring = "keyring"
    cryptfile = "cryptfile"


ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Config file to write (default: $VOICECTL_CONFIG or ./config.yaml).",
                 show_default=False),
]


def _yaml_scalar(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string is a valid YAML scalar


def initialise(
    path: Path, *, force: bool = False, database: str = DEFAULT_DATABASE, backend: str = "auto"
) -> dict[str, Any]:
    """Write the config at ``path`` and set everything up; returns what was made (with the admin key)."""
    from runtime.config import load_settings
    from runtime.files import make_private_folders, private_opener
    from runtime.secrets import write_master_key

    existed = path.exists()
    if existed and not force:
        fail(f"{path} already exists; not overwriting it (use --force to replace it, or --config PATH "
             "to write another file)", EXIT_CONFLICT)
    previous = path.read_bytes() if existed else None
    make_private_folders(path.parent)
    with open(path, "w", opener=private_opener) as handle:  # a database URL may carry a password
        handle.write(CONFIG_TEMPLATE.format(database=_yaml_scalar(database), backend=backend))
    try:
        settings = load_settings(path)
        write_master_key(settings.master_key_path)

        async def setup() -> dict[str, Any]:
            from runtime.control.schemas import ApiKeyCreate
            from runtime.store import migrate as migrations

            plane = await open_plane(settings)
            try:
                record, key = await plane.keys.create(ApiKeyCreate(scope="admin", name="initial admin key"))
                status = await migrations.status(plane.store.db)
                return {
                    "admin_key": key,
                    "admin_key_id": record.id,
                    "config": str(path.resolve()),
                    "database": redact_url(settings.database_url),
                    "schema_version": status.current,
                    "master_key_file": str(settings.master_key_path),
                    "secrets": plane.secrets.description,
                }
            finally:
                await plane.close()

        return run_async(setup())
    except BaseException:
        # Leave no half-made config behind: a second `init` would refuse to run.
        if previous is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(previous)
        raise


def init(
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing config file.")] = False,
    database: Annotated[
        str, typer.Option("--database", help="Database URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DB.")
    ] = DEFAULT_DATABASE,
    secrets_backend: Annotated[
        Backend, typer.Option("--secrets-backend", help="Where credential secrets live.")
    ] = Backend.auto,
    as_json: JsonOpt = False,
) -> None:
    """Create config.yaml, the database, the master key and the first admin key (printed once)."""
    with errors():
        data = initialise(config_path(config), force=force, database=database, backend=secrets_backend.value)
    if as_json:
        print_json(data)
        return
    say(f"wrote {data['config']}")
    say(f"database {data['database']} (schema version {data['schema_version']})")
    say(f"master key {data['master_key_file']} (mode 0600): back it up; stored secrets need it")
    say(f"secrets in {data['secrets']}")
    show_once("admin key", data["admin_key"])
    say(f"next: {cli_invocation(config)} tenant create NAME")
