"""How travisvn/chatterbox-tts-api cuts the text of a streamed request into the pieces it
synthesises one after the other (one audio write or SSE delta each): a port of its
app/core/text_processing.py (``get_streaming_settings``, ``split_text_for_streaming`` and the
``_split_by_*`` helpers), so the peer streams as many pieces as the real server would.
"""

from __future__ import annotations

import re

STRATEGIES = ("sentence", "paragraph", "fixed", "word")  # app/models/requests.py
QUALITIES = ("fast", "balanced", "high")


def streaming_chunks(text: str, chunk_size: int | None = None, strategy: str | None = None,
                     quality: str | None = None) -> list[str]:
    """The pieces, as the server's ``get_streaming_settings`` then ``split_text_for_streaming``."""
    size = chunk_size or {"fast": 100, "high": 300}.get(quality or "", 200)
    strategy = strategy or {"fast": "word", "high": "paragraph"}.get(quality or "", "sentence")
    if strategy == "paragraph":
        return _by_paragraphs(text, size)
    if strategy == "word":
        return _by_words(text, size)
    if strategy == "fixed":
        return [piece for i in range(0, len(text), size) if (piece := text[i:i + size].strip())]
    return _by_sentences(text, size)


def _pack(parts: list[str], max_length: int, joiner: str, too_long) -> list[str]:  # type: ignore[no-untyped-def]
    """The server's loop: parts joined while they fit, a part longer than ``max_length`` cut by ``too_long``."""
    chunks: list[str] = []
    current = ""
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if len(current) + len(part) + len(joiner) <= max_length:
            current = current + joiner + part if current else part
            continue
        if current:
            chunks.append(current.strip())
        if len(part) > max_length:
            chunks.extend(too_long(part, max_length))
            current = ""
        else:
            current = part
    if current:
        chunks.append(current.strip())
    return [chunk for chunk in chunks if chunk.strip()]


def _by_paragraphs(text: str, max_length: int) -> list[str]:
    return _pack(re.split(r"\n\s*\n", text.strip()), max_length, "\n\n", _by_sentences)


def _by_sentences(text: str, max_length: int) -> list[str]:
    return _pack(re.split(r"(?<=[.!?])\s+", text.strip()), max_length, " ", _long_sentence)


def _by_words(text: str, max_length: int) -> list[str]:
    def split_word(word: str, size: int) -> list[str]:
        return [word[i:i + size] for i in range(0, len(word), size)]

    return _pack(text.split(), max_length, " ", split_word)


def _long_sentence(sentence: str, max_length: int) -> list[str]:
    chunks = [sentence]
    for delimiter in (", ", "; ", " - ", " — ", ": ", " and ", " or ", " but "):
        cut: list[str] = []
        for chunk in chunks:
            if len(chunk) <= max_length:
                cut.append(chunk)
                continue
            current = ""
            for part in chunk.split(delimiter):
                if len(current) + len(delimiter) + len(part) <= max_length:
                    current += (delimiter if current else "") + part
                else:
                    if current:
                        cut.append(current)
                    current = part
            if current:
                cut.append(current)
        chunks = cut
    final = [piece for chunk in chunks for piece in (_by_words(chunk, max_length) if len(chunk) > max_length
                                                     else [chunk])]
    return [chunk.strip() for chunk in final if chunk.strip()]
