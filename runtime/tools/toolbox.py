"""CallToolBox: the ToolBox of one call, built from its agent version's config.

``CallToolBox.for_call`` takes the enabled built-ins (``tools``: call control and the sample
booking pack) and the tenant's ``http_tools``. ``call`` checks the arguments against the tool's
JSON Schema (runtime.tools.arguments), runs the tool under its time limit, then stores a
``tool_calls`` row and emits ``tool.called`` in one transaction. It never raises into the pipeline:
an unknown tool, bad arguments, a timeout or a crash inside a tool all come back as error results
the model can read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import aiohttp

from runtime.control.callbacks import CallbackService
from runtime.control.schemas import AgentConfig
from runtime.egress.policy import EgressPolicy
from runtime.events.models import Payload, ToolCalled
from runtime.ids import new_id, now_iso
from runtime.providers.base import ToolCall, ToolSpec
from runtime.store.store import Store, WriteBatch
from runtime.tools.arguments import check_arguments
from runtime.tools.base import ToolContext, ToolResult
from runtime.tools.booking import BookingPack, BookingPolicy
from runtime.tools.builtin import BUILTINS, Tool, error_result
from runtime.tools.callbacks import ScheduleCallback
from runtime.tools.http import HttpTool, SecretLookup

log = logging.getLogger("voicectl.tools")

# CallSession.emit: commits ``batch`` (here: the tool_calls row) with the event, then publishes.
Emit = Callable[[Payload, WriteBatch | None], Awaitable[Any]]


class CallToolBox:
    def __init__(self, tools: Mapping[str, Tool], *, store: Store, emit: Emit,
                 dtmf_tools: Mapping[str, str] | None = None) -> None:
        self.tools = dict(tools)
        self.store = store
        self.emit = emit
        self.dtmf_tools = {d: t for d, t in (dtmf_tools or {}).items() if t in self.tools}

    @classmethod
    def for_call(
        cls, config: AgentConfig, *, store: Store, emit: Emit, timezone: str = "UTC",
        http: aiohttp.ClientSession | None = None, signing_secret: SecretLookup | None = None,
        policy: BookingPolicy | None = None, clock: Callable[[], datetime] | None = None,
        egress: EgressPolicy | None = None, callbacks: CallbackService | None = None,
    ) -> CallToolBox:
        """``config``: the agent version's config.
        ``timezone``: the tenant's (booking dates and times are local). ``http``: the app's shared
        client session, egress-guarded (``egress``: the policy of a session made per request without
        it). ``signing_secret``: tenant_id -> secret for HTTP tool requests, e.g.
        ``lambda t: control.credentials.secret(t, "tools")``."""
        pack = BookingPack(store, timezone, policy or BookingPolicy())
        if clock is not None:
            pack.clock = clock
        pack_tools = pack.tools()
        if callbacks is not None:
            pack_tools["schedule_callback"] = ScheduleCallback(callbacks, timezone, **({"clock": clock} if clock else {}))
        tools: dict[str, Tool] = {}
        for name in config.tools:
            if name in BUILTINS:
                tools[name] = BUILTINS[name]()
            elif name in pack_tools:
                tools[name] = pack_tools[name]
            else:
                log.warning("unknown built-in tool in agent config", extra={"tool": name})
        for entry in config.http_tools:
            if entry.name in tools:
                log.warning("http tool shadowed by a built-in of the same name", extra={"tool": entry.name})
                continue
            tools[entry.name] = HttpTool.from_config(entry, http=http, signing_secret=signing_secret, egress=egress)
        return cls(tools, store=store, emit=emit, dtmf_tools=config.dtmf_tools)

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(tool.spec for tool in self.tools.values())

    def dtmf_tool(self, digit: str) -> str | None:
        """The tool a keypad digit runs at once (AgentConfig.dtmf_tools), if any."""
        return self.dtmf_tools.get(digit)

    async def call(self, call: ToolCall, ctx: ToolContext) -> ToolResult:
        started = time.perf_counter()
        result = await self._run(call, ctx)
        result = replace(result, latency_ms=int((time.perf_counter() - started) * 1000))
        await self._record(call, ctx, result)
        return result

    async def _run(self, call: ToolCall, ctx: ToolContext) -> ToolResult:
        tool = self.tools.get(call.name)
        if tool is None:
            return error_result(f"there is no tool named {call.name!r}; available: {', '.join(self.tools) or 'none'}")
        arguments = call.arguments if isinstance(call.arguments, dict) else {}
        arguments, problems = check_arguments(tool.spec.parameters, arguments)
        if problems:
            return error_result(f"{call.name} was not run, its arguments are invalid: {'; '.join(problems)}")
        try:
            async with asyncio.timeout(tool.timeout_s):
                return await tool.run(arguments, ctx)
        except TimeoutError:
            return error_result(f"{call.name} did not finish within {tool.timeout_s:g} s", "timeout")
        except Exception:
            log.exception("tool failed", extra={"tool": call.name, "call_id": ctx.call_id})
            return error_result(f"{call.name} failed unexpectedly")

    async def _record(self, call: ToolCall, ctx: ToolContext, result: ToolResult) -> None:
        """The tool_calls row and the tool.called event, committed together; a failure here is
        logged, never passed on (the caller is still on the line)."""
        arguments = call.arguments if isinstance(call.arguments, dict) else {}
        try:
            batch = self.store.batch()
            await batch.tool_calls.insert({
                "id": new_id("tc"), "tenant_id": ctx.tenant_id, "call_id": ctx.call_id, "name": call.name,
                "arguments": arguments, "result": result.content, "status": result.status,
                "latency_ms": result.latency_ms, "created_at": now_iso(),
            })
            await self.emit(ToolCalled(call.name, arguments, result.status, result.latency_ms), batch)
        except Exception:
            log.exception("could not record a tool call", extra={"tool": call.name, "call_id": ctx.call_id})
