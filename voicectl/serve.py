"""voicectl serve: run the HTTP runtime (API, telephony webhooks, media) in the foreground."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Annotated

import typer

from voicectl.common import EXIT_CANNOT_LISTEN, EXIT_CONFIG, errors, fail, load_settings

if TYPE_CHECKING:
    from runtime.config import Settings

# Errors of a bind that say "this address cannot be listened on" (and not, say, a file the
# runtime could not open at start-up, which may also be EACCES).
_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})


def _listen_error(host: str, port: int, exc: OSError) -> str:
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"{where}: the port is already in use (another `voicectl serve`?); stop that process, "
                "or pick another port with --port N or server.port in the config")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {host} is not an address of this machine (--host or server.host in the config)"
    if exc.errno == errno.EACCES:
        return (f"{where}: permission denied (ports below 1024 need privileges: serve on a higher port "
                "behind a proxy)")
    return f"{where}: {exc.strerror or exc}"


def check_can_listen(host: str, port: int) -> None:
    """Bind every address the runtime will listen on, then let go: a port in use is reported at
    once, before the speech models load (seconds), with what to do about it (exit 10).

    The sockets are made as asyncio's server makes them (SO_REUSEADDR, IPv6 only on IPv6), so a
    port left in TIME_WAIT by a runtime that just stopped is not reported as in use."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        fail(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})", EXIT_CANNOT_LISTEN)
    for family, kind, proto, _, address in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                fail(_listen_error(host, port, exc), EXIT_CANNOT_LISTEN)


def check_rate_limit_storage(settings: Settings) -> None:
    """A Redis rate-limit storage (limits.rate_limits.storage) that does not answer: exit 5 at once,
    cluster mode or not (the settings ask for limits shared with other instances)."""
    if not settings.limits.rate_limits.shared:
        return
    import asyncio

    from runtime.web.ratelimit import storage_unreachable

    if refusal := asyncio.run(storage_unreachable(settings.limits.rate_limits.storage)):
        fail(refusal, EXIT_CONFIG)


def check_cluster(settings: Settings) -> None:
    """Cluster mode (events.nats.url set): settings that cannot be shared, or NATS unreachable, exit 5 at once."""
    if not settings.cluster_mode:
        return
    import asyncio

    from runtime.cluster.startup import cluster_refusal, nats_unreachable

    refusal = cluster_refusal(settings) or asyncio.run(nats_unreachable(settings.events.nats.url))
    if refusal:
        fail(refusal, EXIT_CONFIG)
    # The shared parts (events over NATS, shared admission, cross-instance call control) are not in this
    # version yet: running anyway would break the guarantees README "Running several instances" states.
    fail("cluster mode (events.nats.url) is not available in this version yet: leave events.nats.url empty "
         "and run one runtime per database", EXIT_CONFIG)


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
    """Run the runtime: migrates the database, then serves until SIGTERM/Ctrl-C.

    Exits 10 at once when the host and port cannot be listened on (e.g. the port is in use).
    """
    with errors():
        settings = load_settings(config)
        host = host or settings.server.host
        port = port or settings.server.port
        check_rate_limit_storage(settings)
        check_cluster(settings)
        check_can_listen(host, port)
        from runtime.api.server import run as run_server

        try:
            run_server(settings, host=host, port=port)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
        except OSError as exc:
            # Taken between the check and the bind (the models load in between).
            if exc.errno in _BIND_ERRNOS or "attempting to bind" in str(exc):
                fail(_listen_error(host, port, exc), EXIT_CANNOT_LISTEN)
            raise
