"""voicectl serve: run the HTTP runtime (API, telephony webhooks, media) in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer

from voicectl.common import errors, load_settings


def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to bind (default: server.host, 127.0.0.1).",
                                 show_default=False)
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", "-p", help="TCP port (default: server.port, 8080).", min=1, max=65535,
                                 show_default=False)
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="Config file (same as the global --config).",
                                 show_default=False)
    ] = None,
) -> None:
    """Run the runtime: migrates the database, then serves until SIGTERM/Ctrl-C."""
    with errors():
        settings = load_settings(config)
        from runtime.api.server import run as run_server

        try:
            run_server(settings, host=host or settings.server.host, port=port or settings.server.port)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
