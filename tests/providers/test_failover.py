"""Fallback chains inside a running conversation (runtime.providers.failover): a refused key
moves the call to the next engine at once and for good, a missed first byte only for the turn,
a reply that breaks mid-way is finished on the next engine without an apology, and every switch
is reported with its reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from runtime.providers.base import LanguageModel, LlmEvent, LlmRequest, ProviderError, RetryPolicy, TextDelta
from runtime.providers.failover import Failover, FailoverLLM, FailoverSTT, FailoverTTS
from tests.pipeline.fakes import FakeLlm, FakeStt, FakeTts, Harness, say
from tests.pipeline.test_pipeline_conversation import APOLOGY, caller_turn


def chained_llm(h: Harness, primary: LanguageModel, switches: list[Failover]) -> FakeLlm:
    """Put ``primary`` before the harness's LLM, which becomes the fallback."""
    fallback = h.llm
    h.conv.llm = FailoverLLM([("primary", primary), ("fallback", fallback)], switches.append)
    return fallback


async def test_a_refused_key_fails_over_at_once_and_for_the_rest_of_the_call() -> None:
    h = Harness(script=["What's on the menu?", "And for dessert?"])
    primary = FakeLlm(h.clock, [[ProviderError("anthropic", "auth", "invalid x-api-key", status=401)]])
    switches: list[Failover] = []
    fallback = chained_llm(h, primary, switches)
    await h.start()
    await caller_turn(h)
    assert h.tts.texts == ["You said: What's on the menu?."]
    assert [(s.from_provider, s.to_provider, s.kind, s.for_turn_only) for s in switches] == [
        ("primary", "fallback", "auth", False)]
    assert switches[0].reason == "the tenant's anthropic credential was refused (401)"
    await caller_turn(h)
    assert len(primary.requests) == 1 and len(fallback.requests) == 2  # the primary is not asked again
    assert APOLOGY not in h.tts.texts
    await h.close()


async def test_a_reply_broken_mid_way_is_finished_on_the_fallback_with_what_was_said() -> None:
    broken = [TextDelta("Let me look "), TextDelta("that up. "), ProviderError("anthropic", "server", "stream broke")]
    h = Harness(script=["What's on the menu?"], replies=[say("We have pasta and pizza.")])
    primary = FakeLlm(h.clock, [broken])
    switches: list[Failover] = []
    fallback = chained_llm(h, primary, switches)
    await h.start()
    await caller_turn(h)
    assert h.tts.texts == ["Let me look that up.", "We have pasta and pizza."]
    assert APOLOGY not in h.tts.texts
    asked = fallback.requests[0]
    assert [(m.role, m.content) for m in asked.messages[-2:]] == [
        ("user", "What's on the menu?"), ("assistant", "Let me look that up. ")]
    assert asked.model is None  # the version's model names the primary's, not the fallback's
    assert [m.content for m in h.conv.history.messages if m.role == "assistant"] == [
        "Let me look that up. We have pasta and pizza."]
    assert switches[0].kind == "server" and not switches[0].for_turn_only
    await h.close()


class SlowLlm(LanguageModel):
    """Answers after ``delay_s`` of real time (the first-byte timeout runs on the loop's clock)."""

    name = "slow"

    def __init__(self, delay_s: float, policy: RetryPolicy) -> None:
        super().__init__(policy)
        self.delay_s, self.requests = delay_s, 0

    async def _stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        self.requests += 1
        await asyncio.sleep(self.delay_s)
        yield TextDelta("Too late.")


async def test_a_missed_first_byte_uses_the_fallback_for_that_turn_only() -> None:
    h = Harness(script=["Hello?", "Still there?"])
    primary = SlowLlm(10.0, RetryPolicy(retries=2, first_byte_timeout_s=0.05, retry_timeouts=False))
    switches: list[Failover] = []
    fallback = chained_llm(h, primary, switches)
    await h.start()
    await h.speak(600)
    await h.silence(600)
    await asyncio.sleep(0.2)  # real time for the first-byte timeout
    await h.until_quiet()
    assert h.tts.texts == ["You said: Hello?."]
    assert primary.requests == 1  # not retried: the fallback answers at once
    assert [(s.kind, s.for_turn_only) for s in switches] == [("timeout", True)]
    await h.speak(600)
    await h.silence(600)
    await asyncio.sleep(0.2)
    await h.until_quiet()
    assert primary.requests == 2  # a new turn tries the primary again
    assert len(fallback.requests) == 2 and len(switches) == 2
    await h.close()


async def test_tts_breaking_mid_sentence_speaks_the_rest_on_the_fallback() -> None:
    h = Harness(script=["What's on the menu?"], replies=[say("We have pasta. And pizza, of course.")])
    primary = FakeTts(h.clock, per_word=True, fail_on="pizza",
                      error=ProviderError("chatterbox", "server", "stream broke"))
    fallback = h.tts
    switches: list[Failover] = []
    chain = FailoverTTS([("chatterbox", primary), ("local", fallback)], switches.append)
    h.conv.tts = h.conv.voice.tts = chain
    await h.start()
    await caller_turn(h)
    assert primary.texts == ["We have pasta.", "And pizza, of course."]
    assert fallback.texts == ["pizza, of course."]  # "And" was heard already
    assert APOLOGY not in fallback.texts
    assert h.session.transcripts[-1].text == "We have pasta. And pizza, of course."
    assert [(s.from_provider, s.to_provider) for s in switches] == [("chatterbox", "local")]
    await h.close()


async def test_stt_that_cannot_connect_or_breaks_hands_over_to_the_next_engine() -> None:
    h = Harness(script=["Hello."])
    broken = FakeStt(h.clock, ["never heard"])

    async def refuse() -> None:
        raise ProviderError("deepgram", "unavailable", "connection refused")

    switches: list[Failover] = []
    fallback = h.stt
    h.conv.stt = FailoverSTT([("deepgram", broken), ("local", fallback)], switches.append)
    broken._open = refuse  # type: ignore[method-assign]
    await h.start()
    assert len(fallback.streams) == 1 and switches[0].kind == "unavailable"
    await caller_turn(h)
    assert h.tts.texts == ["You said: Hello.."]
    await h.close()

    # A stream that breaks during the call: the pipeline reopens it on the next engine.
    h = Harness(script=["Hello again."])
    first = FakeStt(h.clock, [])
    switches = []
    h.conv.stt = FailoverSTT([("deepgram", first), ("local", h.stt)], switches.append)
    await h.start()
    first.stream.fail(ProviderError("deepgram", "server", "socket closed and not reopened"))
    await h.wait(1.5)
    assert len(h.stt.streams) == 1 and [s.to_provider for s in switches] == ["local"]
    await caller_turn(h)
    assert h.tts.texts == ["You said: Hello again.."]
    await h.close()
