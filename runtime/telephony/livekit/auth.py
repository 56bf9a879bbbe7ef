"""Verification of LiveKit webhooks, before any other work.

LiveKit signs each delivery with a JWT in ``Authorization`` (HS256 with the API secret, ``iss`` =
the API key, a ``sha256`` claim = base64 SHA-256 of the raw body). The key names the project:
the appliance's (``telephony.livekit.api_key``) or a tenant's ``livekit`` credential. The body is
checked by ``livekit.api.WebhookReceiver`` with each secret known for that key; a verified event
is scoped to the key's tenant (None for the appliance's key: any tenant).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from runtime.telephony.livekit.bridge import bridge
from runtime.telephony.livekit.server import LiveKitServer, appliance_server, tenant_credential_server
from runtime.telephony.services import services

if TYPE_CHECKING:
    from livekit.protocol.webhook import WebhookEvent

# Clock skew allowed on the JWT's nbf/exp (LiveKit signs deliveries valid for 5 minutes).
LEEWAY = datetime.timedelta(seconds=30)
MAX_TOKEN_CHARS = 8192


class WebhookRefused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class VerifiedEvent:
    event: WebhookEvent
    server: LiveKitServer  # the project whose key signed the delivery

    @property
    def scope(self) -> str | None:
        """The only tenant this delivery may touch; None: any (the appliance's own key)."""
        return self.server.tenant_id


def _issuer(token: str) -> str:
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False}, algorithms=["HS256"])
    except jwt.PyJWTError:
        raise WebhookRefused(401, "bad_token", "Authorization is not a LiveKit webhook token (JWT)") from None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    if not isinstance(issuer, str) or not issuer:
        raise WebhookRefused(401, "bad_token", "the webhook token names no API key (iss)")
    return issuer


async def _candidates(app: web.Application, api_key: str) -> list[LiveKitServer]:
    control, settings = services(app).control, services(app).settings
    found: list[LiveKitServer] = []
    appliance = await appliance_server(settings, control)
    if appliance is not None and appliance.api_key == api_key:
        found.append(appliance)
    for tenant_id in await bridge(app).key_tenants(control.store, api_key):
        server = await tenant_credential_server(control, tenant_id, settings.telephony.livekit.default_country)
        if server is not None and server.api_key == api_key:
            found.append(server)
    return found


def _receive(server: LiveKitServer, body: str, token: str) -> WebhookEvent | None:
    """The event, None when this secret did not sign the token; WebhookRefused for the rest."""
    import jwt
    from google.protobuf.json_format import ParseError
    from livekit.api import TokenVerifier, WebhookReceiver

    receiver = WebhookReceiver(TokenVerifier(server.api_key, server.api_secret, leeway=LEEWAY))
    try:
        return receiver.receive(body, token)
    except jwt.InvalidSignatureError:
        return None
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        raise WebhookRefused(401, "stale", "the webhook token has expired or is not valid yet") from None
    except jwt.PyJWTError as exc:
        raise WebhookRefused(401, "bad_token", f"the webhook token is invalid ({type(exc).__name__})") from None
    except ParseError:
        # Signed and hashed correctly, but not a WebhookEvent in protojson.
        raise WebhookRefused(400, "malformed", "the body is not a LiveKit webhook event (protojson)") from None
    except Exception as exc:  # WebhookReceiver raises bare Exceptions for the body hash
        if str(exc) in ("hash mismatch", "sha256 was not found in the token"):
            raise WebhookRefused(401, "bad_body_hash", "the body does not match the token's sha256") from None
        raise


async def verify(app: web.Application, raw: bytes, authorization: str | None) -> VerifiedEvent:
    if not authorization:
        raise WebhookRefused(401, "missing_token", "missing Authorization (the LiveKit webhook token)")
    token = authorization.strip()
    if token[:7].lower() == "bearer ":  # LiveKit sends the bare JWT; tolerate a Bearer prefix
        token = token[7:].strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise WebhookRefused(401, "bad_token", "the webhook token is too long")
    api_key = _issuer(token)
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRefused(400, "bad_body", "the body is not UTF-8 JSON") from None
    candidates = await _candidates(app, api_key)
    if not candidates:
        raise WebhookRefused(403, "unknown_key", "the webhook is signed with an unknown LiveKit API key")
    for server in candidates:
        event = _receive(server, body, token)
        if event is not None:
            break
    else:
        raise WebhookRefused(401, "bad_signature", "the webhook token's signature does not verify")
    max_age = services(app).settings.telephony.livekit.webhook_max_age_s
    if event.created_at and time.time() - event.created_at > max_age:
        raise WebhookRefused(401, "stale", f"the event was created more than {max_age:g} s ago")
    return VerifiedEvent(event, server)
