"""Text that Whisper invents rather than hears: sub-word loops and its known phantom phrases.

``phantom(text)`` names why a decoded piece of text is not the caller's words, or returns None.
It looks at a bounded text (``MAX_CHARS``) in a few passes over its characters and tokens: no
regular expressions on caller text, so the cost is linear in its length whatever it holds.

- Sub-word loops: the decoder stuck on a fragment, e.g. "I'm s'm s'm s'm s'm", "s's's's's's",
  "la-la-la-la-la", "hahahahahaha". Whole words said a few times are real speech ("no no no",
  "eight eight eight five"), so only fragments count at 4 repeats; a unit of up to three words
  repeated ``MAX_WORD_REPEATS`` times is a loop ("thank you, bye, bye, bye, bye, bye, bye": base
  primed with the demo's hints, for a caller's "Sure."), and of numbers ``MAX_NUMBER_REPEATS``
  times (a phone number said digit by digit: "five five five, five five five five, ..." is ten).
- Copies of the prompt: primed with vocabulary hints and unsure of noisy audio, Whisper writes the
  hints out ("... at nine thirty, six, seven, eight, nine forty five, ten o'clock, Trattoria Demo,
  margherita." for a caller on a 10 dB line). ``copies_prompt`` tells a decode with
  ``PROMPT_COPY_TERMS`` of the prompt's terms in a row, in its order: a caller does not say that.
- Phantom phrases: Whisper was trained on subtitled videos, and on silence or noise it writes
  their outros and credits. The list is the widely reported set (openai/whisper discussion #679,
  "Hallucination on audio with no speech"; e.g. zachlatta/freeflow#111, Vexa-ai/vexa#617):
  a piece of text that contains one is dropped. "Thank you" alone is a caller's line and passes.
"""

from __future__ import annotations

from functools import lru_cache

MAX_CHARS = 2000  # a decode is at most 224 tokens; anything longer is cut before looking
FRAGMENT_REPEATS = 4  # a fragment ("s'm", "la", "s") said this many times in a row: a loop
MAX_WORD_REPEATS = 6  # a 1-3 word unit this many times in a row: a loop ("no no no no" is a caller's)
MAX_NUMBER_REPEATS = 12  # a unit of digits or number words: more than an 11-digit number of one digit
MAX_UNIT_TOKENS = 3
PROMPT_COPY_TERMS = 3  # of the prompt's comma-separated terms, in a row and in its order
LOOPED_TOKEN_CHARS = 8  # "hahahahaha": one token this long made of a 1-3 character unit

# Short pieces that are words in their own right (a fragment is a piece of two letters or fewer
# that is not one of these).
_SHORT_WORDS = frozenset("""
a i o oh no so ok hi um uh mm me my we us it is at to do go on in of or an am be by he if up ah eh
yo ya ye hm pm
""".split())
_NUMBER_WORDS = frozenset("zero oh o one two three four five six seven eight nine ten double triple".split())

PHANTOM_PHRASES = (
    "thank you for watching",
    "thanks for watching",
    "thank you so much for watching",
    "thank you very much for watching",
    "please subscribe",
    "subscribe to my channel",
    "subscribe to the channel",
    "like and subscribe",
    "don't forget to subscribe",
    "see you in the next video",
    "i'll see you in the next video",
    "subtitles by the amara org community",
    "amara org",
    "subtitles by",
    "subtitled by",
    "captions by",
    "transcribed by",
    "transcription by castingwords",
    "translated by",
    "thanks for listening and see you next time",
)


def phantom(text: str) -> str | None:
    """Why ``text`` is not the caller's words ("loop" or "phrase"), or None."""
    tokens = _tokens(text[:MAX_CHARS])
    if not tokens:
        return None
    if _phrase(tokens):
        return "phrase"
    if _looped(tokens):
        return "loop"
    return None


