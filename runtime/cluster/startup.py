"""What `serve` checks before it starts in cluster mode: a configuration that cannot be shared is refused."""

from __future__ import annotations

import asyncio

from runtime.config import Settings
from runtime.secrets import SecretsError, read_master_key

NATS_CONNECT_TIMEOUT_S = 3.0


def cluster_refusal(settings: Settings) -> str | None:
    """Why these settings cannot run as one of several instances, or None (also None outside cluster mode)."""
    if not settings.cluster_mode:
        return None
    if not settings.database_url.startswith(("postgresql://", "postgres://")):
        return ("events.nats.url is set (cluster mode) but database.url is SQLite: several runtimes need one "
                "PostgreSQL database; set database.url to postgresql://... or leave events.nats.url empty")
    if not settings.limits.rate_limits.shared:
        return ("events.nats.url is set (cluster mode) but limits.rate_limits.storage is memory://: each instance "
                "would count on its own; set it to async+redis://HOST:PORT/DB (e.g. async+redis://127.0.0.1:6379/0)")
    if settings.secrets.backend != "database":
        return (f"events.nats.url is set (cluster mode) but secrets.backend is {settings.secrets.backend}: each "
                "instance would read the credentials of its own keyring; copy them with `voicectl secrets copy "
                "--to database`, then set secrets.backend: database")
    try:
        read_master_key(settings.master_key_path)
    except SecretsError as exc:  # the token keys derive from it: every instance needs the same one
        return f"events.nats.url is set (cluster mode) but the master key cannot be read: {exc}"
    return None


async def nats_unreachable(url: str, timeout_s: float = NATS_CONNECT_TIMEOUT_S) -> str | None:
    """Connect once with JetStream asked for; why that failed, or None."""
    import nats
    from nats.errors import Error as NatsError

    seen: list[BaseException] = []

    async def keep_error(exc: BaseException) -> None:  # nats-py logs a traceback unless given its own callback
        seen.append(exc)

    try:
        client = await asyncio.wait_for(
            nats.connect(url, connect_timeout=timeout_s, max_reconnect_attempts=0, allow_reconnect=False,
                         error_cb=keep_error),
            timeout_s + 1,
        )
    except (OSError, TimeoutError, NatsError) as exc:
        cause = seen[0] if seen else exc
        return f"NATS at {url} is unreachable ({cause or type(cause).__name__}); check events.nats.url"
    try:
        await client.jetstream().account_info()
    except (TimeoutError, NatsError) as exc:
        return f"NATS at {url} answers but JetStream is not enabled there ({exc or type(exc).__name__}); start nats-server -js"
    finally:
        await client.close()
    return None
