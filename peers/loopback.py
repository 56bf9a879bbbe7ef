"""An aiohttp app on a free loopback port: the local peers and the live API of the tests."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# The security.egress.allow of the tests and benchmarks: tenant URLs may reach the peers on loopback.
LOOPBACK_ALLOW = ("127.0.0.1/32",)


async def serve_loopback(app: web.Application, host: str = "127.0.0.1", *,
                         runner_class: type[web.AppRunner] = web.AppRunner, **runner_options: Any,
                         ) -> tuple[web.AppRunner, int]:
    """(runner, port); ``runner.cleanup()`` stops it. ``runner_class``: the runtime's own runner for its app."""
    runner = runner_class(app, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, runner.addresses[0][1]
