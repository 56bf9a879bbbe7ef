"""The conversation with fake STT/LLM/TTS/transport on a manual clock: turn taking, endpointing,
barge-in, stale audio, tools, provider errors, silence, DTMF, call ending and latency.

Caller audio is 20 ms frames, loud (speech) or silent, each moving the clock 20 ms; the fake
TTS makes 50 ms of audio per character and the fake transport plays it out in real time."""

from __future__ import annotations

import asyncio
import json

from runtime.events.models import AgentInterrupted, ToolCalled, TranscriptInterim, TurnLatency
from runtime.providers.base import (
    LlmDone,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallRequest,
    Transcript,
    TranscriptSegment,
)
from runtime.tools.base import ToolResult
from tests.pipeline.fakes import Harness, say, tool_call

APOLOGY = "Sorry, I had a problem there. Could you say that again?"


async def silence_until_asked(h: Harness, limit_ms: int = 5000) -> int:
    """Feed silence until the LLM has been asked; the milliseconds of silence that took."""
    asked, waited = len(h.llm.requests), 0
    while len(h.llm.requests) == asked and waited < limit_ms:
        await h.silence(20)
        waited += 20
    return waited


async def silence_until_audio(h: Harness, limit_ms: int = 5000) -> None:
    sent, waited = len(h.transport.sent), 0
    while len(h.transport.sent) == sent and waited < limit_ms:
        await h.silence(20)
        waited += 20
    assert len(h.transport.sent) > sent, "no reply audio"


async def caller_turn(h: Harness, speech_ms: int = 600) -> None:
    """The caller speaks, then is quiet until the agent's reply has played out."""
    await h.speak(speech_ms)
    await silence_until_asked(h)
    await h.until_quiet()


# Turn taking


async def test_greeting_then_a_turn_and_its_reply() -> None:
    h = Harness(script=["What time do you open?"], replies=[say("We open at nine. See you then!")],
                greeting="Hello, how can I help?")
    await h.start()
    assert h.tts.texts == ["Hello, how can I help?"]
    assert h.transport.sent[0].generation == 1
    await h.until_quiet()
    assert h.stt.stream.pushed == 0  # silence never reaches the STT
    await caller_turn(h)
    assert h.stt.stream.pushed > 0 and h.stt.stream.flushes == 1
    assert h.tts.texts[1:] == ["We open at nine.", "See you then!"]
    assert h.transport.generations() == [1, 2]
    request = h.llm.requests[0]
    assert request.system == "You are a test agent."
    assert [(m.role, m.content) for m in request.messages] == [
        ("assistant", "Hello, how can I help?"), ("user", "What time do you open?")]
    assert [(m.role, m.content) for m in h.conv.history.messages][-1] == ("assistant", "We open at nine. See you then!")
    rows = [(t.role, t.text, t.interrupted) for t in h.session.transcripts]
    assert rows == [("agent", "Hello, how can I help?", False), ("caller", "What time do you open?", False),
                    ("agent", "We open at nine. See you then!", False)]
    caller = h.session.transcripts[1]
    assert caller.end_ms - caller.start_ms == 600
    assert h.topics() == ["speech.started", "speech.ended", "turn.latency"]
    assert h.metric("voicectl_turns_total", outcome="replied") == 1
    await h.close()


async def test_first_audio_does_not_wait_for_the_whole_reply() -> None:
    h = Harness(script=["Tell me everything."],
                replies=[[TextDelta("Sure, here is the first part, "), 2.0, TextDelta("and here is the rest."), LlmDone()]])
    await h.start()
    await h.speak(500)
    await silence_until_audio(h)
    assert h.tts.texts == ["Sure, here is the first part,"]  # a clause, spoken while the model writes
    assert len(h.llm.requests) == 1 and not h.conv.history.messages[-1].role == "assistant"
    await h.until_quiet()
    assert h.tts.texts == ["Sure, here is the first part,", "and here is the rest."]
    await h.close()


async def test_complete_text_ends_the_turn_before_the_endpoint_silence() -> None:
    h = Harness(script=["What time do you open?"])
    await h.start()
    await h.speak(600)
    waited = await silence_until_asked(h)
    assert waited == 340  # flush at 260 ms of silence + 100 ms decode; not the full 500 ms
    await h.close()


