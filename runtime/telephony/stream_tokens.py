"""Short-lived, single-use media stream tokens, issued with the TwiML and bound to one call.

They live in the process (one runtime process per box in the first version, see DESIGN.md).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_TTL_S = 30.0
# Used tokens are remembered this long past their expiry, so a replay says "reused", not "unknown".
REMEMBER_S = 300.0


class StreamTokenError(Exception):
    """``code`` is the WebSocket close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


UNKNOWN, EXPIRED, REUSED = 4401, 4401, 4403


@dataclass(slots=True)
class _Entry:
    call_id: str
    expires: float
    used: bool = False


class StreamTokens:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._tokens: dict[str, _Entry] = {}
        self._next_purge = 0.0

    def issue(self, call_id: str) -> str:
        self._purge()
        token = secrets.token_urlsafe(24)
        self._tokens[token] = _Entry(call_id, self._clock() + self.ttl_s)
        return token

    def consume(self, token: str | None) -> str:
        """The call id of a valid token, which is then spent; StreamTokenError otherwise."""
        entry = self._tokens.get(token) if isinstance(token, str) else None
        if entry is None:
            raise StreamTokenError(UNKNOWN, "unknown stream token")
        if entry.used:
            raise StreamTokenError(REUSED, "stream token already used")
        if self._clock() > entry.expires:
            raise StreamTokenError(EXPIRED, "stream token expired")
        entry.used = True
        return entry.call_id

    def revoke_call(self, call_id: str) -> None:
        for entry in self._tokens.values():
            if entry.call_id == call_id:
                entry.used = True

    def __len__(self) -> int:
        return len(self._tokens)

    def _purge(self) -> None:
        now = self._clock()
        if now < self._next_purge:
            return
        self._next_purge = now + 10.0
        stale = [t for t, e in self._tokens.items() if now > e.expires + REMEMBER_S]
        for token in stale:
            del self._tokens[token]