def _tokens(text: str) -> list[tuple[str, ...]]:
    """Whitespace tokens, lower case, each as its alphanumeric pieces ("s'm" -> ("s", "m"),
    "la-la-la" -> ("la", "la", "la")); tokens with no letter or digit are left out."""
    out: list[tuple[str, ...]] = []
    for raw in text.lower().split():
        pieces: list[str] = []
        current: list[str] = []
        for ch in raw:
            if ch.isalnum():
                current.append(ch)
            elif current:
                pieces.append("".join(current))
                current = []
        if current:
            pieces.append("".join(current))
        if pieces:
            out.append(tuple(pieces))
    return out


def _phrase(tokens: list[tuple[str, ...]]) -> bool:
    padded = f" {_plain(tokens)} "
    return any(f" {phrase} " in padded for phrase in PHANTOM_PHRASES)


def _plain(tokens: list[tuple[str, ...]]) -> str:
    """Words joined by single spaces with the apostrophes kept ("don't"), other marks gone, so
    "Subtitles by the Amara.org community." reads "subtitles by the amara org community"."""
    return " ".join("'".join(t) if _has_apostrophe_word(t) else " ".join(t) for t in tokens)


def _has_apostrophe_word(pieces: tuple[str, ...]) -> bool:
    # "don't", "i'll": two pieces, the second a contraction tail
    return len(pieces) == 2 and pieces[1] in ("t", "ll", "s", "re", "ve", "m", "d")


def _is_fragment(pieces: tuple[str, ...]) -> bool:
    """A token of short pieces, one of them no word at all ("s'm", "la", "b"; not "no", "a")."""
    return all(len(p) <= 2 for p in pieces) and any(p not in _SHORT_WORDS for p in pieces)


def _looped(tokens: list[tuple[str, ...]]) -> bool:
    # Inside one token: "la-la-la-la", "s's's's's" (pieces; a stutter "I-I-I-I" is a caller's),
    # "hahahahaha" (characters).
    for pieces in tokens:
        if len(pieces) >= FRAGMENT_REPEATS and _periodic(pieces, max_period=2) and _is_fragment(pieces[:2]):
            return True
        if len(pieces) == 1 and len(pieces[0]) >= LOOPED_TOKEN_CHARS and _periodic(pieces[0], max_period=3):
            return True
    # Across tokens: a unit of 1-3 tokens repeated back to back.
    for period in range(1, MAX_UNIT_TOKENS + 1):
        run = 0  # tokens so far that equal the token one period before
        for i in range(period, len(tokens)):
            if tokens[i] == tokens[i - period]:
                run += 1
                repeats = run // period + 1
                unit = tokens[i - period + 1:i + 1]
                limit = MAX_NUMBER_REPEATS if all(map(_is_number, unit)) else MAX_WORD_REPEATS
                if repeats >= limit or (repeats >= FRAGMENT_REPEATS and all(map(_is_fragment, unit))):
                    return True
            else:
                run = 0
    return False


def _is_number(pieces: tuple[str, ...]) -> bool:
    return all(p.isdigit() or p in _NUMBER_WORDS for p in pieces)


def _periodic(seq: tuple[str, ...] | str, max_period: int) -> bool:
    """``seq`` is one unit of up to ``max_period`` items repeated (at least twice) to its end."""
    for period in range(1, max_period + 1):
        if len(seq) >= 2 * period and all(seq[i] == seq[i - period] for i in range(period, len(seq))):
            return True
    return False


def copies_prompt(text: str, prompt: str) -> bool:
    """``text`` writes out ``PROMPT_COPY_TERMS`` of ``prompt``'s terms in a row (words compared,
    punctuation and case aside)."""
    if not prompt:
        return False
    said = f" {_plain(_tokens(text[:MAX_CHARS]))} "
    return any(run in said for run in _prompt_runs(prompt))


@lru_cache(maxsize=256)
def _prompt_runs(prompt: str) -> tuple[str, ...]:
    terms = [plain for term in prompt.split(",") if (plain := _plain(_tokens(term)))]
    return tuple(f" {' '.join(terms[i:i + PROMPT_COPY_TERMS])} " for i in range(len(terms) - PROMPT_COPY_TERMS + 1))
