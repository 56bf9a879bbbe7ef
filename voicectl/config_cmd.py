"""voicectl config check|show: validate the config file and show the effective settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from voicectl.common import (
    JsonOpt,
    config_path,
    errors,
    load_settings,
    new_app,
    print_details,
    print_json,
    redact_url,
    say,
)

if TYPE_CHECKING:
    from runtime.config import Settings

app = new_app("Configuration: validate a file, show the effective settings.")

FileArg = Annotated[
    str | None,
    typer.Argument(help="Config file (default: --config, $VOICECTL_CONFIG, ./config.yaml).", show_default=False),
]


def summary(path: str, settings: Settings) -> dict[str, Any]:
    key = settings.master_key_path
    return {
        "config": path,
        "database": redact_url(settings.database_url),
        "server": f"{settings.server.host}:{settings.server.port}",
        "public_url": settings.server.public_url,
        "secrets_backend": settings.secrets.backend,
        "master_key_file": f"{key} ({'present' if key.exists() else 'missing'})",
        "providers": dict(settings.providers.defaults.model_dump()),
        "recording_dir": str(settings.recording_dir),
        "logging": f"{settings.logging.level}, {settings.logging.format}",
    }


@app.command("check")
def check(file: FileArg = None, as_json: JsonOpt = False) -> None:
    """Load and validate a config file (with VOICECTL_* overrides); exit 5 when it is invalid."""
    with errors():
        path = config_path(file)
        settings = load_settings(str(path))
        data = summary(str(path.resolve()), settings)
    if as_json:
        print_json({"ok": True, **data})
        return
    say(f"OK: {path} is valid")
    print_details(data)


@app.command("show")
def show(file: FileArg = None, as_json: JsonOpt = False) -> None:
    """Print the effective settings (file + defaults + VOICECTL_* overrides)."""
    with errors():
        path = config_path(file)
        settings = load_settings(str(path))
        data = settings.model_dump(mode="json")
        data["database"]["url"] = redact_url(data["database"]["url"])
    if as_json:
        print_json(data)
        return
    import yaml

    say(f"# effective settings of {path}")
    say(yaml.safe_dump(data, sort_keys=False).rstrip())