async def test_unpunctuated_text_ends_at_the_endpoint_silence() -> None:
    h = Harness(script=["what time do you open"])
    await h.start()
    await h.speak(600)
    assert await silence_until_asked(h) == 500
    await h.close()


async def test_incomplete_text_waits_longer_and_a_resumed_turn_is_joined() -> None:
    h = Harness(script=["My number is 555 123,", "4567."])
    await h.start()
    await h.speak(800)
    assert await silence_until_asked(h, limit_ms=1400) == 1400  # not asked yet: the number is unfinished
    await h.speak(600)  # the caller goes on
    await silence_until_asked(h)
    assert h.llm.requests[0].messages[-1].content == "My number is 555 123, 4567."
    callers = [t for t in h.session.transcripts if t.role == "caller"]
    assert [t.text for t in callers] == ["My number is 555 123, 4567."]

    h2 = Harness(script=["I'd like to book a table and"])
    await h2.start()
    await h2.speak(600)
    assert await silence_until_asked(h2) == 1500  # max(1500, 3 x 500 ms)
    await h.close()
    await h2.close()


async def test_noise_that_the_stt_does_not_hear_is_not_a_turn() -> None:
    h = Harness(script=[""])  # the engine sends no final for it
    await h.start()
    await h.speak(200)
    await h.silence(3000)
    assert h.llm.requests == [] and h.conv.history.messages == []
    assert h.topics() == ["speech.started", "speech.ended"]
    await h.close()


async def test_a_turn_keeps_every_piece_of_its_finals_with_their_confidence() -> None:
    # The first pause's final comes in two segments (the second less sure), the second's as plain text.
    first = Transcript("No wait, make it six. And", final=True, confidence=0.6, segments=(
        TranscriptSegment("No wait, make it six.", 0.41), TranscriptSegment("And", 0.83)))
    h = Harness(script=[first, "we need a high chair."], replies=[say("Sure.")])
    await h.start()
    await h.speak(900)
    await h.silence(300)  # flushed, but the text is unfinished ("And"): the turn waits
    await h.speak(600)
    await silence_until_asked(h)
    await h.until_quiet()
    text = "No wait, make it six. And we need a high chair."
    assert h.llm.requests[0].messages[-1].content == text
    row = h.session.transcripts[0]
    assert (row.role, row.text) == ("caller", text)
    assert row.segments == [{"text": "No wait, make it six.", "confidence": 0.41}, {"text": "And", "confidence": 0.83},
                            {"text": "we need a high chair.", "confidence": None}]
    await h.close()


NOT_UNDERSTOOD = "Sorry, I didn't catch that."


async def test_speech_with_no_accepted_words_gets_the_not_understood_line_at_once() -> None:
    # The engine heard speech but accepted no words (its filter rejected them): no final at all.
    h = Harness(script=["", "Two people at seven."], replies=[say("Let me check.")], greeting="Hi.")
    await h.start()
    await h.until_quiet()
    await h.speak(800)
    await h.silence(500 + 1500 + 40)  # endpoint + the final's timeout: the turn ends with no text
    await h.until_quiet()
    assert h.tts.texts == ["Hi.", NOT_UNDERSTOOD]  # said now, long before the 8 s re-prompt
    assert h.llm.requests == []  # nothing reached the brain
    assert h.metric("voicectl_turns_total", outcome="not_understood") == 1
    assert [(t.role, t.text) for t in h.session.transcripts] == [("agent", "Hi."), ("agent", NOT_UNDERSTOOD)]
    await caller_turn(h)  # the caller says it again, and is answered as usual
    assert h.tts.texts[-1] == "Let me check."
    assert h.llm.requests[0].messages[-1].content == "Two people at seven."
    await h.close()


