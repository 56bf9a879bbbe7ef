"""What a version's voice profile changes in its provider choices.

A profile names a TTS provider and a voice. A ``chatterbox`` profile makes Chatterbox the
version's TTS (unless the version names a TTS provider itself) and its ``voice_id`` the voice
(unless the version's ``tts.voice`` says otherwise). ``local`` and ``espeak`` profiles change
nothing: the appliance ships one piper voice, and espeak-ng is only piper's stand-in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def apply_voice_profile(config: dict[str, Any], profile: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` (a version's, not changed) with ``profile``'s choices filled in."""
    if profile is None or profile.get("provider") != "chatterbox":
        return config
    tts = dict(config.get("tts") or {})
    if tts.get("provider") not in (None, "chatterbox"):
        return config  # the version chose another TTS: its profile's voice means nothing there
    tts["provider"] = "chatterbox"
    if not tts.get("voice"):
        tts["voice"] = profile.get("voice_id") or None
    return {**config, "tts": tts}
