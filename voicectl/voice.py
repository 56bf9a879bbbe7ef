"""voicectl voice create|list|show|update|delete: voice profiles (TTS provider, voice, language, speed)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from voicectl.common import (
    JsonOpt,
    LimitOpt,
    MaybeTenantOpt,
    OffsetOpt,
    TenantOpt,
    new_app,
    owning_tenant,
    page,
    print_json,
    print_page,
    provider_option,
    resolve_tenant,
    resolve_voice_profile,
    run,
    say,
    show_record,
)

app = new_app("Voice profiles: TTS provider, voice id, language and speed.")

ProfileArg = Annotated[str, typer.Argument(help="Voice profile id, or its name with --tenant.", show_default=False)]
ProviderOpt = Annotated[str | None, provider_option("tts", "--provider", "TTS provider")]
VoiceIdOpt = Annotated[str | None, typer.Option("--voice-id", help="The provider's voice id.")]
LanguageOpt = Annotated[str | None, typer.Option("--language", help="Language code, e.g. en.")]
SpeedOpt = Annotated[float | None, typer.Option("--speed", help="Speaking rate, 0.5-2.0.")]


def _fields(provider: str | None, voice_id: str | None, language: str | None, speed: float | None) -> dict[str, Any]:
    values = {"provider": provider, "voice_id": voice_id, "language": language, "speed": speed}
    return {k: v for k, v in values.items() if v is not None}


async def _profile(plane: Any, tenant: str | None, ref: str) -> tuple[str, Any]:
    tenant_id = await owning_tenant(plane, tenant, "voice_profiles", ref, "voice profile", named=True)
    return tenant_id, await resolve_voice_profile(plane, tenant_id, ref)


def _show(data: dict[str, Any], as_json: bool, verb: str | None = None) -> None:
    show_record(data, as_json, verb and f"{verb} voice profile {data['name']} ({data['id']})")


@app.command("create")
def create(
    tenant: TenantOpt,
    name: Annotated[str, typer.Option("--name", help="Profile name, unique in the tenant.", show_default=False)],
    provider: ProviderOpt = None,
    voice_id: VoiceIdOpt = None,
    language: LanguageOpt = None,
    speed: SpeedOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a voice profile."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import VoiceProfileCreate

        tenant_id = await resolve_tenant(plane, tenant)
        data = VoiceProfileCreate(name=name, **_fields(provider, voice_id, language, speed))
        return (await plane.voices.create(tenant_id, data)).to_dict()

    _show(run(go), as_json, "created")


@app.command("list")
def list_(tenant: TenantOpt, limit: LimitOpt = 50, offset: OffsetOpt = 0, as_json: JsonOpt = False) -> None:
    """List a tenant's voice profiles."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        return (await plane.voices.list(tenant_id, page(limit, offset))).to_dict()

    result = run(go)
    print_page(
        result, as_json,
        ["id", "name", "provider", "voice id", "language", "speed"],
        [[v["id"], v["name"], v["provider"], v["voice_id"], v["language"], v["speed"]] for v in result["items"]],
        title="voice profiles", total=result["total"], offset=offset,
    )


@app.command("show")
def show(profile: ProfileArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Show a voice profile."""

    async def go(plane: Any) -> dict[str, Any]:
        return (await _profile(plane, tenant, profile))[1].to_dict()

    _show(run(go), as_json)


@app.command("update")
def update(
    profile: ProfileArg,
    tenant: MaybeTenantOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    provider: ProviderOpt = None,
    voice_id: VoiceIdOpt = None,
    language: LanguageOpt = None,
    speed: SpeedOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a voice profile."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import VoiceProfileUpdate

        tenant_id, found = await _profile(plane, tenant, profile)
        changes = _fields(provider, voice_id, language, speed)
        if name is not None:
            changes["name"] = name
        return (await plane.voices.update(tenant_id, found.id, VoiceProfileUpdate(**changes))).to_dict()

    _show(run(go), as_json, "updated")


@app.command("delete")
def delete(profile: ProfileArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Delete a voice profile."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id, found = await _profile(plane, tenant, profile)
        await plane.voices.delete(tenant_id, found.id)
        return {"id": found.id, "name": found.name, "deleted": True}

    data = run(go)
    if as_json:
        print_json(data)
    else:
        say(f"deleted voice profile {data['name']} ({data['id']})")