async def test_an_empty_final_brings_the_not_understood_line_at_the_endpoint() -> None:
    # The local engine says at once that it understood nothing (an empty final): no final timeout.
    h = Harness(script=[Transcript("", final=True, speech_final=True)])
    await h.start()
    await h.speak(800)
    await h.silence(480)  # flushed at 250 ms, the empty final at 350 ms: the caller may still go on
    assert h.tts.texts == []
    await h.silence(40)  # the endpoint (500 ms)
    await h.wait(0)
    assert h.tts.texts == [NOT_UNDERSTOOD]
    await h.close()


async def test_the_not_understood_line_can_be_turned_off_and_is_not_said_over_the_agent() -> None:
    off = Harness(script=[""], config={"turn": {"not_understood_reply": ""}})
    await off.start()
    await off.speak(800)
    await off.silence(3000)
    assert off.tts.texts == [] and off.metric("voicectl_turns_total", outcome="empty") == 1
    await off.close()
    # Speech under the interruption threshold over the agent's voice: the agent goes on, nothing else is said.
    h = Harness(script=[""], greeting="Hello and welcome to the restaurant, how can I help you today?")
    await h.start()
    await h.speak(280)  # past heard_speech_ms (250), short of min_interruption_ms (300)
    await h.until_quiet()
    assert h.tts.texts == ["Hello and welcome to the restaurant, how can I help you today?"]
    assert h.metric("voicectl_turns_total", outcome="not_understood") == 0
    await h.close()


# Barge-in


LONG_REPLY = "We serve pasta and pizza. Our desserts are famous. Ask about the specials."


async def test_barge_in_keeps_only_the_heard_words() -> None:
    h = Harness(script=["Tell me about the menu.", "Do you have salads?"], replies=[say(LONG_REPLY)])
    await h.start()
    await h.speak(500)
    await silence_until_audio(h)
    await h.silence(1500)  # 1.5 s of the reply played
    await h.speak(400)
    interrupted = [e for e in h.session.events if isinstance(e, AgentInterrupted)]
    assert len(interrupted) == 1
    # The 15th frame of speech (300 ms) arrives 1.78 s into the reply: all of chunk 1 (25 chars,
    # 1250 ms) and 530 of chunk 2's 1200 ms (10 of 24 chars: "Our desser|ts", back to a whole word).
    assert interrupted[0].played_ms == 1780
    assert interrupted[0].heard_text == "We serve pasta and pizza. Our"
    assert h.transport.clears == 1 and h.transport.stale_drops == [2]
    assert h.transport.queued_generations() == set()
    assistant = h.conv.history.messages[1]
    assert (assistant.role, assistant.content, assistant.interrupted) == ("assistant", "We serve pasta and pizza. Our", True)
    row = h.session.transcripts[-1]
    assert (row.role, row.text, row.interrupted) == ("agent", "We serve pasta and pizza. Our", True)
    assert row.end_ms - row.start_ms == 1780
    sent_before = len(h.transport.sent)
    await silence_until_asked(h)
    assert all(s.generation != 1 for s in h.transport.sent[sent_before:])
    request = h.llm.requests[-1]
    assert [(m.role, m.content, m.interrupted) for m in request.messages] == [
        ("user", "Tell me about the menu.", False), ("assistant", "We serve pasta and pizza. Our", True),
        ("user", "Do you have salads?", False)]
    await h.until_quiet()
    assert h.metric("voicectl_barge_ins_total") == 1
    await h.close()


async def test_short_backchannel_does_not_interrupt() -> None:
    h = Harness(script=["Tell me about the menu.", "Mhm."], replies=[say(LONG_REPLY)])
    await h.start()
    await h.speak(500)
    await silence_until_audio(h)
    await h.silence(500)
    await h.speak(200)  # under min_interruption_ms (300)
    await h.until_quiet()
    assert h.transport.clears == 0 and not [e for e in h.session.events if isinstance(e, AgentInterrupted)]
    assert h.stt.stream.flushes == 2  # the backchannel was decoded, then ignored
    assert [m.content for m in h.conv.history.messages] == ["Tell me about the menu.", LONG_REPLY]
    assert len(h.llm.requests) == 1
    assert h.session.transcripts[-1].text == LONG_REPLY and not h.session.transcripts[-1].interrupted
    assert h.metric("voicectl_turns_total", outcome="backchannel") == 1
    await h.close()


