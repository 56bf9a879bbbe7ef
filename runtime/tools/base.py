"""What the pipeline needs from the tool layer.

A ``ToolBox`` is built per call from the agent version: it lists the tools the model may call
(``specs``) and runs one call (``call``), storing it in ``tool_calls`` and emitting
``tool.called``. Call-control tools (end_call, transfer_to_human) do not act themselves: their
result asks the pipeline to end or transfer the call after the agent has said its last words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from runtime.providers.base import ToolCall, ToolSpec

ToolStatus = Literal["ok", "error", "timeout"]


@dataclass(frozen=True, slots=True)
class ToolResult:
    content: dict[str, Any] | str  # fed back to the model (JSON-serialisable)
    status: ToolStatus = "ok"
    latency_ms: int = 0
    end_call: bool = False  # end the call once the reply has been spoken
    transfer_to: str | None = None  # transfer the call once the reply has been spoken


@dataclass(slots=True)
class ToolContext:
    tenant_id: str
    call_id: str
    agent_id: str | None = None
    caller: str | None = None  # the caller's number, when known
    escalation_target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ToolBox(Protocol):
    def specs(self) -> tuple[ToolSpec, ...]: ...

    async def call(self, call: ToolCall, ctx: ToolContext) -> ToolResult: ...
