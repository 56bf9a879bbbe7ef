"""Per-tenant provider credentials: non-secret fields in the database, the secret in the keyring."""

from __future__ import annotations

import time

from runtime.control.errors import Invalid, NotFound
from runtime.control.models import Credential, from_row
from runtime.control.pagination import Page, PageRequest
from runtime.control.schemas import CredentialSet
from runtime.control.tenant_urls import check_urls, credential_urls
from runtime.egress.policy import EgressPolicy
from runtime.ids import new_id, now_iso
from runtime.providers import registry
from runtime.providers.registry import CredentialSpec, ProviderCredential
from runtime.secrets import SecretStore
from runtime.store.store import Store
from runtime.store.tables import WRITES

# The runtime's secret lookups (a signature check per webhook) read a credential row at most once
# per SECRET_REF_TTL_S; a write to credentials in this process drops the cache at once.
SECRET_REF_TTL_S = 1.0
SECRET_REF_CACHE_MAX = 10_000


def secret_ref(tenant_id: str, provider: str) -> str:
    return f"tenant/{tenant_id}/credential/{provider}"


def provider_spec(provider: str) -> CredentialSpec:
    """What a tenant stores for ``provider`` (the registry's table of credentials)."""
    spec = registry.credential_spec(provider)
    if spec is None:
        raise NotFound(f"unknown provider {provider!r}; known: {', '.join(registry.CREDENTIALS)}",
                       {"provider": provider})
    return spec


class CredentialService:
    def __init__(self, store: Store, secrets: SecretStore, egress: EgressPolicy | None = None) -> None:
        self.store = store
        self.secrets = secrets
        self.egress = egress or EgressPolicy()
        # (tenant, provider) -> (write generation, expires, secret ref, row's updated_at)
        self._refs: dict[tuple[str, str], tuple[int, float, str | None, str | None]] = {}

    @staticmethod
    def _public(row: dict) -> Credential:
        return from_row(Credential, {**row, "secret_set": row["secret_ref"] is not None})

    async def set(self, tenant_id: str, provider: str, data: CredentialSet) -> Credential:
        """Create or replace; without a new secret an existing one is kept."""
        spec = provider_spec(provider)
        allowed = set(spec.required) | set(spec.optional)
        unknown = sorted(set(data.fields) - allowed)
        if unknown:
            raise Invalid(f"{provider} credentials have no field(s) {unknown}; expected {sorted(allowed) or 'none'}",
                          {"unknown": unknown})
        missing = [f for f in spec.required if not data.fields.get(f)]
        if missing:
            raise Invalid(f"{provider} credentials need field(s) {missing}", {"missing": missing})
        check_urls(self.egress, credential_urls(spec, data.fields))
        existing = await self.store.credentials.find(tenant_id=tenant_id, provider=provider)
        has_secret = data.secret is not None or (existing is not None and existing["secret_ref"] is not None)
        if spec.secret_required and not has_secret:
            raise Invalid(f"{provider} credentials need the {spec.secret} as the secret", {"secret": "missing"})
        ref = secret_ref(tenant_id, provider) if has_secret else None
        previous = await self.secrets.get(ref) if data.secret is not None else None
        if data.secret is not None:
            await self.secrets.set(ref, data.secret)
        now = now_iso()
        try:
            if existing is None:
                row = await self.store.credentials.insert({
                    "id": new_id("crd"), "tenant_id": tenant_id, "provider": provider,
                    "fields": dict(data.fields), "secret_ref": ref, "created_at": now, "updated_at": now,
                })
            else:
                row = await self.store.credentials.update(
                    existing["id"], {"fields": dict(data.fields), "secret_ref": ref, "updated_at": now},
                    tenant_id=tenant_id,
                )
        except BaseException:
            # The row did not change: put the keyring back as it was, no orphan or lost secret.
            if data.secret is not None and previous:
                await self.secrets.set(ref, previous)
            elif data.secret is not None:
                await self.secrets.delete(ref)
            raise
        return self._public(row)

    async def get(self, tenant_id: str, provider: str) -> Credential:
        provider_spec(provider)
        row = await self.store.credentials.find(tenant_id=tenant_id, provider=provider)
        if row is None:
            raise NotFound(f"no {provider} credential for this tenant", {"provider": provider})
        return self._public(row)

    async def list(self, tenant_id: str, page: PageRequest) -> Page[Credential]:
        rows, total = await self.store.credentials.list(tenant_id=tenant_id, limit=page.limit, offset=page.offset)
        return Page([self._public(r) for r in rows], total, page.limit, page.offset)

    async def delete(self, tenant_id: str, provider: str) -> None:
        cred = await self.get(tenant_id, provider)
        await self.store.credentials.delete(cred.id, tenant_id=tenant_id)
        await self.secrets.delete(secret_ref(tenant_id, provider))

    async def for_engine(self, tenant_id: str, provider: str) -> ProviderCredential | None:
        """The credential an engine is built with (runtime only: it holds the secret)."""
        row = await self.store.credentials.find(tenant_id=tenant_id, provider=provider)
        if row is None:
            return None
        return ProviderCredential(dict(row.get("fields") or {}), await self.secret(tenant_id, provider))

    async def secret(self, tenant_id: str, provider: str) -> str | None:
        """For the runtime only (signature checks, provider clients); never printed or returned by the API."""
        key, generation, now = (tenant_id, provider), WRITES.get("credentials", 0), time.monotonic()
        cached = self._refs.get(key)
        if cached is not None and cached[0] == generation and now < cached[1]:
            ref, version = cached[2], cached[3]
        else:
            row = await self.store.credentials.find(tenant_id=tenant_id, provider=provider)
            ref, version = (None, None) if row is None else (row["secret_ref"], row["updated_at"])
            if len(self._refs) >= SECRET_REF_CACHE_MAX:
                self._refs.clear()
            self._refs[key] = (generation, now + SECRET_REF_TTL_S, ref, version)
        if ref is None:
            return None
        # A secret replaced elsewhere (the CLI, another instance) bumps the row: read again.
        return await self.secrets.get(ref, cached=True, version=version)
