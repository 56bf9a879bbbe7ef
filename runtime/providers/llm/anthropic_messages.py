"""The conversation history as the Anthropic Messages API wants it.

- ``system`` is one text block and the last tool definition carries
  ``cache_control: {"type": "ephemeral"}``: tools and system prompt are the stable prefix of
  every request in a call, so from the second turn on they are read from the prompt cache.
- Assistant tool calls become ``tool_use`` blocks; our ``role="tool"`` messages become
  ``tool_result`` blocks in a user turn (failed results flagged ``is_error``); consecutive
  messages of one role are merged into one turn, tool results first.
- The API refuses a first turn that is not the user's, empty text blocks, a ``tool_use``
  without its result in the next turn and a ``tool_result`` without its ``tool_use``. A call
  opens with the agent's greeting, and a barge-in or a cut history window can leave either
  half of a tool exchange, so: a bracketed user marker goes before a leading assistant turn,
  empty texts are dropped, a missing result is filled in as an error, and a result without its
  call is kept as plain text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.providers.base import Message, ToolSpec
from runtime.providers.llm.llm_http import tool_failed

CACHE = {"type": "ephemeral"}
CALL_STARTED = "[the call started]"
MISSING_RESULT = '{"status": "cancelled", "error": "no result was recorded for this tool call"}'

Block = dict[str, Any]
Turn = dict[str, Any]  # {"role": "user" | "assistant", "content": [Block, ...]}


def system_blocks(system: str) -> list[Block]:
    if not system.strip():
        return []
    return [{"type": "text", "text": system, "cache_control": dict(CACHE)}]


def tool_params(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools
    ]
    if out:
        out[-1]["cache_control"] = dict(CACHE)
    return out


def turns(messages: Sequence[Message]) -> list[Turn]:
    out: list[Turn] = []
    for message in messages:
        if message.role == "user":
            _push(out, "user", _text(message.content))
        elif message.role == "assistant":
            blocks = _text(message.content.rstrip())  # trailing space is refused in a final assistant turn
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                       for c in message.tool_calls]
            _push(out, "assistant", blocks)
        elif message.role == "tool":
            result: Block = {"type": "tool_result", "tool_use_id": message.tool_call_id or ""}
            if message.content:
                result["content"] = message.content
            if tool_failed(message.content):
                result["is_error"] = True
            _push(out, "user", [result])
    _pair_tool_blocks(out)
    if out and out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": CALL_STARTED}]})
    return out


def _text(text: str) -> list[Block]:
    return [{"type": "text", "text": text}] if text.strip() else []


def _push(out: list[Turn], role: str, blocks: list[Block]) -> None:
    if not blocks:
        return
    if out and out[-1]["role"] == role:
        out[-1]["content"].extend(blocks)
    else:
        out.append({"role": role, "content": blocks})


def _pair_tool_blocks(out: list[Turn]) -> None:
    """Each assistant ``tool_use`` answered by a ``tool_result`` at the start of the next turn (in
    call order), and every ``tool_result`` answering a ``tool_use`` of the turn before."""
    for i in range(len(out) - 1, -1, -1):  # a user turn after every assistant turn that calls tools
        if _tool_ids(out[i]) and (i + 1 == len(out) or out[i + 1]["role"] != "user"):
            out.insert(i + 1, {"role": "user", "content": []})
    for i, turn in enumerate(out):
        if turn["role"] != "user":
            continue
        asked = _tool_ids(out[i - 1]) if i > 0 else []
        answers: dict[str, Block] = {}
        rest: list[Block] = []
        for block in turn["content"]:
            if block["type"] != "tool_result":
                rest.append(block)
            elif block["tool_use_id"] in asked:
                answers.setdefault(block["tool_use_id"], block)
            else:  # its tool_use is gone (cut window): keep what the tool said as text
                rest.append({"type": "text", "text": f"[tool result] {block.get('content', '')}".strip()})
        missing = {"content": MISSING_RESULT, "is_error": True}
        turn["content"] = [answers.get(tid) or {"type": "tool_result", "tool_use_id": tid, **missing}
                           for tid in asked] + rest


def _tool_ids(turn: Turn) -> list[str]:
    if turn["role"] != "assistant":
        return []
    return [b["id"] for b in turn["content"] if b["type"] == "tool_use"]