async def test_long_backchannel_heard_by_a_streaming_stt_does_not_interrupt() -> None:
    h = Harness(script=["Tell me about the menu.", "Mhm."], replies=[say(LONG_REPLY)], interim_results=True)
    await h.start()
    await h.speak(500)
    await silence_until_audio(h)
    await h.speak(100)
    h.stt.stream.interim("mhm")
    await h.speak(500)  # 600 ms of speech, over the threshold, but only "mhm" so far
    await h.until_quiet()
    assert h.transport.clears == 0 and len(h.llm.requests) == 1
    assert TranscriptInterim(role="caller", text="mhm") in h.session.events
    assert h.session.transcripts[-1].text == LONG_REPLY
    await h.close()


async def test_streaming_interim_with_real_words_interrupts_at_the_threshold() -> None:
    h = Harness(script=["Tell me about the menu.", "Wait, stop."], replies=[say(LONG_REPLY)], interim_results=True)
    await h.start()
    await h.speak(500)
    await silence_until_audio(h)
    await h.speak(100)
    h.stt.stream.interim("wait")
    await h.speak(200)
    assert h.transport.clears == 1
    await h.close()


async def test_stale_generation_audio_is_dropped_everywhere() -> None:
    h = Harness(script=["Tell me about the menu.", "Stop."], replies=[say(LONG_REPLY)], tts={"delay_s": 0.5})
    await h.start()
    await h.speak(500)
    await silence_until_audio(h)  # piece 1 sent; each piece takes the TTS 0.5 s
    await h.silence(300)
    await h.speak(400)  # barge-in at ~0.6 s: piece 2 queued in the transport, piece 3 in the TTS
    assert [s.generation for s in h.transport.sent] == [1, 1]
    assert h.tts.texts[2] == "Ask about the specials."
    assert h.transport.stale_drops == [2] and h.transport.queued_generations() == set()
    await h.silence(2000)  # the cancelled TTS work never sends its audio
    assert [s.generation for s in h.transport.sent if s.generation == 1] == [1, 1]
    assert h.transport.generations() == [1, 3]  # generation 2 was the cut; the next reply is 3
    await h.close()


async def test_caller_going_on_while_the_agent_thinks_merges_the_turn() -> None:
    h = Harness(script=["I want a table", "for two people."],
                replies=[say("Sure, for how many?", delay_s=1.0), say("A table for two, done.")])
    await h.start()
    await h.speak(600)
    await silence_until_asked(h)  # neutral text: ends at 500 ms; the model takes a second
    await h.speak(200)  # shorter than the barge-in threshold, but nothing has been said yet
    await silence_until_asked(h)
    assert [m.content for m in h.llm.requests[1].messages] == ["I want a table for two people."]
    assert [e.played_ms for e in h.session.events if isinstance(e, AgentInterrupted)] == [0]
    await h.until_quiet()
    assert h.tts.texts == ["A table for two,", "done."]
    assert [t.role for t in h.session.transcripts] == ["caller", "caller", "agent"]
    await h.close()


# Tools


def availability(args: dict) -> ToolResult:
    return ToolResult({"available": True, "date": args["date"]})


async def test_tool_round_trip() -> None:
    h = Harness(script=["Is Friday free?"], tools={"check_availability": availability},
                replies=[tool_call("check_availability", {"date": "friday"}, text="Let me check."),
                         say("Friday is available.")])
    await h.start()
    await caller_turn(h)
    (call, ctx), = h.toolbox.calls
    assert (call.name, call.arguments) == ("check_availability", {"date": "friday"})
    assert (ctx.call_id, ctx.tenant_id, ctx.agent_id, ctx.caller) == ("call_test", "ten_test", "agt_test", "+15550001111")
    assert [t.name for t in h.llm.requests[0].tools] == ["check_availability"]
    second = h.llm.requests[1].messages
    assert second[-2].tool_calls == (call,) and second[-2].content == "Let me check."
    assert (second[-1].role, second[-1].tool_call_id, json.loads(second[-1].content)) == (
        "tool", "call_check_availability", {"available": True, "date": "friday"})
    assert h.tts.texts == ["Let me check.", "Friday is available."]
    assert h.session.transcripts[-1].text == "Let me check. Friday is available."
    await h.close()


