"""Answering the caller: the model's reply streamed into speech, and its tool calls.

``respond`` is the body of a reply to a caller turn (or a DTMF key, or typed text): the model is
asked with the history, its text is cut into sentences (``Chunker``) and spoken while it writes,
and its tool calls run in order, their results into the history, before the next model round
(at most ``max_tool_rounds`` rounds with tools). A tool that ends or transfers the call ends the
reply (the model's goodbye is said with it, or a default line) and sets ``reply.after``; tools
still running after ``filler_after_s`` get a filler line (once a reply), one past
``tool_timeout_s`` a timeout result. A DTMF key mapped to a tool calls it as if the model had asked.

Provider failures: providers are plain objects, so a failover wrapper can stand in for any of
them. An error from the LLM or TTS during a reply is logged and counted, the whole sentences
already written are still said, and the caller hears an apology; the call goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any, Protocol

from runtime.events.models import ToolCalled
from runtime.pipeline.chunker import Chunker
from runtime.pipeline.clock import Clock
from runtime.pipeline.history import History
from runtime.pipeline.replies import Replies
from runtime.pipeline.reporting import CallReporter
from runtime.pipeline.settings import ConversationSettings
from runtime.pipeline.speech import Reply, Speaker, Voice
from runtime.providers.base import LanguageModel, LlmRequest, Message, TextDelta, ToolCall, ToolCallRequest
from runtime.tools.base import ToolBox, ToolContext, ToolResult

log = logging.getLogger("voicectl.pipeline")


class Brain(Protocol):
    """What the responder reads of the conversation (runtime.pipeline.conversation)."""

    llm: LanguageModel  # read at each reply: a failover wrapper may be put in its place


class Responder:
    """Writes one call's answers with the model, speaks them, and runs the model's tools."""

    def __init__(self, conversation: Brain, *, settings: ConversationSettings, history: History, voice: Voice,
                 replies: Replies, toolbox: ToolBox | None, tool_context: ToolContext, clock: Clock,
                 reporter: CallReporter, spawn: Callable[[Awaitable[Any]], asyncio.Task[Any]], call_id: str) -> None:
        self.conversation, self.settings, self.history, self.voice = conversation, settings, history, voice
        self.replies, self.toolbox, self.tool_context = replies, toolbox, tool_context
        self.clock, self.reporter, self.spawn, self.call_id = clock, reporter, spawn, call_id

    async def respond(self, reply: Reply, speaker: Speaker, calls: list[ToolCall] | None = None) -> None:
        """Answer the caller: stream the model, speak as it writes, run its tools; an apology
        when a provider fails on the way."""
        try:
            await self._converse(reply, speaker, calls or [])
            await speaker.finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if exc is speaker.error:
                self.reporter.provider_error("tts", exc)
            else:  # the model broke: the whole sentences it wrote before are still said
                self.reporter.provider_error("llm", exc)
                try:
                    await speaker.finish()
                except Exception as tts_exc:
                    self.reporter.provider_error("tts", tts_exc)
            speaker.abort()
            await self._apologize(reply)

    async def _converse(self, reply: Reply, speaker: Speaker, calls: list[ToolCall]) -> None:
        settings, rounds = self.settings, 0
        if calls:  # a DTMF-mapped tool: called as if the model had asked for it
            message = Message("assistant", tool_calls=tuple(calls))
            reply.messages.append(message)
            self.history.add(message)
            if await self._run_tools(reply, speaker, calls):
                return
            rounds = 1
        while True:
            tools = self.toolbox.specs() if self.toolbox is not None and rounds < settings.max_tool_rounds else ()
            request = LlmRequest(system=settings.system_prompt, messages=self.history.snapshot(), tools=tools,
                                 model=settings.model, temperature=settings.temperature,
                                 max_tokens=settings.max_tokens)
            message = Message("assistant")
            reply.messages.append(message)
            chunker, calls, timing = Chunker(), [], reply.timing
            async with aclosing(self.conversation.llm.stream(request)) as events:
                async for event in events:
                    if speaker.error is not None:
                        raise speaker.error
                    if timing is not None and timing.llm_first_at is None:
                        timing.llm_first_at = self.clock.now()
                    if isinstance(event, TextDelta):
                        message.content += event.text
                        for chunk in chunker.push(event.text):
                            speaker.say(chunk, message)
                    elif isinstance(event, ToolCallRequest):
                        calls.append(event.call)
            for chunk in chunker.flush():
                speaker.say(chunk, message)
            if calls and not tools:  # asked without tools (the round cap), it called one anyway
                log.warning("model called a tool past the round limit; ignored", extra={"call_id": self.call_id})
                calls = []
            message.tool_calls = tuple(calls)
            if message.content or calls:
                self.history.add(message)
            if not calls or await self._run_tools(reply, speaker, calls):
                return
            rounds += 1

    async def _run_tools(self, reply: Reply, speaker: Speaker, calls: list[ToolCall]) -> bool:
        """Run the calls in order, results into the history; True when one ends or transfers the
        call (no further model round: the model says its goodbye with the call, or a default line)."""
        reply.pending_calls = list(calls)
        filler = None if reply.filler_said else self.spawn(self._filler(reply, speaker))
        try:
            for call in calls:
                result = await self._call_tool(call)
                self.history.add(Message("tool", _tool_content(result.content), tool_call_id=call.id, name=call.name))
                reply.pending_calls.remove(call)
                if result.transfer_to:
                    reply.after = ("transfer", result.transfer_to)
                elif result.end_call and reply.after is None:
                    reply.after = ("hangup", "agent_ended")
        finally:
            if filler is not None:
                filler.cancel()
        if reply.after is None:
            return False
        if speaker.pieces == 0:
            phrases = self.settings.phrases
            line = phrases.transferring if reply.after[0] == "transfer" else phrases.goodbye
            message = Message("assistant", line)
            reply.messages.append(message)
            self.history.add(message)
            speaker.say(line, message)
        return True

    async def _filler(self, reply: Reply, speaker: Speaker) -> None:
        await self.clock.sleep(self.settings.filler_after_s)
        reply.filler_said = True
        speaker.say(self.settings.phrases.filler, None)

    async def _call_tool(self, call: ToolCall) -> ToolResult:
        if self.toolbox is None:
            return ToolResult({"status": "error", "error": "this agent has no tools"}, status="error")
        started = self.clock.now()
        work = asyncio.ensure_future(self.toolbox.call(call, self.tool_context))
        timer = asyncio.ensure_future(self.clock.sleep(self.settings.tool_timeout_s))
        try:
            await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not work.done():
                work.cancel()
        if work.done() and not work.cancelled():
            if work.exception() is None:
                return work.result()
            log.error("tool failed", exc_info=work.exception(), extra={"call_id": self.call_id, "tool": call.name})
            return ToolResult({"status": "error", "error": "the tool failed"}, status="error")
        latency = int((self.clock.now() - started) * 1000)
        self.reporter.emit(ToolCalled(name=call.name, arguments=call.arguments, status="timeout", latency_ms=latency))
        return ToolResult({"status": "timeout", "error": "the tool did not answer in time"}, status="timeout",
                          latency_ms=latency)

    async def _apologize(self, reply: Reply) -> None:
        """After a provider failure: keep what was said, then say sorry (if the TTS can)."""
        self.history.keep_heard(reply.messages, reply.ledger, float("inf"), mark=False)
        self.replies.cancel_pending_tools(reply)
        text = self.settings.phrases.apology
        message = Message("assistant", text)
        reply.messages.append(message)
        self.history.add(message)
        speaker = Speaker(self.voice, reply)
        speaker.say(text, message)
        try:
            await speaker.finish()
        except Exception as exc:
            self.reporter.provider_error("tts", exc)
        finally:
            speaker.abort()


def _tool_content(content: dict[str, Any] | str) -> str:
    return content if isinstance(content, str) else json.dumps(content, default=str)
