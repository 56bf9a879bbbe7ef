"""A typed chat with an agent (``voicectl call --text``): the same conversation engine, brain
and tools as a phone call, with text in place of audio.

The chat is a call with ``provider = "chat"`` in the archive: routed like a call to the number
(tenant, agent, active or pinned version, hours), with its row, events, transcripts and tool
calls, so it can be inspected like any call. Caller lines go in as whole turns
(``Conversation.feed_text``); the agent's text comes back through a TTS that speaks no audio,
only the text, and a transport that plays it at once. It runs in the caller's process against
the same store as the runtime; it does not count toward the runtime's live-call limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from runtime.calls.call_record import CallRecordWriter
from runtime.calls.routing import route_call
from runtime.calls.session import CallSession
from runtime.control.plane import ControlPlane
from runtime.events.bus import EventBus
from runtime.events.models import ProviderFailedOver
from runtime.ids import new_id
from runtime.pipeline.call_analysis import AnalysisGate, attach
from runtime.pipeline.conversation import Conversation
from runtime.pipeline.metrics import PipelineMetrics
from runtime.pipeline.settings import ConversationSettings
from runtime.providers.base import (
    AudioChunk,
    SpeechToText,
    SttStream,
    TextToSpeech,
    Transcript,
)
from runtime.providers.chains import CallProviders, ProviderChains
from runtime.providers.failover import Failover
from runtime.providers.registry import ProviderCredential
from runtime.tools.toolbox import CallToolBox

RATE = 8000
SILENT_MS = 20  # the audio a text line "plays": one frame, so the reply machinery runs unchanged


class NoSpeech(SttStream):
    """Nothing is ever heard: the caller types."""

    rate = RATE

    def __init__(self) -> None:
        self._closed = asyncio.Event()

    async def push(self, pcm: bytes) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        self._closed.set()

    async def __aiter__(self) -> AsyncIterator[Transcript]:  # type: ignore[override]
        await self._closed.wait()
        return
        yield  # an async generator that ends when the chat closes


class TypedInput(SpeechToText):
    name = "text"
    rate = RATE

    async def _open(self) -> SttStream:
        return NoSpeech()


class TextOut(TextToSpeech):
    """Each piece of reply text as one silent frame carrying the text."""

    name = "text"

    async def _synthesize(self, text: str) -> AsyncIterator[AudioChunk]:  # type: ignore[override]
        yield AudioChunk(bytes(RATE * SILENT_MS // 1000 * 2), RATE, text)


class InstantTransport:
    """Everything sent counts as heard at once; nothing is ever queued."""

    rate = RATE

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}

    def send_audio(self, pcm: bytes, generation: int) -> None:
        self.sent[generation] = self.sent.get(generation, 0) + len(pcm) * 1000 // (2 * RATE)

    def sent_ms(self, generation: int) -> int:
        return self.sent.get(generation, 0)

    def queued_ms(self) -> int:
        return 0

    async def clear(self) -> None:
        return None

    async def played_out(self, generation: int) -> bool:
        return True  # nothing confirms playback on this way back

    def drop_stale(self, generation: int) -> None:
        return None


class ChatSession(CallSession):
    """A call session that also tells the chat client about every final utterance."""

    __slots__ = ("on_utterance",)

    async def add_transcript(self, role: str, text: str, start_ms: int | None, end_ms: int | None,
                             interrupted: bool, segments: list[dict[str, Any]] | None = None) -> None:
        await super().add_transcript(role, text, start_ms, end_ms, interrupted, segments)
        callback = getattr(self, "on_utterance", None)
        if callback is not None:
            callback(role, text)


async def text_chat(plane: ControlPlane, settings: Any, number: str, lines: list[str], *,
                    from_number: str = "+15550001111", reply_timeout_s: float = 30.0,
                    on_utterance: Callable[[str, str], None] | None = None) -> str:
    """Chat with the agent on ``number``: the greeting, then each line and its answer. Returns
    the call id (the chat is archived as a call)."""
    route = await route_call(plane.store, number, datetime.now(UTC))
    bus = EventBus(plane.store)
    session = ChatSession(id=new_id("call"), tenant_id=route.tenant_id, provider="chat", direction="inbound",
                          from_number=from_number, to_number=number, store=plane.store, bus=bus, route=route)
    session.on_utterance = on_utterance
    await session.insert_row()
    await session.connect()
    chains = ProviderChains(settings)
    timezone = route.tenant.get("timezone") or "UTC"
    secrets, tenant_id = plane.credentials, route.tenant_id

    async def credential(provider: str) -> ProviderCredential | None:
        return await secrets.for_engine(tenant_id, provider)

    conversation: Conversation | None = None

    def failed_over(switch: Failover) -> None:  # reported as a phone call's are, in order with its events
        if conversation is not None:
            conversation.emit(ProviderFailedOver(modality=switch.modality, from_provider=switch.from_provider,
                                                 to_provider=switch.to_provider, reason=switch.reason))

    # Engines load lazily: only the brain (the version's LLM chain) is used.
    chosen = await chains.for_call(route.config, timezone=timezone, credentials=credential, report=failed_over)
    brain = chosen.llm
    heard, spoken = TypedInput(), TextOut()  # what the chat really hears and speaks with
    attach(session, CallProviders(heard, brain, spoken), route.config, chains=chains, gate=AnalysisGate(settings.analysis), timezone=timezone,
           credentials=credential)
    http_tools = None
    try:
        import aiohttp

        from runtime.egress.aiohttp_client import guarded_session

        http_tools = guarded_session(plane.egress, timeout=aiohttp.ClientTimeout(total=60))
        toolbox = CallToolBox.for_call(route.config, store=plane.store, emit=session.emit, timezone=timezone,
                                       http=http_tools,
                                       signing_secret=lambda t: plane.credentials.secret(t, "tools"),
                                       callbacks=plane.callbacks)
        conversation = Conversation(session, stt=heard, llm=brain, tts=spoken,
                                    transport=InstantTransport(), settings=ConversationSettings.from_route(route),
                                    vad=_NeverSpeech(), toolbox=toolbox,
                                    metrics=PipelineMetrics(CollectorRegistry()))
        await conversation.start()
        await _answered(conversation, session, reply_timeout_s)
        for line in lines:
            if not session.live:
                break
            conversation.feed_text(line)
            await _answered(conversation, session, reply_timeout_s)
        await conversation.close()
        await chosen.aclose()
        if session.live:
            await session.end("caller_hangup", hangup_by="caller")
        await CallRecordWriter(plane.callbacks).record(session)  # as the runtime's tracker does after a call
    finally:
        if http_tools is not None:
            await http_tools.close()
    return session.id


async def _answered(conversation: Conversation, session: CallSession, timeout_s: float) -> None:
    """Until the agent has finished its reply (or ended the chat)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    await asyncio.sleep(0)
    while conversation.speaking and session.live:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the agent did not answer within {timeout_s:g} s")
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the reply's transcript and events are written in order


class _NeverSpeech:
    def is_speech(self, frame: bytes) -> bool:
        return False
