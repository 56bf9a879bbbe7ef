"""Per-key, per-route-class fixed-window rate limits with X-RateLimit-* headers.

In-process state: one runtime process per box (DESIGN.md); a shared limiter comes
with the scale-out design.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from runtime.config import RATE_CLASSES, RateLimit, RateLimitSettings


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # unix seconds when the window resets

    def headers(self, now: float | None = None) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if not self.allowed:
            now = time.time() if now is None else now
            headers["Retry-After"] = str(max(1, math.ceil(self.reset_at - now)))
        return headers


class RateLimiter:
    def __init__(self, settings: RateLimitSettings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}  # (key, class) -> (window start, count)
        self._clock = clock

    def limit_for(self, scope: str, route_class: str) -> RateLimit | None:
        classes = self._settings.admin if scope == "admin" else self._settings.runtime
        return getattr(classes, route_class, None)

    def check(self, key_id: str, scope: str, route_class: str) -> Decision | None:
        """None when the class is unlimited for this scope."""
        limit = self.limit_for(scope, route_class)
        if limit is None:
            return None
        now = self._clock()
        start = int(now // limit.window_s) * limit.window_s
        slot = (key_id, route_class)
        window_start, count = self._windows.get(slot, (start, 0))
        if window_start != start:
            window_start, count = start, 0
        reset_at = window_start + limit.window_s
        if count >= limit.limit:
            return Decision(False, limit.limit, 0, reset_at)
        count += 1
        self._windows[slot] = (window_start, count)
        if len(self._windows) > 100_000:
            self._evict(now)
        return Decision(True, limit.limit, limit.limit - count, reset_at)

    def _evict(self, now: float) -> None:
        longest = max(
            (getattr(c, name).window_s for c in (self._settings.admin, self._settings.runtime)
             for name in RATE_CLASSES if getattr(c, name)),
            default=0,
        )
        self._windows = {k: v for k, v in self._windows.items() if v[0] + longest > now}
