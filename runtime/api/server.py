"""`voicectl serve`: run the app until SIGINT/SIGTERM."""

from __future__ import annotations

import gc
import logging

from aiohttp import web

from runtime.api.app import create_app
from runtime.config import Settings
from runtime.logs import configure_logging
from runtime.providers.chains import ProviderChains

log = logging.getLogger("voicectl.server")


async def tune_gc_for_live_calls(app: web.Application) -> None:
    """Stop the cyclic GC from re-walking the startup heap (modules, settings, the app: ~90k objects).

    A full pass over it stops the loop for ~50 ms, more than two 20 ms media frames, so every
    live call would get a late frame; after ``gc.freeze`` full passes only walk what calls
    allocate (bench/calls.py: 300 calls clean with it, a late frame on every call without).
    """
    # The WebRTC media stack (aiortc, PyAV: ~20k objects) is imported at a call's first use;
    # import it now so the freeze covers it too and full passes during calls do not walk it.
    import runtime.telephony.webrtc.bridge  # noqa: F401

    gc.freeze()
    # Fewer, larger young collections and half as many full-collection attempts: with tens of
    # thousands of live sessions a full pass costs tens of ms (bench/webhooks.py --hold 0 at
    # 1,000/s: p99 53 -> 9.5 ms; bench/calls.py 200 calls unchanged, 0 late frames).
    gc.set_threshold(20_000, 20, 20)


def run(settings: Settings, host: str | None = None, port: int | None = None,
        providers: ProviderChains | None = None) -> None:
    """``providers``: the engines calls get (default: the config's; bench/fake_engines.py passes its own)."""
    configure_logging(settings.logging)
    app = create_app(settings, providers=providers)
    host = host or settings.server.host
    port = port or settings.server.port
    log.info("voicectl serving", extra={"host": host, "port": port})

    async def log_shutdown(app: web.Application) -> None:
        log.info("voicectl shutting down", extra={"host": host, "port": port})

    app.on_shutdown.append(log_shutdown)
    app.on_startup.append(tune_gc_for_live_calls)
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        access_log=None,
        shutdown_timeout=settings.server.shutdown_grace_s,
        handle_signals=True,
    )
    from runtime.telephony.livekit.room import release_sdk

    release_sdk()
