"""The conversation with a TTS that takes a reply's text as a stream (``streaming_text_input``):
the pieces of a reply go to one stream while the model writes, a pause (a tool) ends it, barge-in
keeps the words heard, errors apologise, and a fallback engine speaks what the failed stream had
not."""

from __future__ import annotations

from collections.abc import AsyncIterator

from runtime.events.models import AgentInterrupted
from runtime.pipeline.clock import ManualClock
from runtime.providers.base import AudioChunk
from runtime.providers.failover import FailoverTTS
from tests.pipeline.fakes import FakeStreamingTts, FakeTts, Harness, say, tool_call
from tests.pipeline.test_pipeline_conversation import (
    APOLOGY,
    LONG_REPLY,
    availability,
    caller_turn,
    silence_until_asked,
    silence_until_audio,
)

STREAMING = {"streaming": True}


async def test_a_replys_pieces_go_to_one_stream_as_they_are_written() -> None:
    h = Harness(script=["What time do you open?"], replies=[say("We open at nine. See you then!", delay_s=0.2)],
                greeting="Hello, how can I help?", tts=STREAMING)
    await h.start()
    await h.until_quiet()
    await caller_turn(h)
    assert h.tts.streams == [["Hello, how can I help?"], ["We open at nine.", "See you then!"]]
    rows = [(t.role, t.text) for t in h.session.transcripts]
    assert rows == [("agent", "Hello, how can I help?"), ("caller", "What time do you open?"),
                    ("agent", "We open at nine. See you then!")]
    assert h.transport.generations() == [1, 2]
    await h.close()


async def test_barge_in_keeps_only_the_heard_words_of_a_streamed_reply() -> None:
    h = Harness(script=["Tell me about the menu.", "Do you have salads?"], replies=[say(LONG_REPLY)], tts=STREAMING)
    await h.start()
    await h.speak(500)
    await silence_until_audio(h)
    await h.silence(1500)
    await h.speak(400)
    interrupted = [e for e in h.session.events if isinstance(e, AgentInterrupted)]
    # As with a piece-by-piece engine: each piece's audio is its own entry of the ledger.
    assert interrupted[0].played_ms == 1780 and interrupted[0].heard_text == "We serve pasta and pizza. Our"
    assert h.transport.clears == 1
    await silence_until_asked(h)
    assert h.conv.history.messages[1].content == "We serve pasta and pizza. Our"
    assert h.tts.streams[0] == ["We serve pasta and pizza.", "Our desserts are famous.", "Ask about the specials."]
    await h.close()


async def test_a_pause_for_a_tool_ends_the_stream_and_the_next_piece_opens_another() -> None:
    h = Harness(script=["Is Friday free?"], tools={"check_availability": availability},
                tool_delays={"check_availability": 2.5},
                replies=[tool_call("check_availability", {"date": "friday"}, text="Let me check."),
                         say("Friday is available.")], tts=STREAMING)
    await h.start()
    await caller_turn(h)
    assert h.tts.streams == [["Let me check."], ["One moment please."], ["Friday is available."]]
    assert h.session.transcripts[-1].text == "Let me check. One moment please. Friday is available."
    await h.close()


async def test_a_streamed_reply_that_breaks_apologises() -> None:
    h = Harness(script=["What's on the menu?"], replies=[say("We have pasta. And pizza, of course.")],
                tts={**STREAMING, "fail_on": "pizza"})
    await h.start()
    await caller_turn(h)
    assert h.tts.texts == ["We have pasta.", "And pizza, of course.", APOLOGY]
    assert h.session.transcripts[-1].text.endswith(APOLOGY)
    assert h.metric("voicectl_pipeline_provider_errors_total", modality="tts", kind="exception") == 1
    await h.close()


async def test_a_fallback_engine_speaks_what_the_broken_stream_had_not() -> None:
    clock = ManualClock()
    broken = FakeStreamingTts(clock, fail_on="second")
    fallback = FakeTts(clock)
    switches = []
    tts = FailoverTTS([("streaming", broken), ("local", fallback)], switches.append)
    assert tts.streaming_text_input

    async def pieces() -> AsyncIterator[str]:
        for text in ("The first piece. ", "The second piece. ", "The third piece."):
            yield text

    chunks: list[AudioChunk] = [chunk async for chunk in tts.synthesize_stream(pieces())]
    assert broken.streams == [["The first piece. ", "The second piece. "]]
    # The first piece was spoken in full by the stream; the rest goes to the fallback, one by one.
    assert fallback.texts == ["The second piece. ", "The third piece."]
    assert "".join(chunk.text for chunk in chunks).replace(" ", "") == (
        "The first piece. The second piece. The third piece.".replace(" ", ""))
    assert [(s.from_provider, s.to_provider) for s in switches] == [("streaming", "local")]
    assert not tts.streaming_text_input  # the engine now in use speaks piece by piece
