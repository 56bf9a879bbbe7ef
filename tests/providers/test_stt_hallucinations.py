"""What the offline STT drops as Whisper's inventions (sub-word loops, phantom outro phrases) and
what it must keep, and how a decode's segments become one final: joined, with a confidence each."""

from __future__ import annotations

import math
import time

import pytest

from runtime.pipeline.turns import Completeness, completeness
from runtime.providers.base import TranscriptSegment
from runtime.providers.stt.hallucinations import MAX_CHARS, phantom
from runtime.providers.stt.local import Decoded, _assemble, without_list_comma

# Outputs whisper produced (or is widely reported to produce) on noise, silence or a stuck decode.
PHANTOMS = [
    ("I'm s'm s'm s'm s'm s'm s'm", "loop"),
    ("s's's's's's's's's", "loop"),
    ("I'm s s s s s s", "loop"),
    ("La-la-la-la-la-la.", "loop"),
    ("la la la la la la la", "loop"),
    ("Hahahahahahahaha", "loop"),
    ("Sssssssssssss", "loop"),
    ("the the the the the the the the the", "loop"),
    ("thank you, bye, bye, bye, bye, bye, bye", "loop"),  # base with the demo's hints, for "Sure."
    ("Okay, thank you, thank you, thank you, thank you, thank you, thank you", "loop"),
    ("Thank you for watching!", "phrase"),
    ("Thanks for watching.", "phrase"),
    ("Thank you so much for watching.", "phrase"),
    ("Subtitles by the Amara.org community", "phrase"),
    ("Please subscribe.", "phrase"),
    ("Don't forget to like and subscribe!", "phrase"),
    ("I'll see you in the next video.", "phrase"),
    ("Transcription by CastingWords", "phrase"),
]

# A caller's lines, including the repeats and short words that look loop-like.
CALLERS = [
    "no no no",
    "No, no, no, that's wrong.",
    "eight eight eight five",
    "My number is 555 555 5555.",
    "one one one one two two",
    "no no no no no",
    "It's five five five, five five five five, five five five.",
    "double oh double oh double oh double oh",
    "Thank you.",
    "Thank you, thank you.",
    "Yes, yes, yes.",
    "bye bye",
    "Mm-hmm.",
    "Uh-huh, okay.",
    "I-I-I want a table.",
    "I don't know.",
    "Book a table for two at seven.",
    "No wait, make it six. And we need a high chair.",
    "It's B-A-R-T, Bart.",
    "Twenty-two, please.",
    "ha ha",
]


@pytest.mark.parametrize(("text", "reason"), PHANTOMS)
def test_whisper_phantoms_are_recognised(text: str, reason: str) -> None:
    assert phantom(text) == reason


@pytest.mark.parametrize("text", CALLERS)
def test_callers_lines_are_kept(text: str) -> None:
    assert phantom(text) is None


def test_the_check_is_linear_on_long_hostile_text() -> None:
    # Near-loops that never quite repeat, the longest text the check looks at, and far longer.
    near = " ".join(f"s'm{i % 7}" for i in range(5000))
    for text in (near, "ab" * 100_000, "a-" * 100_000, ("s'm " * 3 + "x ") * 20_000):
        started = time.perf_counter()
        phantom(text)
        assert time.perf_counter() - started < 0.25, len(text)
    assert len(near) > MAX_CHARS


class _Tokenizer:
    """Whisper's token layout in miniature: text tokens, then eot, then timestamps."""

    eot = 100
    timestamp_begin = 200

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def decode(self, tokens: list[int]) -> str:
        return "".join(self.words[t] for t in tokens)


def _decode(parts: list[tuple[list[str], float]], no_speech: float = 0.1) -> Decoded:
    """``parts``: each segment's word tokens and the log-probability of every one of its tokens."""
    words: list[str] = []
    ids: list[int] = []
    logprobs: list[float] = []
    for number, (tokens, logprob) in enumerate(parts):
        ids.append(200 + number * 50)
        logprobs.append(-0.01)
        for token in tokens:
            words.append(token)
            ids.append(len(words) - 1)
            logprobs.append(logprob)
        ids.append(200 + number * 50 + 40)
        logprobs.append(-0.01)
    return _assemble(_Tokenizer(words), ids, logprobs, no_speech)


def test_segments_are_joined_each_with_its_confidence() -> None:
    decoded = _decode([([" No", " wait,", " make", " it", " six."], -0.9),
                       ([" And", " we", " need", " a", " high", " chair."], -0.2)], no_speech=0.2)
    assert decoded.text == "No wait, make it six. And we need a high chair."
    assert [p.text for p in decoded.segments] == ["No wait, make it six.", "And we need a high chair."]
    assert [p.avg_logprob for p in decoded.segments] == pytest.approx([-0.9, -0.2])
    # The less sure first piece is kept; confidence = exp(mean token log-prob) * (1 - no_speech_prob).
    first, second = decoded.confidences()
    assert first.confidence == round(math.exp(-0.9) * 0.8, 3) and second.confidence == round(math.exp(-0.2) * 0.8, 3)
    assert decoded.avg_logprob == pytest.approx((5 * -0.9 + 6 * -0.2) / 11)
    assert decoded.dropped == 0 and not decoded.looped


