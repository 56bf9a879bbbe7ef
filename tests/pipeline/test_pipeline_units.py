"""The pipeline's pure parts: end-of-turn text heuristics, the turn detector, the chunker, the
heard-words ledger and history, the manual clock."""

from __future__ import annotations

import asyncio

import pytest

from runtime.control.schemas import AgentConfig
from runtime.pipeline.chunker import Chunker, speakable
from runtime.pipeline.clock import ManualClock
from runtime.pipeline.history import History, SpokenLedger, heard_prefix
from runtime.pipeline.metrics import TurnTiming
from runtime.pipeline.settings import ConversationSettings, Phrases
from runtime.pipeline.turns import (
    IDLE,
    PAUSED,
    SPEAKING,
    Completeness,
    Signal,
    TurnDetector,
    TurnPolicy,
    completeness,
    is_backchannel,
)
from runtime.providers.base import Message

# End-of-turn text


@pytest.mark.parametrize("text", [
    "Yes.", "What time do you open?", "Where are you calling from?", "Yes, I do.",
    "My number is 555-123-4567.", "I need a table for four.", "It's john@example.com.",
])
def test_complete_texts(text: str) -> None:
    assert completeness(text) is Completeness.COMPLETE


@pytest.mark.parametrize("text", [
    "I want to", "I'd like a table and", "coffee or", "my number is 555 123", "five five five one two",
    "my email is john at gmail", "it's john dot", "so,", "well, um", "I think that the", "and my name is",
    "My zip code is 902.",
])
def test_incomplete_texts(text: str) -> None:
    assert completeness(text) is Completeness.INCOMPLETE


@pytest.mark.parametrize("text", ["hello there", "yes I do", "my email is john at gmail dot com", ""])
def test_neutral_texts(text: str) -> None:
    assert completeness(text) is Completeness.NEUTRAL


def test_backchannels() -> None:
    for text in ("mhm", "Yeah.", "uh-huh", "Okay", "right", "Mm-hmm okay", "I see."):
        assert is_backchannel(text), text
    for text in ("yes", "no", "okay, book it", "wait", ""):
        assert not is_backchannel(text), text


# The turn detector (20 ms frames)


