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


def check_can_listen(host: str, port: int, reuse_port: bool = False) -> None:
    """Bind every address the runtime will listen on, then let go: a port in use is reported at
    once, before the speech models load (seconds), with what to do about it (exit 10).

    The sockets are made as asyncio's server makes them (SO_REUSEADDR, IPv6 only on IPv6), so a
    port left in TIME_WAIT by a runtime that just stopped is not reported as in use. ``reuse_port``:
    bound as the workers of `--workers N` bind (SO_REUSEPORT); such a bind also succeeds beside
    another group of workers, so a port that accepts a connection is reported in use too."""
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
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                fail(_listen_error(host, port, exc), EXIT_CANNOT_LISTEN)
            if reuse_port and _accepts(family, address):
                fail(_listen_error(host, port, OSError(errno.EADDRINUSE, "in use")), EXIT_CANNOT_LISTEN)


def _accepts(family: int, address: tuple) -> bool:
    """Whether something already listens at ``address`` (a wildcard address is tried on loopback)."""
    import socket

    host, port = address[0], address[1]
    if host in ("0.0.0.0", "::", ""):
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def check_rate_limit_storage(settings: Settings) -> None:
    """A Redis rate-limit storage (limits.rate_limits.storage) that does not answer: exit 5 at once,
    cluster mode or not (the settings ask for limits shared with other instances)."""
    if not settings.limits.rate_limits.shared:
        return
    import asyncio

    from runtime.web.ratelimit import storage_unreachable

    if refusal := asyncio.run(storage_unreachable(settings.limits.rate_limits.storage)):
        fail(refusal, EXIT_CONFIG)


def check_workers(settings: Settings, workers: int) -> None:
    """Several workers share what one process keeps in memory only through cluster mode: refused
    (exit 5) on SQLite (one writer) and without events.nats.url."""
    if workers == 1:
        return
    if not settings.database_url.startswith(("postgresql://", "postgres://")):
        fail(f"--workers {workers} needs PostgreSQL (database.url): SQLite takes one runtime process; "
             "use --workers 1, or set database.url to postgresql://...", EXIT_CONFIG)
    if not settings.cluster_mode:
        fail(f"--workers {workers} needs cluster mode (events.nats.url) so workers share events and limits; "
             "use --workers 1, or see README \"Running several instances\"", EXIT_CONFIG)


def check_cluster(settings: Settings) -> None:
    """Cluster mode (events.nats.url set): settings that cannot be shared, or NATS unreachable, exit 5 at once."""
    if not settings.cluster_mode:
        return
    import asyncio

    from runtime.cluster.startup import cluster_refusal, nats_unreachable

    refusal = cluster_refusal(settings) or asyncio.run(nats_unreachable(settings.events.nats.url))
    if refusal:
        fail(refusal, EXIT_CONFIG)


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
    workers: Annotated[
        str, typer.Option("--workers", "-w", help="Runtime processes on this port (SO_REUSEPORT), or auto: "
                          "one per core. More than 1 needs PostgreSQL and cluster mode.", metavar="N|auto")
    ] = "1",
) -> None:
    """Run the runtime: migrates the database, then serves until SIGTERM/Ctrl-C.

    Exits 10 at once when the host and port cannot be listened on (e.g. the port is in use).
    """
    from voicectl.workers import worker_count

    try:
        count = worker_count(workers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--workers'") from None
    with errors():
        settings = load_settings(config)
        host = host or settings.server.host
        port = port or settings.server.port
        check_rate_limit_storage(settings)
        check_workers(settings, count)
        check_cluster(settings)
        if count > 1:
            check_can_listen(host, port, reuse_port=True)
            from voicectl.workers import run_workers

            raise typer.Exit(run_workers(settings, host, port, count, cannot_listen_code=EXIT_CANNOT_LISTEN,
                                         fatal_exit_codes=(EXIT_CONFIG,)))
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
