"""Voice profiles: TTS provider, voice id, language and speed, per tenant."""

from __future__ import annotations

from runtime.control.errors import Conflict, NotFound
from runtime.control.models import VoiceProfile, from_row
from runtime.control.pagination import Page, PageRequest
from runtime.control.schemas import VoiceProfileCreate, VoiceProfileUpdate
from runtime.ids import new_id, now_iso
from runtime.store.errors import UniqueViolation
from runtime.store.store import Store


class VoiceProfileService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, tenant_id: str, data: VoiceProfileCreate) -> VoiceProfile:
        now = now_iso()
        row = {"id": new_id("vpr"), "tenant_id": tenant_id, **data.model_dump(), "created_at": now, "updated_at": now}
        try:
            return from_row(VoiceProfile, await self.store.voice_profiles.insert(row))
        except UniqueViolation:
            raise Conflict(f"a voice profile named {data.name!r} already exists", {"name": data.name}) from None

    async def get(self, tenant_id: str, profile_id: str) -> VoiceProfile:
        row = await self.store.voice_profiles.get(profile_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"voice profile {profile_id} not found", {"voice_profile_id": profile_id})
        return from_row(VoiceProfile, row)

    async def resolve(self, tenant_id: str, ref: str) -> VoiceProfile:
        """An id or a unique name within the tenant."""
        row = await self.store.voice_profiles.get(ref, tenant_id=tenant_id)
        if row is None:
            row = await self.store.voice_profiles.find(tenant_id=tenant_id, name=ref)
        if row is None:
            raise NotFound(f"no voice profile with id or name {ref!r}", {"voice_profile": ref})
        return from_row(VoiceProfile, row)

    async def list(self, tenant_id: str, page: PageRequest) -> Page[VoiceProfile]:
        rows, total = await self.store.voice_profiles.list(tenant_id=tenant_id, limit=page.limit, offset=page.offset)
        return Page([from_row(VoiceProfile, r) for r in rows], total, page.limit, page.offset)

    async def update(self, tenant_id: str, profile_id: str, data: VoiceProfileUpdate) -> VoiceProfile:
        changes = data.model_dump(exclude_unset=True, exclude_none=True)
        if changes:
            changes["updated_at"] = now_iso()
        try:
            row = await self.store.voice_profiles.update(profile_id, changes, tenant_id=tenant_id)
        except UniqueViolation:
            raise Conflict(f"a voice profile named {data.name!r} already exists", {"name": data.name}) from None
        if row is None:
            raise NotFound(f"voice profile {profile_id} not found", {"voice_profile_id": profile_id})
        return from_row(VoiceProfile, row)

    async def delete(self, tenant_id: str, profile_id: str) -> None:
        if not await self.store.voice_profiles.delete(profile_id, tenant_id=tenant_id):
            raise NotFound(f"voice profile {profile_id} not found", {"voice_profile_id": profile_id})