def frames(detector: TurnDetector, speech: bool, ms: int) -> Signal:
    out = Signal.NONE
    for _ in range(ms // 20):
        out |= detector.frame(speech, 20)
    return out


def test_turn_starts_after_confirmed_speech_and_ignores_clicks() -> None:
    d = TurnDetector(TurnPolicy())
    assert frames(d, True, 40) == Signal.NONE  # two frames: not yet confirmed
    assert frames(d, False, 20) == Signal.NONE and d.state == IDLE
    assert frames(d, True, 60) == Signal.STARTED
    assert d.state == SPEAKING and d.start_ms == 60 and d.speech_ms == 60


def test_flush_at_half_the_endpoint_then_complete_text_ends_on_the_final() -> None:
    d = TurnDetector(TurnPolicy(endpoint_ms=500))
    frames(d, True, 400)
    assert frames(d, False, 240) == Signal.PAUSED and d.state == PAUSED
    assert frames(d, False, 20) == Signal.FLUSH and d.awaiting_final
    assert frames(d, False, 100) == Signal.NONE  # waiting for the final
    assert d.final("Book me a table, please.") == Signal.END
    turn = d.take()
    assert (turn.text, turn.start_ms, turn.end_ms, turn.speech_ms) == ("Book me a table, please.", 0, 400, 400)
    assert d.state == IDLE


def test_neutral_text_ends_at_the_endpoint_and_incomplete_text_waits_longer() -> None:
    d = TurnDetector(TurnPolicy(endpoint_ms=500))
    frames(d, True, 200)
    frames(d, False, 260)
    assert d.final("hello there") == Signal.NONE
    assert frames(d, False, 220) == Signal.NONE  # 480 ms
    assert frames(d, False, 20) == Signal.END  # 500 ms

    d = TurnDetector(TurnPolicy(endpoint_ms=500))
    frames(d, True, 200)
    frames(d, False, 260)
    assert d.final("my number is 555 123") == Signal.NONE
    assert frames(d, False, 1220) == Signal.NONE  # 1480 ms
    assert frames(d, False, 20) == Signal.END  # 1500 ms = max(1500, 3 x 500)


def test_resumed_speech_continues_the_turn_and_joins_finals() -> None:
    d = TurnDetector(TurnPolicy())
    frames(d, True, 300)
    frames(d, False, 260)  # flushed
    assert d.final("I want to") == Signal.NONE  # incomplete: keep waiting
    assert frames(d, True, 60) == Signal.RESUMED and d.state == SPEAKING
    frames(d, True, 200)
    frames(d, False, 260)
    assert d.final("book a table.") == Signal.END
    assert d.take().text == "I want to book a table."


def test_final_arriving_after_the_caller_resumed_is_kept() -> None:
    d = TurnDetector(TurnPolicy())
    frames(d, True, 200)
    frames(d, False, 260)  # flush 1
    frames(d, True, 100)  # resumed before final 1
    assert d.final("My name is") == Signal.NONE  # appended while speaking
    frames(d, False, 260)  # flush 2
    assert d.final("Ada.") == Signal.END
    assert d.take().text == "My name is Ada."


def test_no_final_times_out_and_empty_text_ends_at_once_or_at_the_endpoint() -> None:
    policy = TurnPolicy(endpoint_ms=500, final_timeout_ms=1500)
    d = TurnDetector(policy)
    frames(d, True, 200)
    assert not frames(d, False, 1980) & Signal.END
    assert frames(d, False, 20) & Signal.END  # 2000 ms: endpoint + final timeout
    assert d.take().text == ""

    d = TurnDetector(policy)
    frames(d, True, 200)
    frames(d, False, 260)
    assert d.final("   ") == Signal.END  # too short to be a word, and nothing heard: done now

    d = TurnDetector(policy)
    frames(d, True, 400)  # speech, but the engine accepts no words of it: the caller may go on
    frames(d, False, 260)
    assert d.final("") == Signal.NONE
    assert frames(d, False, 220) == Signal.NONE  # 480 ms
    assert frames(d, False, 20) == Signal.END  # 500 ms: the endpoint
    assert d.take().text == ""


def test_stray_final_with_no_turn_is_ignored() -> None:
    d = TurnDetector(TurnPolicy())
    assert d.final("hello") == Signal.NONE
    assert d.text == ""


def test_policy_scales_with_the_endpointing_setting() -> None:
    assert (TurnPolicy(endpoint_ms=500).flush_ms, TurnPolicy(endpoint_ms=500).incomplete_ms) == (250, 1500)
    assert (TurnPolicy(endpoint_ms=800).flush_ms, TurnPolicy(endpoint_ms=800).incomplete_ms) == (400, 2400)


# Chunker


def chunks_of(deltas: list[str], **kw: int) -> list[str]:
    chunker, out = Chunker(**kw), []
    for delta in deltas:
        out += chunker.push(delta)
    return out + chunker.flush()


def test_first_chunk_is_a_clause_then_sentences() -> None:
    text = "Sure, I can help you with that, let me see. We have a table at seven. Does that work?"
    deltas = [text[i:i + 3] for i in range(0, len(text), 3)]
    assert chunks_of(deltas) == [
        "Sure, I can help you with that,", "let me see.", "We have a table at seven.", "Does that work?",
    ]


def test_chunks_come_out_while_text_streams() -> None:
    chunker = Chunker()
    assert chunker.push("Hello there. How") == ["Hello there."]
    assert chunker.push(" are you") == []
    assert chunker.flush() == ["How are you"]


def test_abbreviations_numbers_and_initials_do_not_end_sentences() -> None:
    assert chunks_of(["Dr. Smith sees J. Doe at 3.30 p.m. on Friday. Bye."]) == [
        "Dr. Smith sees J. Doe at 3.30 p.m. on Friday.", "Bye."]
    assert chunks_of(["I can.", " Yes!"]) == ["I can.", "Yes!"]


def test_long_text_without_punctuation_is_cut_at_a_space() -> None:
    out = chunks_of(["word " * 100], max_chars=60)
    assert all(len(c) <= 60 for c in out) and " ".join(out) == ("word " * 100).strip()


def test_markdown_is_not_spoken() -> None:
    assert chunks_of(["**Great**, here you go:\n- item one\n# Heading\nPress # to finish."]) == [
        "Great, here you go:", "item one", "Heading", "Press # to finish."]
    assert speakable("  ...  ") == ""


# Ledger and history


def test_heard_prefix_never_splits_a_word() -> None:
    assert heard_prefix("We open at nine tomorrow", 0.5) == "We open at"  # "n|ine": not heard whole
    assert heard_prefix("We open at nine tomorrow", 0.45) == "We open at"
    assert heard_prefix("We open at nine tomorrow", 0.0) == ""
    assert heard_prefix("We open at nine tomorrow", 1.0) == "We open at nine tomorrow"
    assert heard_prefix("Hello, and welcome", 0.4) == "Hello"


def test_ledger_uses_chunk_boundaries_then_characters() -> None:
    first, second = Message("assistant"), Message("assistant")
    ledger = SpokenLedger()
    ledger.begin("We open at nine.", first)
    ledger.audio(1000)
    ledger.begin("See you then, goodbye.", second)
    ledger.audio(500, "See you then,")  # aligned chunks from the engine
    ledger.audio(300)  # a text-less continuation of the same words
    ledger.audio(700, "goodbye.")
    assert ledger.total_ms == 2500
    assert ledger.heard_text(2500) == "We open at nine. See you then, goodbye."
    assert ledger.heard_text(1000) == "We open at nine."
    assert ledger.heard_text(1400) == "We open at nine. See"  # half of "See you then," (800 ms)
    assert ledger.heard_text(500) == "We open"


def test_keep_heard_truncates_marks_and_drops() -> None:
    history = History()
    history.add_user("When do you open?")
    said, unsaid = Message("assistant", "We open at nine. See you then."), Message("assistant", "Anything else?")
    history.add(said)
    ledger = SpokenLedger()
    ledger.begin("We open at nine.", said)
    ledger.audio(1000)
    ledger.begin("See you then.", said)
    ledger.audio(1000)
    heard = history.keep_heard([said, unsaid], ledger, 1500)
    assert heard == "We open at nine. See"
    assert (said.content, said.interrupted) == ("We open at nine. See", True)
    assert unsaid not in history and [m.role for m in history.messages] == ["user", "assistant"]


def test_user_messages_merge_and_snapshot_starts_with_a_user() -> None:
    history = History(max_messages=3)
    history.add(Message("assistant", "Hello."))
    history.add(Message("assistant", "How can I help?"))
    history.add_user("I want to")
    history.add_user("book a table.")
    assert [m.content for m in history.messages][-1] == "I want to book a table."
    history.add(Message("assistant", "Sure."))
    snap = history.snapshot()  # the window of 3 was cut: it starts at the user message
    assert [m.role for m in snap] == ["user", "assistant"]
    full = History()
    full.add(Message("assistant", "Hello."))
    full.add(Message("assistant", "How can I help?"))
    assert [m.content for m in full.snapshot()] == ["Hello. How can I help?"]
    assert full.messages[0].content == "Hello."  # the snapshot copies, never edits


# Settings, timing, clock


def test_settings_from_an_agent_config() -> None:
    settings = ConversationSettings.from_config(AgentConfig.model_validate({
        "system_prompt": "Be brief.", "greeting": "Hi!", "knowledge": "Open 9-5.",
        "turn": {"endpointing_silence_ms": 700, "min_interruption_ms": 250, "silence_reprompt_s": 5},
        "llm": {"model": "m", "temperature": 0.2}, "escalation_target": "+15550002222",
        "tools": ["transfer_to_human"], "dtmf_tools": {"0": "transfer_to_human"},
    }), agent_id="agt_1")
    assert settings.turn.endpoint_ms == 700 and settings.turn.min_interruption_ms == 250
    assert settings.silence_reprompt_s == 5 and settings.greeting == "Hi!" and settings.model == "m"
    assert settings.system_prompt.startswith("Be brief.") and "Open 9-5." in settings.system_prompt
    assert settings.dtmf_tools == {"0": "transfer_to_human"} and settings.agent_id == "agt_1"
    assert Phrases().duration_warning(120) == "We have about two minutes left."
    assert Phrases().duration_warning(30) == "We have about thirty seconds left."


def test_turn_timing_stages() -> None:
    t = TurnTiming(end_at=10.0, last_speech_at=9.5, flush_at=9.75, final_at=9.9, llm_first_at=10.3,
                   tts_request_at=10.3, tts_first_audio_at=10.35, first_frame_at=10.36)
    assert t.stages() == {"stt": 150.0, "llm_first_token": 300.0, "tts_first_audio": 50.0,
                          "first_frame": 360.0, "v2v": 860.0}
    assert TurnTiming(end_at=1.0).stages()["stt"] is None


async def test_manual_clock_wakes_sleepers_in_order() -> None:
    clock, woke = ManualClock(start=0), []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper("b", 2)), asyncio.create_task(sleeper("a", 1))]
    await clock.advance(0)
    assert clock.pending == 2
    await clock.advance(1.5)
    assert woke == [("a", 1)]
    await clock.advance(1)
    assert woke == [("a", 1), ("b", 2)] and clock.now() == 2.5
    await asyncio.gather(*tasks)
