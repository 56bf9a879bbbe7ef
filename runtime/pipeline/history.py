"""The conversation as the model sees it, and the record of what the caller actually heard.

``SpokenLedger`` notes, for one reply, each piece of text sent to the transport and how many
milliseconds of audio it became (the TTS ``AudioChunk`` text alignment when the engine gives
it, else the chunk of text we asked for). When the caller barges in after ``played_ms`` of the
reply, the heard text is every piece that finished playing plus, for the piece playing at that
moment, the share of its characters proportional to the share of its audio played, cut back to
the last whole word. ``History.keep_heard`` rewrites the reply's assistant messages to that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from runtime.pipeline.chunker import speakable
from runtime.providers.base import Message

TRAILING = " ,;:-–—"


@dataclass(slots=True)
class Spoken:
    text: str
    start_ms: float  # offset in the reply's audio
    ms: float
    message: Message | None  # the assistant message it belongs to; None for fillers

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.ms


class SpokenLedger:
    """What one reply (one generation) has sent to the transport, in playback order."""

    __slots__ = ("entries", "total_ms", "_text", "_message", "_aligned", "_open")

    def __init__(self) -> None:
        self.entries: list[Spoken] = []
        self.total_ms = 0.0
        self._text, self._message = "", None
        self._aligned: bool | None = None
        self._open = False

    def begin(self, text: str, message: Message | None) -> None:
        """A new piece of text goes to the TTS; its audio follows through ``audio``."""
        self._text, self._message, self._aligned, self._open = text, message, None, False

    def audio(self, ms: float, text: str = "") -> None:
        """``ms`` of audio of the current piece was sent; ``text``: the engine's alignment, if any.

        The first chunk decides: chunks carrying text each start an entry (text-less ones extend
        the last); without alignment the whole piece is one entry."""
        if self._aligned is None:
            self._aligned = bool(text.strip())
        if not self._open or (self._aligned and text.strip()):
            piece = text.strip() if self._aligned else self._text
            self.entries.append(Spoken(piece, self.total_ms, ms, self._message))
            self._open = True
        else:
            self.entries[-1].ms += ms
        self.total_ms += ms

    def full_text(self) -> str:
        return " ".join(e.text for e in self.entries if e.text)

    def heard(self, played_ms: float) -> list[tuple[Spoken, str]]:
        """Each entry with the part of its text played out by ``played_ms``."""
        out = []
        for entry in self.entries:
            if played_ms >= entry.end_ms:
                out.append((entry, entry.text))
            elif played_ms <= entry.start_ms or entry.ms <= 0:
                out.append((entry, ""))
            else:
                out.append((entry, heard_prefix(entry.text, (played_ms - entry.start_ms) / entry.ms)))
        return out

    def heard_text(self, played_ms: float) -> str:
        return " ".join(text for _, text in self.heard(played_ms) if text)


def heard_prefix(text: str, fraction: float) -> str:
    """The first ``fraction`` of ``text`` by characters, without a word cut in half."""
    n = int(len(text) * max(0.0, min(1.0, fraction)))
    if n >= len(text):
        return text
    prefix = text[:n]
    if not text[n].isspace():  # mid-word: the caller did not hear this word whole
        space = prefix.rfind(" ")
        prefix = prefix[:space] if space >= 0 else ""
    return prefix.rstrip(TRAILING)


class History:
    """The messages sent to the model, oldest first."""

    def __init__(self, max_messages: int = 80) -> None:
        self.messages: list[Message] = []
        self.max_messages = max_messages

    def add_user(self, text: str) -> Message:
        """The caller's words. Consecutive user messages (the agent said nothing in between,
        e.g. its reply was cut before any audio) become one."""
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == "user":
            last.content = f"{last.content} {text}".strip()
            return last
        message = Message("user", text)
        self.messages.append(message)
        return message

    def add(self, message: Message) -> Message:
        self.messages.append(message)
        return message

    def __contains__(self, message: object) -> bool:
        return any(m is message for m in self.messages)

    def remove(self, message: Message) -> None:
        self.messages = [m for m in self.messages if m is not message]

    def snapshot(self) -> tuple[Message, ...]:
        """The last ``max_messages`` messages (a cut window starts at a user message, never at a
        tool result cut off from its call), adjacent plain assistant lines merged into one."""
        window = self.messages[-self.max_messages:]
        cut = len(window) < len(self.messages)
        start = next((i for i, m in enumerate(window) if m.role == "user"), 0) if cut else 0
        out: list[Message] = []
        for message in window[start:]:
            prev = out[-1] if out else None
            if (prev is not None and message.role == prev.role == "assistant"
                    and not prev.tool_calls and not message.tool_calls):
                out[-1] = replace(prev, content=f"{prev.content} {message.content}".strip(),
                                  interrupted=prev.interrupted or message.interrupted)
            else:
                out.append(replace(message))
        return tuple(out)

    def keep_heard(self, messages: list[Message], ledger: SpokenLedger, played_ms: float, *,
                   mark: bool = True) -> str:
        """After a barge-in: the reply's assistant ``messages`` keep only what the caller heard
        (``interrupted=True`` where that is less than they said, unless ``mark`` is False; dropped
        when nothing is left and they called no tool; added when not in the history yet).
        Returns the heard text."""
        heard: dict[int, list[str]] = {}
        for entry, text in ledger.heard(played_ms):
            if entry.message is not None and text:
                heard.setdefault(id(entry.message), []).append(text)
        for message in messages:
            text = " ".join(heard.get(id(message), ()))
            if text != speakable(message.content):
                message.content = text
                message.interrupted = message.interrupted or mark
            known = message in self
            if not message.content and not message.tool_calls:
                if known:
                    self.remove(message)
            elif not known:
                self.add(message)
        return ledger.heard_text(played_ms)
