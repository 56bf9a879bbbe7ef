"""Shared plumbing of the commands: settings, the control plane, output, error mapping.

Import cost matters here (every command module imports this one): only typer and
the standard library at module level. runtime.*, pydantic and rich are imported
where they are used.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from runtime.config import Settings
    from runtime.control.plane import ControlPlane

T = TypeVar("T")

# Exit codes (README.md lists them all). ControlError subclasses carry their own (2 bad input,
# 3 not found, 4 conflict, 7 unauthorized); the rest are mapped here.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 4
EXIT_CONFIG = 5
EXIT_SECRETS = 5
EXIT_DATABASE = 6
EXIT_RUNTIME_UNREACHABLE = 8  # `call`, `events tail`: the runtime was unreachable or refused
EXIT_CANNOT_LISTEN = 10  # `serve`: the host/port cannot be bound (in use, not ours, not permitted)
EXIT_INTERRUPTED = 130


class _State:
    """Global options of the root command (set by its callback on every invocation)."""

    config: str | None = None


state = _State()

# Option types shared by the command modules.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id or name.", show_default=False, metavar="TENANT")]
MaybeTenantOpt = Annotated[
    str | None,
    typer.Option("--tenant", "-t", help="Tenant id or name; found from the id when left out.", show_default=False,
                 metavar="TENANT"),
]
LimitOpt = Annotated[int, typer.Option("--limit", help="Most items to show (1-200).")]
OffsetOpt = Annotated[int, typer.Option("--offset", help="Items to skip.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def provider_option(modality: str, flag: str, what: str) -> Any:
    """An option naming a provider of ``modality``: its choices and help come from the provider
    registry (a name-only module: cheap to import), so a misspelt name is refused (exit 2)."""
    from runtime.providers import registry

    names = registry.names(modality)

    def check(value: str | None) -> str | None:
        if value is not None and value not in names:
            raise typer.BadParameter(f"unknown {modality} provider {value!r}; known: {', '.join(names)}")
        return value

    return typer.Option(flag, help=f"{what}: {', '.join(names)}.", callback=check, metavar="|".join(names),
                        show_default=False)


def new_app(help: str) -> typer.Typer:
    """A command group. Help is plain click formatting (rich_markup_mode=None): typer's rich help
    imports rich, rich.markdown and markdown-it (~60-80 ms), which would double `--help` time."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None,
                       context_settings={"help_option_names": ["-h", "--help"]})


# Errors


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _instance_of(exc: BaseException, module: str, name: str) -> bool:
    """isinstance against a class of a module only if that module was imported at all
    (an exception of a module never imported cannot be raised, so nothing is imported here)."""
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(exc, cls)


def format_validation_error(exc: Any) -> str:
    """A pydantic ValidationError as ``field: message`` lines."""
    lines = []
    for item in exc.errors():
        loc = ".".join(str(part) for part in item.get("loc", ()))
        msg = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        if item.get("type") == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "\n  ".join(lines) if lines else str(exc)


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) for an exception raised by a command."""
    if _instance_of(exc, "runtime.control.errors", "ControlError"):
        message = exc.message  # type: ignore[attr-defined]
        details = exc.details  # type: ignore[attr-defined]
        if isinstance(details, dict) and isinstance(details.get("errors"), str):
            message = f"{message}: {details['errors']}"
        return exc.exit_code, message  # type: ignore[attr-defined]
    if _instance_of(exc, "runtime.config", "ConfigError"):
        return EXIT_CONFIG, str(exc)
    if _instance_of(exc, "runtime.secrets", "SecretsError"):
        return EXIT_SECRETS, f"secrets: {exc}"
    if _instance_of(exc, "runtime.store.errors", "DatabaseUnavailable"):
        return EXIT_DATABASE, f"database unavailable: {exc}"
    if _instance_of(exc, "runtime.store.errors", "UniqueViolation"):
        return EXIT_CONFLICT, f"already exists: {exc}"
    if _instance_of(exc, "runtime.store.errors", "StoreError"):
        return EXIT_DATABASE, f"database error: {exc}"
    if _instance_of(exc, "pydantic_core", "ValidationError"):
        return EXIT_USAGE, format_validation_error(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        text = str(exc.strerror or exc)
        return EXIT_ERROR, (text[6:] if text.lower().startswith("error ") else text) + where
    return EXIT_ERROR, f"unexpected {type(exc).__name__}: {exc}"


@contextmanager
def errors() -> Iterator[None]:
    """Turn every error into ``error: ...`` on stderr and an exit code; never a traceback."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - mapped to a message and an exit code
        if any(cls.__name__ == "ClickException" for cls in type(exc).__mro__):
            raise  # usage errors: click prints them with the usage line (exit 2)
        code, message = describe(exc)
        fail(message, code)


# Settings and the control plane


def config_path(explicit: str | None = None) -> Any:
    from runtime.config import find_config_path

    return find_config_path(explicit or state.config)


def load_settings(explicit: str | None = None, *, must_exist: bool = True) -> Settings:
    from runtime.config import load_settings as _load

    return _load(explicit or state.config, must_exist=must_exist)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio

    return asyncio.run(coro)


async def open_plane(settings: Settings, *, migrate: bool = True) -> ControlPlane:
    from runtime.control.plane import ControlPlane

    return await ControlPlane.open(settings, migrate=migrate)


