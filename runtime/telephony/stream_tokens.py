"""Short-lived, single-use media stream tokens, issued with the TwiML and bound to one call.

They live in the process (one runtime process per box in the first version, see DESIGN.md).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

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


# A token's entry: (call_id, expires, used). A tuple of atoms (replaced, never mutated) so the
# cyclic GC untracks it: a busy box remembers hundreds of thousands of tokens.
_Entry = tuple[str, float, bool]


class StreamTokens:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._tokens: dict[str, _Entry] = {}
        # call id -> its token (a tuple of them if the webhook was retried): revoke_call is O(1).
        self._by_call: dict[str, str | tuple[str, ...]] = {}
        self._next_purge = 0.0

    def issue(self, call_id: str) -> str:
        self._purge()
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (call_id, self._clock() + self.ttl_s, False)
        held = self._by_call.get(call_id)
        if held is None:
            self._by_call[call_id] = token
        else:
            self._by_call[call_id] = (held, token) if isinstance(held, str) else (*held, token)
        return token

    def consume(self, token: str | None) -> str:
        """The call id of a valid token, which is then spent; StreamTokenError otherwise."""
        entry = self._tokens.get(token) if isinstance(token, str) else None
        if entry is None:
            raise StreamTokenError(UNKNOWN, "unknown stream token")
        call_id, expires, used = entry
        if used:
            raise StreamTokenError(REUSED, "stream token already used")
        if self._clock() > expires:
            raise StreamTokenError(EXPIRED, "stream token expired")
        self._tokens[token] = (call_id, expires, True)  # type: ignore[index]
        return call_id

    def revoke_call(self, call_id: str) -> None:
        held = self._by_call.pop(call_id, None)
        if held is None:
            return
        for token in (held,) if isinstance(held, str) else held:
            entry = self._tokens.get(token)
            if entry is not None and not entry[2]:
                self._tokens[token] = (entry[0], entry[1], True)

    def __len__(self) -> int:
        return len(self._tokens)

    def _purge(self) -> None:
        now = self._clock()
        if now < self._next_purge:
            return
        self._next_purge = now + 10.0
        stale = [t for t, e in self._tokens.items() if now > e[1] + REMEMBER_S]
        for token in stale:
            call_id = self._tokens.pop(token)[0]
            held = self._by_call.get(call_id)
            if held == token:
                del self._by_call[call_id]
            elif isinstance(held, tuple) and token in held:
                rest = tuple(t for t in held if t != token)
                self._by_call[call_id] = rest[0] if len(rest) == 1 else rest
