"""Short-lived, single-use media stream tokens, issued with the TwiML and bound to one call.

One runtime keeps them in its memory (``StreamTokens``). In cluster mode they are rows in
PostgreSQL (``SharedStreamTokens``), so the instance Twilio's media socket reaches can spend a
token another instance issued, once, and take its call over. Both have one async interface.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from runtime.ids import iso
from runtime.store.stream_tokens import StreamTokenRows

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

    async def issue(self, call_id: str) -> str:
        self._purge()
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (call_id, self._clock() + self.ttl_s, False)
        held = self._by_call.get(call_id)
        if held is None:
            self._by_call[call_id] = token
        else:
            self._by_call[call_id] = (held, token) if isinstance(held, str) else (*held, token)
        return token

    async def consume(self, token: str | None) -> str:
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

    async def revoke_call(self, call_id: str) -> None:
        held = self._by_call.pop(call_id, None)
        if held is None:
            return
        for token in (held,) if isinstance(held, str) else held:
            entry = self._tokens.get(token)
            if entry is not None and not entry[2]:
                self._tokens[token] = (entry[0], entry[1], True)

    async def spent_by_another(self, call_id: str) -> bool:
        return False  # one process: no other instance to take a call over

    async def disown(self, call_id: str) -> None:
        return None

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


PURGE_INTERVAL_S = 10.0
MAX_TOKEN_CHARS = 128


def _at(seconds: float) -> str:
    return iso(datetime.fromtimestamp(seconds, UTC))


class SharedStreamTokens:
    """Cluster mode: tokens in the stream_tokens table, any instance may spend one (once)."""

    def __init__(self, rows: StreamTokenRows, key: bytes, instance_id: str, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._rows = rows
        self._key = key
        self._instance_id = instance_id
        self._clock = clock
        self._next_purge = 0.0

    def _digest(self, token: str) -> str:
        # Keyed (the stream-token key derived from the master key): the table alone, in a backup or
        # a replica, gives no token and no way to test guesses.
        return hmac.digest(self._key, token.encode(), hashlib.sha256).hex()

    async def issue(self, call_id: str) -> str:
        now = self._clock()
        await self._purge(now)
        token = secrets.token_urlsafe(24)
        await self._rows.insert(self._digest(token), call_id, self._instance_id, _at(now + self.ttl_s), _at(now))
        return token

    async def consume(self, token: str | None) -> str:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise StreamTokenError(UNKNOWN, "unknown stream token")
        digest = self._digest(token)
        call_id = await self._rows.spend(digest, _at(self._clock()), self._instance_id)
        if call_id is not None:
            return call_id
        row = await self._rows.find(digest)  # why not: for the close code
        if row is None:
            raise StreamTokenError(UNKNOWN, "unknown stream token")
        if row["used_at"] is not None:
            raise StreamTokenError(REUSED, "stream token already used")
        raise StreamTokenError(EXPIRED, "stream token expired")

    async def revoke_call(self, call_id: str) -> None:
        await self._rows.revoke_call(call_id, _at(self._clock()))

    async def spent_by_another(self, call_id: str) -> bool:
        return await self._rows.spent_by_another(call_id, self._instance_id)

    async def disown(self, call_id: str) -> None:
        """This instance spent a token of the call but could not run it: the token stays spent, and
        the call is no longer "taken over" (its own instance fails it when its stream deadline passes)."""
        await self._rows.disown(call_id, self._instance_id)

    async def _purge(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL_S
        await self._rows.purge(_at(now - REMEMBER_S))
