"""Cuts a streamed reply into speakable chunks, so TTS starts while the LLM is still writing.

A chunk ends at a sentence end (``. ! ?`` followed by a space, not after an abbreviation or
an initial), at a line break, or, for the first chunk only, at a clause boundary (comma,
semicolon, colon, dash) once it has ``first_clause_words`` words: the caller hears the start
of the answer sooner. Later chunks are cut at a clause only when a sentence runs long, and
any run without punctuation is cut at a space after ``max_chars``. Markdown emphasis and
heading marks are removed: a voice must not read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)")
CLAUSE_END = re.compile(r"[,;:](?=\s)|\s[-–—](?=\s)|[–—](?=\s)")
MARKUP = re.compile(r"[*`]+|^\s*(?:#+|[-•])\s+", re.MULTILINE)
SPACES = re.compile(r"\s+")
WORDLIKE = re.compile(r"\w")
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "no", "approx", "jr", "sr", "prof",
    "inc", "ltd", "mt", "ave", "apt", "dept", "min", "max", "fig", "ca", "a.m", "p.m",
})


@dataclass(slots=True)
class Chunker:
    first_clause_words: int = 4
    clause_chars: int = 120  # a later chunk may end at a clause once it is this long
    max_chars: int = 240
    _buf: str = ""
    _emitted: int = 0

    def push(self, text: str) -> list[str]:
        """Add streamed text; the chunks that are now complete."""
        self._buf += text
        out: list[str] = []
        while (cut := self._cut()) is not None:
            chunk, self._buf = self._buf[:cut], self._buf[cut:]
            self._emit(chunk, out)
        return out

    def flush(self) -> list[str]:
        """The rest, at the end of the reply."""
        out: list[str] = []
        chunk, self._buf = self._buf, ""
        self._emit(chunk, out)
        return out

    def _cut(self) -> int | None:
        buf = self._buf
        cuts: list[int] = []
        for match in SENTENCE_END.finditer(buf):
            if not _abbreviation(buf, match.start()) and WORDLIKE.search(buf, 0, match.end()):
                cuts.append(match.end())
                break
        newline = buf.find("\n")
        while newline >= 0:
            if WORDLIKE.search(buf, 0, newline):
                cuts.append(newline + 1)
                break
            newline = buf.find("\n", newline + 1)
        for match in CLAUSE_END.finditer(buf):
            head = buf[:match.end()]
            if ((self._emitted == 0 and len(head.split()) >= self.first_clause_words)
                    or len(head) >= self.clause_chars):
                cuts.append(match.end())
                break
        if cuts:
            return min(cuts)
        if len(buf) > self.max_chars:
            space = buf.rfind(" ", 0, self.max_chars)
            return space + 1 if space > 0 else self.max_chars
        return None

    def _emit(self, chunk: str, out: list[str]) -> None:
        text = speakable(chunk)
        if text:
            out.append(text)
            self._emitted += 1


def speakable(text: str) -> str:
    """Text as it should be spoken: no markdown marks, single spaces; "" when nothing is left to say."""
    text = SPACES.sub(" ", MARKUP.sub("", text)).strip()
    return text if WORDLIKE.search(text) else ""


def _abbreviation(buf: str, dot: int) -> bool:
    """True when the ``.`` at ``dot`` ends an abbreviation or an initial rather than a sentence."""
    if buf[dot] != ".":
        return False
    head = buf[:dot].rsplit(None, 1)
    word = head[-1] if head else ""
    word = word.lstrip("(\"'").lower()
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())
