"""Single-use pins of synthetic evaluation calls.

An evaluation call must reach the agent version under test, which is usually not the one real
callers get, without opening a way for anyone else to reach it. So each synthetic call carries a
pin: a row naming the evaluation, agent and version, and a 256-bit secret of which only the SHA-256
is stored. The caller puts the pin's id and secret in the voice webhook's URL and signs the request
with the secret as Twilio signs with an auth token; the runtime finds the row, checks the secret and
the signature, and uses the pin once (``consume``): a replay, an expired pin (``PIN_TTL_S``) or a
wrong secret is refused. Real callers never carry a pin, so nothing routes them to a version
under test; whoever mints pins (the CLI on the box, or an admin or the tenant's key through the API)
already has the right to run the evaluation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from runtime.ids import new_id, now_iso
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS

PIN_TTL_S = 900
MAX_PIN_ID = 64
MAX_SECRET = 128


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


async def mint(store: Store, *, tenant_id: str, evaluation_id: str, agent_id: str, version: int,
               scenario: str, ttl_s: float = PIN_TTL_S) -> tuple[str, str]:
    """A new pin for one call: (pin id, secret). The secret is not stored."""
    pin_id, secret = new_id("pin"), secrets.token_urlsafe(32)
    expires = (datetime.now(UTC) + timedelta(seconds=ttl_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await store.eval_pins.insert({
        "id": pin_id, "tenant_id": tenant_id, "evaluation_id": evaluation_id, "agent_id": agent_id,
        "agent_version": version, "scenario": scenario[:200], "secret_hash": _hash(secret), "expires_at": expires,
        "used_at": None, "call_id": None, "created_at": now_iso(),
    })
    return pin_id, secret


async def valid(store: Store, pin_id: str, secret: str) -> dict[str, Any] | None:
    """The pin's row when ``secret`` is its secret and it is unused and unexpired; else None."""
    if not pin_id or not secret or len(pin_id) > MAX_PIN_ID or len(secret) > MAX_SECRET:
        return None
    row = await store.eval_pins.get(pin_id, tenant_id=ALL_TENANTS)
    if row is None or not hmac.compare_digest(row["secret_hash"], _hash(secret)):
        return None
    if row["used_at"] is not None or row["expires_at"] <= now_iso():
        return None
    return row


async def consume(store: Store, row: dict[str, Any]) -> bool:
    """Use the pin: True once, False for every later try (a replay, or two at once)."""
    return await store.consume_eval_pin(row["id"], now_iso())


async def bind_call(store: Store, row: dict[str, Any], call_id: str) -> None:
    await store.eval_pins.set(row["id"], {"call_id": call_id}, tenant_id=row["tenant_id"])
