"""The tool shape every tool here has, and the built-in call-control tools.

``end_call`` and ``transfer_to_human`` act on nothing themselves: their results ask the pipeline
to end or transfer the call once the agent's last words are spoken. ``log_note`` keeps the note
in its own ``tool_calls`` row (the result column), which is where a call's notes are read from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.providers.base import ToolSpec
from runtime.tools.base import ToolContext, ToolResult, ToolStatus

MAX_NOTE = 2000


class Tool(Protocol):
    """One callable tool: its spec for the model, a time limit, and the work."""

    spec: ToolSpec
    timeout_s: float

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult: ...


def error_result(message: str, status: ToolStatus = "error", **fields: Any) -> ToolResult:
    """A failed call, worded for the model: it reads ``error`` and decides what to tell the caller."""
    return ToolResult({"status": status, "error": message, **fields}, status=status)


def obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON-schema object for tool parameters."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


@dataclass(frozen=True, slots=True)
class EndCall:
    spec: ToolSpec = ToolSpec(
        "end_call",
        "Hang up the call. Use it once the caller is done (they said goodbye or need nothing else). "
        "Say your goodbye in the same reply: the call ends after it has been spoken.",
        obj({"reason": {"type": "string", "description": "why the call is ending, for the call log"}}),
    )
    timeout_s: float = 2.0

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return ToolResult({"ending": True}, end_call=True)


@dataclass(frozen=True, slots=True)
class TransferToHuman:
    spec: ToolSpec = ToolSpec(
        "transfer_to_human",
        "Transfer the caller to a human colleague. Use it when the caller asks for a person, or when you "
        "cannot help. Tell the caller you are putting them through: the transfer starts after your reply. "
        "Fails when this line has no one to transfer to; then offer to help otherwise or take a note.",
        obj({"reason": {"type": "string", "description": "why the caller needs a person, for the colleague"}}),
    )
    timeout_s: float = 2.0

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if not ctx.escalation_target:
            return error_result("no one to transfer to: this line has no escalation target configured")
        return ToolResult({"transferring": True}, transfer_to=ctx.escalation_target)


@dataclass(frozen=True, slots=True)
class LogNote:
    spec: ToolSpec = ToolSpec(
        "log_note",
        "Save a short note about this call for the staff (a message for someone, a complaint, a request "
        "to call back). The caller does not hear it.",
        obj({
            "note": {"type": "string", "description": f"the note, at most {MAX_NOTE} characters"},
            "category": {"type": "string", "description": "optional label, e.g. callback, complaint, message"},
        }, ("note",)),
    )
    timeout_s: float = 2.0

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        note = str(arguments["note"]).strip()
        if not note:
            return error_result("the note is empty")
        result: dict[str, Any] = {"saved": True, "note": note[:MAX_NOTE]}
        if arguments.get("category"):
            result["category"] = str(arguments["category"])[:100]
        return ToolResult(result)


BUILTINS: dict[str, Callable[[], Tool]] = {
    "end_call": EndCall,
    "transfer_to_human": TransferToHuman,
    "log_note": LogNote,
}