def test_without_timestamps_segments_end_where_a_sentence_ends() -> None:
    # The runtime decodes without timestamp tokens: the pieces are the sentences, a "." inside a
    # number ("6.30") or before no new word does not split, and each sentence has its own confidence.
    tokens = [" No", " wait,", " make", " it", " 6", ".", "30", ".", " And", " we", " need", " a", " chair", "?",
              " Yes", "!"]
    logprobs = [-0.9] * 8 + [-0.2] * 6 + [-0.5] * 2
    decoded = _assemble(_Tokenizer(tokens), list(range(len(tokens))), logprobs, 0.1)
    assert [p.text for p in decoded.segments] == ["No wait, make it 6.30.", "And we need a chair?", "Yes!"]
    assert [p.avg_logprob for p in decoded.segments] == pytest.approx([-0.9, -0.2, -0.5])
    assert decoded.text == "No wait, make it 6.30. And we need a chair? Yes!"
    # One sentence said again is a loop, as a repeated timestamp segment is.
    again = _assemble(_Tokenizer([" No.", " No.", " No."]), [0, 1, 2], [-0.4] * 3, 0.1)
    assert again.text == "No." and again.looped and len(again.segments) == 1


def test_a_comma_ending_a_hinted_decode_is_dropped() -> None:
    # After the comma-separated hints whisper ends whole answers with a comma, which the turn taking
    # would read as a caller not done (runtime.pipeline.turns.completeness): the last one is dropped.
    pieces = (TranscriptSegment("No wait, make it six.", 0.4), TranscriptSegment("yes, book it,", 0.9))
    assert without_list_comma(pieces) == (pieces[0], TranscriptSegment("yes, book it", 0.9))
    assert completeness(" ".join(p.text for p in without_list_comma(pieces))) is not Completeness.INCOMPLETE
    assert without_list_comma(pieces[:1]) == pieces[:1] and without_list_comma(()) == ()


def test_a_phantom_segment_is_dropped_and_the_real_ones_kept() -> None:
    decoded = _decode([([" Two", " people", " at", " seven."], -0.3),
                       ([" Thank", " you", " for", " watching!"], -1.6)])
    assert decoded.text == "Two people at seven."
    assert [p.text for p in decoded.segments] == ["Two people at seven."]
    assert decoded.dropped == 1
    assert decoded.avg_logprob == pytest.approx(-0.3)  # the dropped piece does not count against the rest
    # A long loop after a real piece: dropped, and whisper's compression check reads only what is kept.
    stuck = _decode([([" Two", " people."], -0.3), ([" s'm"] * 60, -0.2)])
    assert stuck.text == "Two people." and stuck.dropped == 1 and stuck.compression_ratio < 2.4
    looping = _decode([([" I'm", " s'm", " s'm", " s'm", " s'm", " s'm"], -0.5)])
    assert looping.text == "" and looping.looped and looping.dropped == 1


def test_one_phrase_repeated_as_segments_is_one_loop() -> None:
    decoded = _decode([([" No."], -0.4), ([" No."], -0.4), ([" No."], -0.4)])
    assert decoded.text == "No." and decoded.looped and len(decoded.segments) == 1


DEMO_HINTS = ("for two people at seven, four at eight thirty, six fifteen, nine forty five, ten o'clock, "
              "Trattoria Demo, margherita, marinara, diavola.")


@pytest.mark.parametrize(("text", "copied"), [
    # base on the caller set's tune half, 10 and 20 dB lines: the hints' tail written out.
    ("Relatable three, four, seven, people at nine thirty, nine forty five, ten o'clock, Trattoria Demo, "
     "margherita.", True),
    ("In a table, three, four, seven, people at nine, fifteen, ten o'clock, Trattoria Demo, margherita,", True),
    ("NINE FORTY-FIVE. Ten o'clock! Trattoria demo", True),  # case and punctuation aside
    # A caller's words, hint terms among them: not three in a row in the prompt's order.
    ("I need a renovation for four, ten o'clock, six thirty.", False),
    ("I'd like a margherita, marinara, and a diavola.", False),
    ("For two people at seven, please.", False),
    ("", False),
])
def test_a_decode_that_writes_out_the_hints_is_told(text: str, copied: bool) -> None:
    from runtime.providers.stt.hallucinations import copies_prompt

    assert copies_prompt(text, DEMO_HINTS) is copied
    assert not copies_prompt(text, "")