async def test_slow_tool_gets_one_filler() -> None:
    h = Harness(script=["Is Friday free?"], tools={"check_availability": availability},
                tool_delays={"check_availability": 2.5},
                replies=[tool_call("check_availability", {"date": "friday"}), say("Friday is available.")])
    await h.start()
    await caller_turn(h)
    assert h.tts.texts == ["One moment please.", "Friday is available."]
    await h.close()


async def test_tool_timeout_is_reported_to_the_model() -> None:
    h = Harness(script=["Is Friday free?"], tools={"check_availability": availability},
                tool_delays={"check_availability": 100}, tool_timeout_s=5.0,
                replies=[tool_call("check_availability", {"date": "friday"}), say("Sorry, I can't check now.")])
    await h.start()
    await caller_turn(h)
    assert h.toolbox.cancelled == ["check_availability"]
    timeouts = [e for e in h.session.events if isinstance(e, ToolCalled)]
    assert [(e.name, e.status, e.latency_ms) for e in timeouts] == [("check_availability", "timeout", 5000)]
    assert json.loads(h.llm.requests[1].messages[-1].content)["status"] == "timeout"
    assert h.tts.texts == ["One moment please.", "Sorry, I can't check now."]
    await h.close()


async def test_tool_rounds_are_capped() -> None:
    loop_call = tool_call("check_availability", {"date": "friday"})
    h = Harness(script=["Is Friday free?"], tools={"check_availability": availability},
                replies=[loop_call] * 4 + [tool_call("check_availability", {"date": "friday"}, text="Friday works.")])
    await h.start()
    await caller_turn(h)
    assert [bool(r.tools) for r in h.llm.requests] == [True, True, True, True, False]
    assert len(h.toolbox.calls) == 4  # the fifth round, asked without tools, cannot call one
    assert h.tts.texts[-1] == "Friday works."
    await h.close()


async def test_end_call_hangs_up_after_the_goodbye_played() -> None:
    end = ToolCallRequest(ToolCall("c1", "end_call", {}))
    h = Harness(script=["That's all, thanks."], tools={"end_call": lambda a: ToolResult({"ending": True}, end_call=True)},
                replies=[[TextDelta("Thanks for calling, goodbye!"), end, LlmDone("tool_use")]])
    await h.start()
    await h.speak(500)
    await silence_until_audio(h)
    await h.silence(1000)
    assert h.session.hangups == [] and h.transport.queued_ms() > 0  # still saying goodbye
    await h.until_quiet()
    assert h.session.hangups == ["agent_ended"] and h.transport.queued_ms() == 0
    assert len(h.llm.requests) == 1  # no round after a call-ending tool
    h.conv.feed_audio(b"\x00" * 320, 8000)  # the call is over: nothing more happens
    await h.close()


async def test_transfer_with_nothing_said_uses_the_default_line() -> None:
    h = Harness(script=["Get me a person."],
                tools={"transfer_to_human": lambda a: ToolResult({"transferring": True}, transfer_to="+15550002222")},
                replies=[tool_call("transfer_to_human")])
    await h.start()
    await caller_turn(h)
    assert h.tts.texts == ["I'm transferring you now."] and h.session.transfers == ["+15550002222"]
    await h.close()


# Provider errors


async def test_llm_error_mid_reply_apologises_and_the_call_goes_on() -> None:
    broken = [TextDelta("Let me look "), TextDelta("that up. "), TextDelta("The"),
              ProviderError("fake-llm", "server", "stream broke")]
    h = Harness(script=["What's on the menu?", "What's on the menu?"], replies=[broken, say("Pasta and pizza.")])
    await h.start()
    await caller_turn(h)
    assert h.tts.texts == ["Let me look that up.", APOLOGY]
    assert [(m.role, m.content) for m in h.conv.history.messages] == [
        ("user", "What's on the menu?"), ("assistant", "Let me look that up."), ("assistant", APOLOGY)]
    assert h.metric("voicectl_pipeline_provider_errors_total", modality="llm", kind="server") == 1
    await caller_turn(h)
    assert h.tts.texts[-1] == "Pasta and pizza."
    await h.close()


