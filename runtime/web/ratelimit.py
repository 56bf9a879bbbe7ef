"""Per-key, per-route-class moving-window rate limits with X-RateLimit-* headers.

The counting is the `limits` library's moving window: a key gets ``limit`` requests in any
``window_s`` seconds, so no burst of twice the limit across a window edge (a fixed window let
one). The hits live in ``limits.rate_limits.storage``: this process's memory (``memory://``)
or Redis (``async+redis://``), which every instance sharing it counts against together.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime.config import RATE_CLASSES, RateLimitSettings

if TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.aio.strategies import MovingWindowRateLimiter
    from redis.asyncio import ConnectionPool

log = logging.getLogger("voicectl.ratelimit")

# How long one attempt at Redis (connect or answer) may take before the request is counted locally.
REDIS_TIMEOUT_S = 0.5
# After Redis failed, requests count locally this long before Redis is tried again, so an outage
# costs one timeout per interval rather than one per request.
REDIS_RETRY_S = 5.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # unix time when the oldest hit in the window expires

    @property
    def reset_at(self) -> int:
        """``reset`` in whole seconds, rounded up (X-RateLimit-Reset)."""
        return math.ceil(self.reset)

    def headers(self, now: float | None = None) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if not self.allowed:
            now = time.time() if now is None else now
            headers["Retry-After"] = str(max(1, math.ceil(self.reset - now)))
        return headers


def _redis_url(storage: str) -> str:
    return storage.removeprefix("async+")


def _shown(storage: str) -> str:
    """The Redis URL for messages and logs: a password in it is masked."""
    from urllib.parse import urlsplit

    url = urlsplit(_redis_url(storage))
    if url.password is None:
        return url.geturl()
    user = url.username or ""
    return url._replace(netloc=f"{user}:***@{url.netloc.rpartition('@')[2]}").geturl()


def _redis_pool(storage: str) -> ConnectionPool:
    from redis.asyncio import ConnectionPool
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # One quick retry (a pooled connection Redis closed), no backoff: a request never waits on
    # redis-py's default retries (seconds) while Redis is away.
    return ConnectionPool.from_url(_redis_url(storage), socket_timeout=REDIS_TIMEOUT_S,
                                   socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 1))


async def storage_unreachable(storage: str) -> str | None:
    """Why the rate-limit storage cannot be used, or None (memory:// always can)."""
    if storage == "memory://":
        return None
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    pool = _redis_pool(storage)
    try:
        await Redis(connection_pool=pool).ping()
    except (RedisError, OSError) as exc:
        return (f"limits.rate_limits.storage: Redis at {_shown(storage)} is unreachable ({exc}); start "
                "Redis or set limits.rate_limits.storage to memory:// (one instance only)")
    finally:
        await pool.aclose()
    return None


class RateLimiter:
    """``open`` at startup and ``close`` at cleanup (the app's cleanup context does both)."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self._settings = settings
        self._pool: ConnectionPool | None = None
        self._shared: MovingWindowRateLimiter | None = None
        self._local: MovingWindowRateLimiter | None = None
        self._redis_down_until = 0.0
        self._items: dict[tuple[str, str], RateLimitItem] = {}  # (scope, route class) -> its limit
        self._storage_errors: tuple[type[Exception], ...] = ()

    async def open(self) -> None:
        from limits import RateLimitItemPerSecond
        from limits.aio.storage import MemoryStorage
        from limits.aio.strategies import MovingWindowRateLimiter
        from limits.errors import StorageError
        from limits.storage import storage_from_string

        self._items = {
            (scope, name): RateLimitItemPerSecond(limit.limit, limit.window_s)
            for scope, classes in (("admin", self._settings.admin), ("runtime", self._settings.runtime))
            for name in RATE_CLASSES if (limit := getattr(classes, name)) is not None
        }
        self._storage_errors = (StorageError, OSError, TimeoutError)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        if not self._settings.shared:
            return
        self._pool = _redis_pool(self._settings.storage)
        self._shared = MovingWindowRateLimiter(storage_from_string(
            self._settings.storage, implementation="redispy", connection_pool=self._pool,
            key_prefix=f"{self._settings.key_prefix}:ratelimit", wrap_exceptions=True))
        if reason := await storage_unreachable(self._settings.storage):
            self._redis_lost(reason)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = self._shared = None
        self._local = None

    async def check(self, key_id: str, scope: str, route_class: str) -> Decision | None:
        """Count one request of ``key_id``; None when the class is unlimited for this scope."""
        if self._local is None:
            raise RuntimeError("RateLimiter.check before open()")
        item = self._items.get(("admin" if scope == "admin" else "runtime", route_class))
        if item is None:
            return None
        ids = (scope, key_id, route_class)
        if self._shared is not None and time.monotonic() >= self._redis_down_until:
            try:
                decision = await self._decide(self._shared, item, ids)
            except self._storage_errors as exc:
                self._redis_lost(str(getattr(exc, "storage_error", exc)))
            else:
                if self._redis_down_until:
                    self._redis_down_until = 0.0
                    log.warning("rate-limit storage answers again: counting in Redis",
                                extra={"storage": _shown(self._settings.storage)})
                return decision
        # Redis unreachable: count in this process rather than refuse (fail-closed would turn a Redis
        # outage into an outage of the whole API and of live-call control) or let everything through
        # (fail-open would leave a runaway integration unbounded). Each instance then holds the limit
        # on its own: at most one limit per instance while Redis is away.
        return await self._decide(self._local, item, ids)

    @staticmethod
    async def _decide(strategy: MovingWindowRateLimiter, item: RateLimitItem, ids: tuple[str, ...]) -> Decision:
        allowed = await strategy.hit(item, *ids)
        reset, remaining = await strategy.get_window_stats(item, *ids)
        return Decision(allowed, item.amount, max(0, remaining), reset)

    def _redis_lost(self, reason: str) -> None:
        if not self._redis_down_until:
            log.warning("rate-limit storage unreachable: counting in this process until it answers",
                        extra={"storage": _shown(self._settings.storage), "reason": reason})
        self._redis_down_until = time.monotonic() + REDIS_RETRY_S
