"""/api/v1/voice-profiles."""

from __future__ import annotations

from runtime.api.endpoint import PAGE, Ctx, Route
from runtime.control.models import VoiceProfile
from runtime.control.schemas import VoiceProfileCreate, VoiceProfileUpdate


async def create_profile(ctx: Ctx) -> VoiceProfile:
    return await ctx.control.voices.create(ctx.tenant, ctx.body)


async def list_profiles(ctx: Ctx):
    return await ctx.control.voices.list(ctx.tenant, ctx.page())


async def get_profile(ctx: Ctx) -> VoiceProfile:
    return await ctx.control.voices.get(ctx.tenant, ctx.param("profile_id"))


async def update_profile(ctx: Ctx) -> VoiceProfile:
    return await ctx.control.voices.update(ctx.tenant, ctx.param("profile_id"), ctx.body)


async def delete_profile(ctx: Ctx) -> None:
    await ctx.control.voices.delete(ctx.tenant, ctx.param("profile_id"))


ROUTES = [
    Route("GET", "/api/v1/voice-profiles", list_profiles, "List voice profiles", response=VoiceProfile,
          paged=True, query=PAGE, tag="voice-profiles"),
    Route("POST", "/api/v1/voice-profiles", create_profile, "Create a voice profile", body=VoiceProfileCreate,
          status=201, response=VoiceProfile, tag="voice-profiles"),
    Route("GET", "/api/v1/voice-profiles/{profile_id}", get_profile, "Show a voice profile",
          response=VoiceProfile, tag="voice-profiles"),
    Route("PATCH", "/api/v1/voice-profiles/{profile_id}", update_profile, "Update a voice profile",
          body=VoiceProfileUpdate, response=VoiceProfile, tag="voice-profiles"),
    Route("DELETE", "/api/v1/voice-profiles/{profile_id}", delete_profile, "Delete a voice profile",
          status=204, tag="voice-profiles"),
]