async def test_tts_error_mid_reply_apologises() -> None:
    h = Harness(script=["What's on the menu?"], replies=[say("We have pasta. And pizza, of course.")],
                tts={"fail_on": "pizza", "per_word": True})
    await h.start()
    await caller_turn(h)
    assert h.tts.texts == ["We have pasta.", "And pizza, of course.", APOLOGY]
    assert h.session.transcripts[-1].text.endswith(APOLOGY)
    assert h.metric("voicectl_pipeline_provider_errors_total", modality="tts", kind="exception") == 1
    await h.close()


async def test_tts_failing_for_everything_does_not_stop_the_call() -> None:
    h = Harness(script=["Hello?", "Hello?"], greeting="Hi there.", tts={"fail_on": ""})
    await h.start()
    await h.silence(500)  # the first chunk of the greeting played, then the TTS failed
    assert not h.conv.speaking
    await h.speak(500)
    await silence_until_asked(h)
    await h.until_quiet()
    assert len(h.tts.texts) == 3  # greeting, reply, apology: each failed after its first chunk
    await h.speak(500)
    await silence_until_asked(h)
    assert len(h.llm.requests) == 2
    await h.close()


async def test_broken_stt_stream_is_reopened() -> None:
    h = Harness(script=["Hello.", "Hello again."])
    await h.start()
    h.stt.stream.fail(ProviderError("fake-stt", "server", "socket closed"))
    await h.wait(0)
    assert len(h.stt.streams) == 2
    await caller_turn(h)
    assert len(h.llm.requests) == 1
    await h.close()


# Silence, DTMF, lines


async def test_silence_reprompts_then_says_goodbye_and_hangs_up() -> None:
    h = Harness(greeting="Hi.")
    await h.start()
    await h.wait(0.2)  # the greeting plays (150 ms)
    await h.wait(7.9)
    assert h.tts.texts == ["Hi."]
    await h.wait(0.2)
    assert h.tts.texts == ["Hi.", "Are you still there?"]
    await h.wait(1.0 + 8.0)  # the re-prompt plays, then another 8 s of quiet
    assert h.tts.texts[-1] == "I can't hear anyone, so I'll end the call now. Goodbye."
    assert h.session.hangups == []
    await h.wait(5)
    assert h.session.hangups == ["silence"]
    await h.close()


async def test_silence_prompts_follow_the_version_for_an_external_brain_and_never_while_paused() -> None:
    for external, mode, prompted in ((True, "auto", False), (True, "on", True), (False, "off", False),
                                     (False, "auto", True)):
        h = Harness(greeting="Hi.", external_brain=external, silence_prompts=mode)
        await h.start()
        await h.wait(8.5)
        assert (h.tts.texts[-1] == "Are you still there?") is prompted, (external, mode)
        await h.close()
    h = Harness(greeting="Hi.", silence_prompts="on")
    await h.start()
    h.conv.set_paused(True)
    await h.wait(20)
    assert h.tts.texts == ["Hi."] and h.session.hangups == []
    await h.close()


async def test_caller_speech_resets_the_silence_count() -> None:
    h = Harness(script=["I'm here."], greeting="Hi.")
    await h.start()
    await h.wait(8.5)
    assert h.tts.texts[-1] == "Are you still there?"
    await h.wait(1.5)
    await caller_turn(h)
    await h.wait(8.5)
    assert h.tts.texts[-1] == "Are you still there?" and h.session.hangups == []
    await h.close()


async def test_dtmf_digits_reach_the_model_as_text() -> None:
    h = Harness()
    await h.start()
    h.conv.feed_dtmf("1")
    await h.wait(0.5)
    h.conv.feed_dtmf("2", emit_event=True)
    await h.wait(1.4)
    assert h.llm.requests == []
    await h.wait(0.2)
    assert h.llm.requests[0].messages[-1].content == "[DTMF 12]"
    assert "dtmf.received" in h.topics()
    await h.wait(5)
    h.conv.feed_dtmf("4")
    h.conv.feed_dtmf("#")
    await h.wait(0)
    assert h.llm.requests[1].messages[-1].content == "[DTMF 4#]"
    await h.close()


