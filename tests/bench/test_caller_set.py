"""The caller set of bench/caller_set.py: big enough, varied, deterministic, noisy as labelled, and
every line, typed, does what it expects through the demo's rules brain (so a miss in the bench
is the ears', not the script's)."""

from __future__ import annotations

import numpy as np

from bench import caller_set


def test_the_set_has_enough_utterances_voices_and_kinds_in_both_halves() -> None:
    every = list(caller_set.utterances("all", None))
    assert len(every) >= 80 and len({u.voice for u in every}) >= 4
    for half in ("tune", "test"):
        lines = list({u.index: u.line for u in caller_set.utterances(half, None)}.values())
        assert {line.kind for line in lines} >= {"booking", "hours", "transfer", "confirmation", "correction",
                                                 "cancellation", "goodbye", "name"}
        assert sum(line.booking is not None for line in lines) >= 8
    assert all("joe" not in v.name for v in caller_set.VOICES)  # never the agent's own voice


def test_typed_lines_do_what_they_expect() -> None:
    brain = caller_set.DemoBrain()
    assert [line.text for line in caller_set.LINES if not brain.judge(line, line.text).right] == []
    wrong = caller_set.LINES[0]
    assert not brain.judge(wrong, "I'd like to book a table for three at seven tonight.").right


def test_the_line_is_deterministic_and_noisy_as_labelled() -> None:
    line, voice = caller_set.LINES[2], caller_set.VOICES[0]
    speech = caller_set.speak(line.text, voice)
    clean = caller_set.telephone(speech, None, 1)
    assert clean == caller_set.telephone(speech, None, 1)
    for snr in (20.0, 10.0):
        noisy = caller_set.telephone(speech, snr, 7)
        assert noisy == caller_set.telephone(speech, snr, 7)
        noise = np.frombuffer(noisy, "<i2").astype(float) - np.frombuffer(clean, "<i2").astype(float)
        measured = 10 * np.log10(caller_set.speech_power(np.frombuffer(clean, "<i2").astype(float)) /
                                 (noise ** 2).mean())
        assert abs(measured - snr) < 2.5, (snr, measured)  # mu-law's own noise adds a little


def test_wer_words_read_numbers_one_way() -> None:
    assert caller_set.words("For four at 7:30 p.m.") == caller_set.words("for 4 at seven thirty PM")
    assert caller_set.words("seven forty five") == ["7", "45"]
    assert caller_set.edit_distance(["a", "b", "c"], ["a", "c", "d"]) == 2
