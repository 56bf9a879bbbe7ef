"""What a version's voice profile changes in its TTS choice.

A profile names a TTS provider, a voice and a speed. A profile of a provider with voices
(Chatterbox, ElevenLabs, Cartesia, OpenAI: the registry's ``voices`` capability) makes that the
version's TTS (unless the version names another TTS itself), its ``voice_id`` the voice (unless
the version's ``tts.voice`` says otherwise; ``default`` leaves the provider's default) and, where
the provider can set the rate (``speed`` capability), its ``speed`` the rate, kept within what
the provider accepts. ``local`` and ``espeak`` profiles change nothing: the appliance ships one
piper voice, and espeak-ng is only piper's stand-in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runtime.providers import registry

if TYPE_CHECKING:
    from runtime.control.schemas import AgentConfig

DEFAULT_VOICE = "default"


def apply_voice_profile(agent: AgentConfig, profile: Mapping[str, Any] | None) -> AgentConfig:
    """``agent`` (not changed) with ``profile``'s choices filled in."""
    if profile is None:
        return agent
    entry = registry.find("tts", profile.get("provider") or "")
    if entry is None or not entry.capabilities.voices:
        return agent
    tts = agent.tts
    if tts.provider not in (None, entry.name):
        return agent  # the version chose another TTS: its profile's voice means nothing there
    values = tts.option_values
    if not values.get("voice") and profile.get("voice_id") and profile["voice_id"] != DEFAULT_VOICE:
        values["voice"] = profile["voice_id"]
    speed = profile.get("speed")
    if entry.capabilities.speed and values.get("speed") is None and speed is not None and speed != 1.0:
        values["speed"] = _within(entry.options.model_fields["speed"], float(speed))
    choice = type(tts).model_validate({**tts.model_dump(exclude_none=True), **values, "provider": entry.name})
    return agent.model_copy(update={"tts": choice})


def _within(field: Any, value: float) -> float:
    """``value`` clamped to the field's bounds (a profile's 0.5-2.0 against a provider's range)."""
    for bound in field.metadata:
        if (low := getattr(bound, "ge", None)) is not None:
            value = max(value, low)
        if (high := getattr(bound, "le", None)) is not None:
            value = min(value, high)
    return value
