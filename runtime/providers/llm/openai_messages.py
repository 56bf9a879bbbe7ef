"""The conversation history as OpenAI-compatible chat completions want it.

System prompt first; assistant tool calls as ``tool_calls`` (type ``function``, arguments as a
JSON string); our ``role="tool"`` messages as ``{"role": "tool", "tool_call_id", "content"}``.
Servers refuse a tool message that answers no call and an assistant ``tool_calls`` message
whose calls are not all answered before the next turn, and strict chat templates (vLLM and
llama.cpp running Mistral or Gemma) refuse a conversation that does not alternate from a user
turn. A barge-in or a cut history window can break either rule, so: missing results are filled
in as errors, a result without its call is kept as user text, consecutive user turns are joined
and a bracketed user marker goes before a leading assistant turn (the call's greeting).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from runtime.providers.base import Message, ToolSpec

CALL_STARTED = "[the call started]"
MISSING_RESULT = '{"status": "cancelled", "error": "no result was recorded for this tool call"}'

ChatMessage = dict[str, Any]


def tool_params(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                               "parameters": t.parameters}} for t in tools]


def chat_messages(system: str, messages: Sequence[Message]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for message in messages:
        if message.role == "user":
            if message.content.strip():
                out.append({"role": "user", "content": message.content})
        elif message.role == "assistant":
            if not message.content.strip() and not message.tool_calls:
                continue
            entry: ChatMessage = {"role": "assistant", "content": message.content or None}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                    for c in message.tool_calls]
            out.append(entry)
        elif message.role == "tool":
            out.append({"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content})
    out = _join_users(_pair_tool_messages(out))
    if out and out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": CALL_STARTED})
    return ([{"role": "system", "content": system}] if system.strip() else []) + out


def _pair_tool_messages(messages: list[ChatMessage]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    waiting: list[str] = []  # calls of the last assistant message not answered yet

    def close() -> None:
        out.extend({"role": "tool", "tool_call_id": tid, "content": MISSING_RESULT} for tid in waiting)
        waiting.clear()

    for message in messages:
        if message["role"] == "tool":
            if message["tool_call_id"] in waiting:
                waiting.remove(message["tool_call_id"])
                out.append(message)
            else:  # its call is gone (cut window): keep what the tool said as text
                out.append({"role": "user", "content": f"[tool result] {message['content']}".strip()})
            continue
        close()
        out.append(message)
        waiting.extend(c["id"] for c in message.get("tool_calls") or ())
    close()
    return out


def _join_users(messages: list[ChatMessage]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for message in messages:
        if out and message["role"] == "user" and out[-1]["role"] == "user":
            out[-1] = {"role": "user", "content": f"{out[-1]['content']} {message['content']}"}
        else:
            out.append(message)
    return out
