"""`voicectl serve`: run the app until SIGINT/SIGTERM."""

from __future__ import annotations

import logging

from aiohttp import web

from runtime.api.app import create_app
from runtime.config import Settings
from runtime.logs import configure_logging

log = logging.getLogger("voicectl.server")


def run(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    configure_logging(settings.logging)
    app = create_app(settings)
    host = host or settings.server.host
    port = port or settings.server.port
    log.info("voicectl serving", extra={"host": host, "port": port})

    async def log_shutdown(app: web.Application) -> None:
        log.info("voicectl shutting down", extra={"host": host, "port": port})

    app.on_shutdown.append(log_shutdown)
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        access_log=None,
        shutdown_timeout=settings.server.shutdown_grace_s,
        handle_signals=True,
    )
