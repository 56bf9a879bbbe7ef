"""API keys: random, prefixed, shown once, stored as a SHA-256 hash, revocable at once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time

from runtime.control.errors import Forbidden, NotFound, Unauthorized
from runtime.control.models import ApiKey, Principal, from_row
from runtime.control.pagination import Page, PageRequest
from runtime.control.schemas import ApiKeyCreate
from runtime.ids import new_id, now_iso
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS, TenantScope

PREFIXES = {"admin": "vk_admin_", "runtime": "vk_rt_"}
_ALPHABET = string.ascii_letters + string.digits
_SECRET_LEN = 40  # ~238 bits
# last_used_at is written at most this often per key, so auth stays a read.
TOUCH_INTERVAL_S = 60.0


def hash_key(key: str) -> str:
    # Keys are long random strings, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key(scope: str) -> str:
    return PREFIXES[scope] + "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LEN))


class KeyService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._last_touch: dict[str, float] = {}

    async def create(self, data: ApiKeyCreate) -> tuple[ApiKey, str]:
        """Returns the key record and the plaintext key, which is never available again."""
        if data.tenant_id is not None:
            if await self.store.tenants.get(data.tenant_id, tenant_id=ALL_TENANTS) is None:
                raise NotFound(f"tenant {data.tenant_id} not found", {"tenant_id": data.tenant_id})
        key = generate_key(data.scope)
        row = {
            "id": new_id("key"),
            "tenant_id": data.tenant_id,
            "scope": data.scope,
            "name": data.name,
            "key_hash": hash_key(key),
            "prefix": key[: len(PREFIXES[data.scope]) + 4],
            "last4": key[-4:],
            "created_at": now_iso(),
            "last_used_at": None,
            "revoked_at": None,
        }
        return from_row(ApiKey, await self.store.api_keys.insert(row)), key

    async def list(
        self, page: PageRequest, *, tenant_id: TenantScope = ALL_TENANTS, include_revoked: bool = False
    ) -> Page[ApiKey]:
        equals = {} if include_revoked else {"revoked_at": None}
        rows, total = await self.store.api_keys.list(
            tenant_id=tenant_id, equals=equals, limit=page.limit, offset=page.offset
        )
        return Page([from_row(ApiKey, r) for r in rows], total, page.limit, page.offset)

    async def revoke(self, key_id: str, *, tenant_id: TenantScope = ALL_TENANTS) -> ApiKey:
        row = await self.store.api_keys.get(key_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"API key {key_id} not found", {"key_id": key_id})
        if row["revoked_at"] is None:
            row = await self.store.api_keys.update(key_id, {"revoked_at": now_iso()}, tenant_id=tenant_id)
        return from_row(ApiKey, row)

    async def authenticate(self, presented: str) -> Principal:
        """Map a presented key to its principal; revoked keys and disabled tenants are refused."""
        if not presented or not presented.startswith(tuple(PREFIXES.values())):
            raise Unauthorized("invalid API key")
        digest = hash_key(presented)
        row = await self.store.api_key_by_hash(digest)
        # Constant-time comparison of what we found against what was presented.
        if row is None or not hmac.compare_digest(row["key_hash"], digest) or row["revoked_at"] is not None:
            raise Unauthorized("invalid API key")
        if row["tenant_id"] is not None and row["tenant_status"] != "active":
            raise Forbidden("tenant is disabled", {"tenant_id": row["tenant_id"]})
        await self._touch(row["id"])
        return Principal(key_id=row["id"], scope=row["scope"], tenant_id=row["tenant_id"])

    async def _touch(self, key_id: str) -> None:
        now = time.monotonic()
        if now - self._last_touch.get(key_id, -TOUCH_INTERVAL_S) < TOUCH_INTERVAL_S:
            return
        self._last_touch[key_id] = now
        await self.store.touch_api_key(key_id, now_iso())
