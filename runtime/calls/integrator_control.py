"""The integrator's transcribe and speaking sessions through the API (seed 001, our naming):
``/api/v1/transcribes`` and ``/api/v1/speakings``. Sessions belong to a live call of the tenant
(runtime.calls.integrator_sessions); another tenant's, or none, is 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import Field

from runtime.calls.integrator_sessions import ACTIVE, MAX_PER_CALL, STOPPED, Speaking, Transcribe
from runtime.calls.live_control import MAX_SAY_CHARS, CallNotConnected, LiveControl
from runtime.calls.locator import CallLocator
from runtime.control.errors import Conflict, Invalid, NotFound
from runtime.control.schemas import Input
from runtime.events.models import SpeakingStarted, SpeakingStopped
from runtime.ids import now_iso
from runtime.store.store import Store

Direction = Literal["in", "out", "both"]
# (call session, conversation, provider=, voice_id=, language=) -> (engine or None: the call's own, provider
# name); ValueError: a choice that cannot be made. runtime.pipeline.engine.ConversationEngine.speaking_voice.
SpeakingVoices = Callable[..., Awaitable[tuple[Any, str]]]


class SessionStopped(Conflict):
    code = "session_stopped"


class TranscribeCreate(Input):
    reference_type: Literal["call"] = "call"
    reference_id: str = Field(description="the call id")
    direction: Direction = Field("in", description="in: the caller's words, out: the agent's, both")


class SpeakingCreate(Input):
    reference_type: Literal["call"] = "call"
    reference_id: str = Field(description="the call id")
    language: str | None = Field(None, max_length=20, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
                                 description="BCP 47 (es, de-DE); default: the call's agent version")
    provider: str | None = Field(None, max_length=40, description="a TTS provider; default: the call's chain")
    voice_id: str | None = Field(None, max_length=200, description="a voice of that provider; default: the call's")
    direction: Direction = Field("in", description="in or both: the caller hears it (a call here has no other side)")


class SayText(Input):
    text: str = Field(min_length=1, max_length=MAX_SAY_CHARS)


class IntegratorControl:
    def __init__(self, locator: CallLocator, store: Store, voices: SpeakingVoices | None = None) -> None:
        self.locator, self.live, self.voices = locator, LiveControl(locator, store), voices

    # Transcribes

    async def create_transcribe(self, tenant_id: str, req: TranscribeCreate) -> dict[str, Any]:
        session = await self.live.live_session(tenant_id, req.reference_id)
        if len(session.transcribes) >= MAX_PER_CALL:
            raise Conflict(f"a call holds at most {MAX_PER_CALL} transcribe sessions", {"call_id": session.id})
        transcribe = await session.start_transcribe(req.direction)
        return transcribe.to_dict()

    def _transcribe(self, tenant_id: str, transcribe_id: str) -> tuple[Any, Transcribe]:
        """(its live call or None: it stopped with its call, the session)."""
        for session in self.locator.live_calls(tenant_id):
            found = session.transcribes.get(transcribe_id)
            if found is not None:
                return session, found
        ended = self.locator.ended_session(tenant_id, transcribe_id)
        if isinstance(ended, Transcribe):
            return None, ended
        raise NotFound(f"transcribe {transcribe_id} not found on a live call", {"transcribe_id": transcribe_id})

    async def stop_transcribe(self, tenant_id: str, transcribe_id: str) -> dict[str, Any]:
        session, transcribe = self._transcribe(tenant_id, transcribe_id)
        if session is not None:
            await session.stop_transcribe(transcribe, "api")
        return transcribe.to_dict()

    def get_transcribe(self, tenant_id: str, transcribe_id: str) -> dict[str, Any]:
        return self._transcribe(tenant_id, transcribe_id)[1].to_dict()

    def list_transcribes(self, tenant_id: str) -> dict[str, Any]:
        items = [t.to_dict() for s in self.locator.live_calls(tenant_id) for t in s.transcribes.values()]
        return {"items": items, "total": len(items)}

    # Speakings

    async def create_speaking(self, tenant_id: str, req: SpeakingCreate) -> dict[str, Any]:
        session = await self.live.live_session(tenant_id, req.reference_id)
        conversation = session.conversation
        if session.state != "connected" or conversation is None:
            raise CallNotConnected(f"call {session.id} is {session.state}: a speaking session needs it connected",
                                   {"call_id": session.id, "status": session.state})
        if req.direction == "out":  # no connected party besides the caller: "both" is "in"
            raise Invalid("a call here has one far side: direction must be in (or both)", {"field": "direction"})
        if len(session.speakings) >= MAX_PER_CALL:
            raise Conflict(f"a call holds at most {MAX_PER_CALL} speaking sessions", {"call_id": session.id})
        engine, provider = None, conversation.tts.provider_name
        if self.voices is not None and (req.provider or req.voice_id or req.language):
            try:
                engine, provider = await self.voices(session, conversation, provider=req.provider,
                                                     voice_id=req.voice_id, language=req.language)
            except ValueError as exc:
                field, _, message = str(exc).partition(": ")
                raise Invalid(message or field, {"field": field if message else None}) from None
        speaking = Speaking(session.id, tenant_id, req.direction, provider, req.voice_id, req.language, tts=engine)
        session.add_speaking(speaking)
        speaking.status = ACTIVE  # the call's TTS is up already: nothing to connect
        await session.emit(SpeakingStarted(speaking_id=speaking.id))
        return speaking.to_dict()

    def _speaking(self, tenant_id: str, speaking_id: str) -> tuple[Any, Speaking]:
        """(its live call or None: it stopped with its call, the session)."""
        for session in self.locator.live_calls(tenant_id):
            found = session.speakings.get(speaking_id)
            if found is not None:
                return session, found
        ended = self.locator.ended_session(tenant_id, speaking_id)
        if isinstance(ended, Speaking):
            return None, ended
        raise NotFound(f"speaking {speaking_id} not found on a live call", {"speaking_id": speaking_id})

    def _active(self, tenant_id: str, speaking_id: str) -> tuple[Any, Speaking]:
        session, speaking = self._speaking(tenant_id, speaking_id)
        if speaking.status != ACTIVE or session is None or session.conversation is None:
            raise SessionStopped(f"speaking {speaking_id} is {speaking.status}", {"speaking_id": speaking_id})
        return session, speaking

    def say(self, tenant_id: str, speaking_id: str, text: str) -> dict[str, Any]:
        session, speaking = self._active(tenant_id, speaking_id)
        if not session.conversation.say_now(text, interrupt=False, tts=speaking.tts):
            raise Conflict("too many lines are waiting to be said on this call", {"speaking_id": speaking_id})
        speaking.said += 1
        return speaking.to_dict()

    def flush(self, tenant_id: str, speaking_id: str) -> dict[str, Any]:
        session, speaking = self._active(tenant_id, speaking_id)
        session.conversation.flush_lines()
        return speaking.to_dict()

    async def stop_speaking(self, tenant_id: str, speaking_id: str) -> dict[str, Any]:
        session, speaking = self._speaking(tenant_id, speaking_id)
        if speaking.status != STOPPED and session is not None:
            speaking.status, speaking.stopped_at = STOPPED, now_iso()
            if session.conversation is not None:
                session.conversation.flush_lines()
            await session.emit(SpeakingStopped(speaking_id=speaking.id, reason="api"))
        return speaking.to_dict()

    def get_speaking(self, tenant_id: str, speaking_id: str) -> dict[str, Any]:
        return self._speaking(tenant_id, speaking_id)[1].to_dict()

    def list_speakings(self, tenant_id: str) -> dict[str, Any]:
        items = [sp.to_dict() for s in self.locator.live_calls(tenant_id) for sp in s.speakings.values()]
        return {"items": items, "total": len(items)}
