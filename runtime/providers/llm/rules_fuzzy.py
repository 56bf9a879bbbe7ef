"""Tolerant keywords for the rules brain: one misheard sound does not lose the caller's intent.

Speech recognition turns "table" into "tabel", "reservation" into "reservashun", "cancel my
booking" into "council my booking". Besides matching as written, each keyword (of up to
``MAX_KEYWORD_WORDS`` words) is compared with every run of as many words of the caller's turn (its
first ``MAX_WORDS``), and matches misheard when the run

- *sounds the same*: the same metaphone key word by word (jellyfish), with its spelling within half
  the keyword's letters (OSA edits: insert, delete, substitute, swap two neighbours); or
- is *spelled nearly the same*, for a one-word keyword: within the keyword's edit budget when that
  is 2 or more (a short word one letter away is often another word: "order"/"older",
  "hours"/"yours"; so are phrases: "what is all" is not "that is all").

The edit budget is the intent's ``fuzzy`` (0-3), or by default 0 for keywords under 5 letters, 1
for 5 to 7, 2 for 8 or more; 0 (or ``exact: true``) means the intent's keywords match only as
written. The script's order decides between intents, as for keywords written out, so the result
depends only on the text and the script. The work is bounded: at most ``MAX_WORDS`` x
``MAX_KEYWORD_WORDS`` runs, compared in one rapidfuzz ``cdist`` call per run length, and a
dictionary look-up of their sound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jellyfish
import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import OSA

MAX_WORDS = 60  # of a caller turn (a turn is cut at rules_slots.MAX_TEXT characters before this)
MAX_KEYWORD_WORDS = 4  # longer keywords match only as written
SHORT_LETTERS, LONG_LETTERS = 5, 8  # default edit budget: 0 below SHORT, 1 below LONG, 2 from LONG


@dataclass(frozen=True, slots=True)
class _Keyword:
    owner: int  # the intent's position in the script
    text: str
    sound: tuple[str, ...]
    budget: int  # edits allowed in spelling
    letters: int


def default_budget(keyword: str) -> int:
    letters = sum(ch.isalpha() for ch in keyword)
    return 0 if letters < SHORT_LETTERS else 1 if letters < LONG_LETTERS else 2


def _sound(words: Sequence[str]) -> tuple[str, ...]:
    return tuple(jellyfish.metaphone(w) for w in words)


class _Group:
    """The keywords of one word count, as arrays for whole-matrix comparisons."""

    def __init__(self, keywords: list[_Keyword]) -> None:
        self.texts = [k.text for k in keywords]
        self.owners = np.array([k.owner for k in keywords], dtype=np.int32)
        self.budgets = np.array([k.budget for k in keywords], dtype=np.int32)
        self.letters = np.array([k.letters for k in keywords], dtype=np.int32)
        self.by_sound: dict[tuple[str, ...], list[int]] = {}
        for index, keyword in enumerate(keywords):
            self.by_sound.setdefault(keyword.sound, []).append(index)


class TolerantKeywords:
    """The script's keywords that may match with tolerance; ``closest(text)`` names the intent."""

    def __init__(self, intents: Sequence[tuple[Sequence[str], int | None]]) -> None:
        """``intents``: per intent in script order, its normalized keywords and its edit budget
        (None: by length; 0: exact only)."""
        by_length: dict[int, list[_Keyword]] = {}
        for owner, (keywords, budget) in enumerate(intents):
            for keyword in keywords:
                words = keyword.split()
                if not words or len(words) > MAX_KEYWORD_WORDS or not keyword.replace(" ", "").replace("'", "").isalpha():
                    continue  # "[dtmf 0]", digits, long phrases: as written only
                edits = default_budget(keyword) if budget is None else budget
                if edits == 0:
                    continue
                by_length.setdefault(len(words), []).append(
                    _Keyword(owner, keyword, _sound(words), edits, sum(ch.isalpha() for ch in keyword)))
        self._groups = {size: _Group(keywords) for size, keywords in by_length.items()}

    def __bool__(self) -> bool:
        return bool(self._groups)

    def first(self, text: str) -> int | None:
        """The script position of the first intent with a keyword misheard in ``text`` (normalized), or None."""
        words = text.split()[:MAX_WORDS]
        if not words or not self._groups:
            return None
        sounds = _sound(words)
        first: int | None = None
        for size, group in self._groups.items():
            if size > len(words):
                continue
            count = len(words) - size + 1
            windows = [" ".join(words[i:i + size]) for i in range(count)]
            edits = process.cdist(windows, group.texts, scorer=OSA.distance, dtype=np.int32, workers=1)
            if size == 1:  # spelled nearly the same (one word, a budget of 2 or more)
                near = (edits <= group.budgets) & (group.budgets >= 2)
            else:
                near = np.zeros(edits.shape, dtype=bool)
            for i in range(count):  # sounds the same, spelled within half the keyword's letters
                for k in group.by_sound.get(sounds[i:i + size], ()):
                    if edits[i, k] <= group.letters[k] // 2:
                        near[i, k] = True
            owners = group.owners[near.any(axis=0)]
            if owners.size and (first is None or int(owners.min()) < first):
                first = int(owners.min())
        return first