async def test_dtmf_mapped_to_a_tool_calls_it_directly() -> None:
    h = Harness(greeting="Welcome to the restaurant, how can I help you today?",
                config={"tools": ["transfer_to_human"], "dtmf_tools": {"0": "transfer_to_human"}},
                tools={"transfer_to_human": lambda a: ToolResult({"transferring": True}, transfer_to="+15550002222")})
    await h.start()
    await h.wait(0.5)
    h.conv.feed_dtmf("0")  # cuts the greeting
    await h.wait(0)
    assert h.transport.clears == 1
    (call, _), = h.toolbox.calls
    assert call.name == "transfer_to_human" and h.llm.requests == []
    assert h.tts.texts[-1] == "I'm transferring you now." and h.session.transfers == []
    await h.wait(3)
    assert h.session.transfers == ["+15550002222"]
    assert [m.role for m in h.conv.history.messages] == ["assistant", "user", "assistant", "tool", "assistant"]
    assert h.conv.history.messages[1].content == "[DTMF 0]"
    await h.close()


async def test_say_waits_for_the_reply_and_duration_warnings_speak() -> None:
    h = Harness(script=["Tell me about the menu."], replies=[say(LONG_REPLY)])
    await h.start()
    assert h.session.on_duration_warning == [h.conv._duration_warning]
    await h.speak(500)
    await silence_until_audio(h)
    warning = asyncio.create_task(h.session.on_duration_warning[0](h.session, 120))
    await h.silence(1000)
    assert "We have about two minutes left." not in h.tts.texts  # never cuts the reply
    await h.until_quiet()
    await h.silence(2000)
    assert warning.done() and h.tts.texts[-1] == "We have about two minutes left."
    assert h.transport.generations() == [1, 2]
    await h.close()
    assert h.session.on_duration_warning == []


async def test_close_keeps_the_words_played_and_writes_queued_events() -> None:
    h = Harness(script=["Tell me about the menu."], replies=[say(LONG_REPLY)])
    await h.start()
    await h.speak(500)
    await silence_until_audio(h)
    await h.silence(1300)
    await h.close()
    row = h.session.transcripts[-1]
    assert (row.role, row.text, row.interrupted) == ("agent", "We serve pasta and pizza.", True)
    assert "agent.interrupted" not in h.topics()  # the caller hung up: not a barge-in
    assert h.conv._tasks == set() or all(t.done() for t in h.conv._tasks)


async def test_turn_latency_is_recorded() -> None:
    h = Harness(script=["Hi."], replies=[say("Hello there.", delay_s=0.3)], tts={"delay_s": 0.05})
    await h.start()
    await caller_turn(h)
    latency, = [e for e in h.session.events if isinstance(e, TurnLatency)]
    assert (latency.stt_ms, latency.llm_first_token_ms, latency.tts_first_audio_ms, latency.first_frame_ms) == (
        100.0, 300.0, 50.0, 350.0)
    # The last speech frame arrived 20 ms before the speech ended; flush at 260 ms of silence.
    assert h.session.latency == {"stt": [100.0], "llm_first_token": [300.0], "tts_first_audio": [50.0],
                                 "first_frame": [350.0], "v2v": [710.0]}
    assert h.metric("voicectl_turn_latency_seconds_count", stage="v2v") == 1
    await h.close()


async def test_offline_interim_decoding_is_asked_for_only_when_someone_listens() -> None:
    for listened, external, wanted in ((False, False, False), (True, False, True), (False, True, True)):
        h = Harness(script=["Hello there."], replies=[say("Hi.")], external_brain=external)
        h.session.listened_topics = ("transcript.interim",) if listened else ()
        await h.start()
        await h.speak(400)
        await h.silence(1000)
        # at the stream's open (nobody yet), then at the caller's turn
        assert h.stt.stream.interim_asks == [False, wanted], (listened, external)
        await h.close()