def run(fn: Callable[[ControlPlane], Awaitable[T]], *, settings: Settings | None = None) -> T:
    """Load the settings, open the control plane (migrating), run ``fn`` in it, map errors."""
    with errors():
        loaded = settings if settings is not None else load_settings()

        async def main() -> T:
            plane = await open_plane(loaded)
            try:
                return await fn(plane)
            finally:
                await plane.close()

        return run_async(main())


# Lookups shared by the nouns


def page(limit: int, offset: int) -> Any:
    from runtime.control.pagination import PageRequest

    return PageRequest.parse(limit, offset)


async def resolve_tenant(plane: ControlPlane, ref: str) -> str:
    return (await plane.tenants.resolve(ref)).id


async def owning_tenant(
    plane: ControlPlane, tenant: str | None, table: str, ref: str, what: str, *, named: bool = False
) -> str:
    """The tenant id from --tenant, else from the row with id ``ref`` (ids are unique across tenants).

    ``named``: the noun can also be given by name, which needs --tenant (names are unique per tenant).
    """
    if tenant:
        return await resolve_tenant(plane, tenant)
    from runtime.control.errors import NotFound
    from runtime.store.tables import ALL_TENANTS

    row = await getattr(plane.store, table).get(ref, tenant_id=ALL_TENANTS)
    if row is None:
        hint = " (to find it by name, pass --tenant)" if named else ""
        raise NotFound(f"no {what} with id {ref!r}{hint}", {what.replace(" ", "_"): ref})
    return row["tenant_id"]


async def resolve_voice_profile(plane: ControlPlane, tenant_id: str, ref: str) -> Any:
    """A voice profile by id or by name within the tenant."""
    return await plane.voices.resolve(tenant_id, ref)


def parse_pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """``KEY=VALUE`` options into a dict."""
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{option} expects KEY=VALUE, got {item!r}", EXIT_USAGE)
        out[key.strip()] = value
    return out


def redact_url(url: str) -> str:
    """A database URL without its password."""
    from urllib.parse import urlparse, urlunparse

    parsed = urlparse(url)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
        return urlunparse(parsed._replace(netloc=netloc))
    return url


# Output


def print_json(data: Any) -> None:
    """Plain JSON on stdout (never through rich, so scripts can parse it)."""
    import json

    print(json.dumps(data, indent=2, default=str))


def say(message: str, *, err: bool = False) -> None:
    """A plain line for humans (no markup interpretation of user data)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(message + "\n")
    stream.flush()


def when(value: str | None) -> str:
    """2024-05-01T12:00:00.123456Z -> 2024-05-01 12:00:00."""
    if not value:
        return "-"
    return value[:19].replace("T", " ")


def cell(value: Any) -> Any:
    from rich.text import Text

    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, (list, tuple)):
        return Text(", ".join(str(v) for v in value) or "-")
    if isinstance(value, dict):
        import json

        return Text(json.dumps(value, default=str) if value else "-")
    return Text(str(value))


# Columns that are never wrapped (ids and timestamps stay copyable).
_NO_WRAP = {"id", "created", "updated", "started", "time", "last used", "revoked", "prefix", "last4", "number"}


def _console() -> Any:
    """Rich console on stdout; when stdout is not a terminal, wide enough that rows do not fold."""
    import os

    from rich.console import Console

    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 200
    return Console(highlight=False, width=width)


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    total: int | None = None,
    offset: int = 0,
    empty: str = "nothing here yet",
) -> None:
    from rich.table import Table

    rows = list(rows)
    if not rows:
        say(f"{title + ': ' if title else ''}{empty}")
        return
    from rich import box

    table = Table(title=title, header_style="bold", title_justify="left", box=box.SIMPLE_HEAD)
    for name in columns:
        table.add_column(name, overflow="fold", no_wrap=name in _NO_WRAP)
    for row in rows:
        table.add_row(*(cell(v) for v in row))
    _console().print(table)
    if total is not None and total > len(rows):
        say(f"showing {offset + 1}-{offset + len(rows)} of {total} (use --offset/--limit)")


def print_page(result: Mapping[str, Any], as_json: bool, columns: Sequence[str],
               rows: Iterable[Sequence[Any]], **table: Any) -> None:
    """A list result: the JSON envelope for scripts, else a table."""
    if as_json:
        print_json(result)
        return
    print_table(columns, rows, **table)


def show_record(data: Mapping[str, Any], as_json: bool, headline: str | None = None,
                details: Mapping[str, Any] | None = None) -> None:
    """One record: JSON for scripts, else an optional headline and its fields."""
    if as_json:
        print_json(data)
        return
    if headline:
        say(headline)
    print_details(data if details is None else details)


def print_details(data: Mapping[str, Any], *, title: str | None = None) -> None:
    """Key/value pairs as a two-column table."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2, 0, 0))
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        if key.endswith("_at") and isinstance(value, str):
            value = when(value)
        table.add_row(key, cell(value))
    _console().print(table)


def show_once(label: str, value: str) -> None:
    """A secret that is printed exactly once (API key, signing secret)."""
    say(f"{label}: {value}")
    say("  store it now: it is not shown again", err=True)


def cli_invocation(config: Any = None) -> str:
    """How this voicectl was run, with the config file it used (``config``, else --config,
    $VOICECTL_CONFIG or ./config.yaml): the command hints printed after a call work when copied
    as they are, e.g. ``.venv/bin/voicectl --config config.yaml calls show ...``."""
    import shlex
    from pathlib import Path

    program = sys.argv[0] if Path(sys.argv[0]).name == "voicectl" else "voicectl"
    return f"{shlex.quote(program)} --config {shlex.quote(str(config_path(config)))}"
