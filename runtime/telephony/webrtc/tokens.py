"""Browser tokens: short-lived grants to call one agent or number of one tenant over WebRTC.

A tenant's backend (or the /call page, holding a runtime key) mints one with
``POST /api/v1/webrtc/tokens`` and hands it to a browser, which may then only offer calls to
that target until the token expires, and only while the key that minted it is still valid
(revoking the key revokes its tokens). Tokens are HMAC-signed with a key derived from the master
key (runtime.signing_keys), so any instance of a cluster accepts them, and so does this one after a
restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from runtime.control.errors import Unauthorized

PREFIX = "wrtc_"
MAX_TOKEN_CHARS = 1024


@dataclass(frozen=True, slots=True)
class BrowserGrant:
    tenant_id: str
    key_id: str  # the API key that minted it
    agent_id: str | None
    number: str | None  # E.164
    expires_at: int  # unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class BrowserTokens:
    def __init__(self, key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self._key = key or secrets.token_bytes(32)
        self._clock = clock

    def mint(self, grant: BrowserGrant) -> str:
        body = _b64(orjson.dumps({"t": grant.tenant_id, "k": grant.key_id, "a": grant.agent_id, "n": grant.number,
                                  "e": grant.expires_at}))
        return f"{PREFIX}{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return _b64(hmac.digest(self._key, (PREFIX + body).encode(), hashlib.sha256))

    def verify(self, token: str) -> BrowserGrant:
        """The grant of a genuine, unexpired token; Unauthorized otherwise (one message for every
        forgery, so the answer tells an attacker nothing)."""
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise Unauthorized("invalid browser token")
        body, signature = token[len(PREFIX):].split(".")
        if not hmac.compare_digest(self._sign(body).encode(), signature.encode()):
            raise Unauthorized("invalid browser token")
        try:
            data = orjson.loads(_unb64(body))
            grant = BrowserGrant(str(data["t"]), str(data["k"]), data["a"], data["n"], int(data["e"]))
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise Unauthorized("invalid browser token") from None
        if self._clock() >= grant.expires_at:
            raise Unauthorized("the browser token has expired: mint a new one", {"expired_at": grant.expires_at})
        return grant


def is_browser_token(presented: str) -> bool:
    return presented.startswith(PREFIX)
