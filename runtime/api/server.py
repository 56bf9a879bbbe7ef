"""`voicectl serve`: run the app until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket

from aiohttp import web

from runtime.api.app import create_app, name_instance
from runtime.api.appkeys import INSTANCE_ID, METRICS, SELF_URL
from runtime.config import Settings
from runtime.logs import configure_logging
from runtime.providers.chains import ProviderChains
from runtime.web.http_errors import JsonErrorAppRunner

log = logging.getLogger("voicectl.server")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


async def watch_stalls(app: web.Application) -> None:
    """GC pauses and event-loop lag in /metrics, for this served process (tests run many apps)."""
    app[METRICS].gc_pauses.install()
    app[METRICS].loop_lag.start()


async def stop_watching_stalls(app: web.Application) -> None:
    app[METRICS].gc_pauses.uninstall()
    await app[METRICS].loop_lag.stop()


async def serve_until_signalled(app: web.Application, host: str, port: int, shutdown_timeout: float,
                                reuse_port: bool = False) -> None:
    """What ``web.run_app`` does, with the runner that answers malformed requests in the JSON error
    shape (run_app makes its own): serve until SIGINT or SIGTERM, then shut down gracefully. A
    signal during startup stops the runtime as soon as it has started; a second signal stops it at once.
    ``reuse_port``: bind with SO_REUSEPORT, beside the other workers of `serve --workers N`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    runner = JsonErrorAppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        if reuse_port:
            await listen_for_itself(app, runner)
        await stop.wait()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        await runner.cleanup()


async def listen_for_itself(app: web.Application, runner: web.AppRunner) -> None:
    """A worker's own listener on a free loopback port (``SELF_URL``): the kernel spreads the
    shared port's connections over the workers, so a worker calling the shared port would reach
    a sibling now and then (an evaluation's voice webhook on one worker, its media on another)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    app[SELF_URL] = f"http://127.0.0.1:{sock.getsockname()[1]}"


def run(settings: Settings, host: str | None = None, port: int | None = None,
        providers: ProviderChains | None = None, reuse_port: bool = False) -> None:
    """``providers``: the engines calls get (default: the config's; bench/fake_engines.py passes its own).
    ``reuse_port``: one of several workers on this port (voicectl/workers.py)."""
    configure_logging(settings.logging)
    app = create_app(settings, providers=providers)
    host = host or settings.server.host
    port = port or settings.server.port
    name_instance(app, settings.instance_id(port), port)
    log.info("voicectl serving", extra={"host": host, "port": port, "instance_id": app[INSTANCE_ID]})

    async def log_shutdown(app: web.Application) -> None:
        log.info("voicectl shutting down", extra={"host": host, "port": port})

    app.on_shutdown.append(log_shutdown)
    app.on_startup.append(tune_gc_for_live_calls)
    app.on_startup.append(watch_stalls)
    app.on_cleanup.append(stop_watching_stalls)
    from runtime.telephony.twilio.bridge import warn_if_streams_would_be_refused

    app.on_startup.append(warn_if_streams_would_be_refused)
    asyncio.run(serve_until_signalled(app, host, port, settings.server.shutdown_grace_s, reuse_port=reuse_port))
    from runtime.telephony.livekit.room import release_sdk

    release_sdk()
