"""``schedule_callback``: the caller asks to be called back, and goes on the tenant's callback list.

The task (runtime.control.callbacks) gets the caller's number (or the one they give), the reason,
and the time they would like (a date and time in the tenant's time zone; a date alone means 09:00
that day; none: as soon as possible). Its due time follows from the tenant's SLA. A number
already on the list keeps its one task (the answer says so). Arguments are bounded by the schema
(lengths, patterns on the linear-time engine) and a call may use the tool a few times only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from runtime.control.callbacks import MAX_REASON, CallbackQueueFull, CallbackService
from runtime.control.errors import Invalid
from runtime.providers.base import ToolSpec
from runtime.tools.base import ToolContext, ToolResult
from runtime.tools.builtin import error_result

MAX_PER_CALL = 3
MAX_DAYS_AHEAD = 90
DEFAULT_HOUR = "09:00"

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON,
                   "description": "what the call back is about, in a sentence, for the colleague who calls"},
        "phone": {"type": "string", "maxLength": 32, "pattern": r"^\+?[0-9 ().\-]{7,31}$",
                  "description": "the number to call, in international form (+...), only if the caller gives "
                                 "one other than the one they call from"},
        "date": {"type": "string", "maxLength": 10, "pattern": r"^\d{4}-\d{2}-\d{2}$",
                 "description": "the day the caller would like the call, YYYY-MM-DD, if they said"},
        "time": {"type": "string", "maxLength": 5, "pattern": r"^([01]?\d|2[0-3]):[0-5]\d$",
                 "description": "the local time they would like it, 24-hour HH:MM, if they said"},
    },
    "required": ["reason"],
}


@dataclass(slots=True)
class ScheduleCallback:
    callbacks: CallbackService
    timezone: str = "UTC"
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    timeout_s: float = 5.0
    spec: ToolSpec = ToolSpec(
        "schedule_callback",
        "Put the caller on the callback list: a colleague calls them back. Use it when the caller asks to be "
        "called back, or cannot be helped now and agrees to a call back. Give the reason, and the day and time "
        "they would like if they said (local time). Their own number is used unless they give another. "
        "Tell the caller when to expect the call.",
        PARAMETERS,
    )

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        used = int(ctx.extra.get("callbacks_scheduled", 0))
        if used >= MAX_PER_CALL:
            return error_result(f"a call may schedule at most {MAX_PER_CALL} call backs")
        number = str(arguments.get("phone") or ctx.caller or "").strip()
        if not number:
            return error_result("there is no number to call back: ask the caller for one")
        try:
            wanted = self._wanted(arguments.get("date"), arguments.get("time"))
        except ValueError as exc:
            return error_result(str(exc))
        try:
            task, created = await self.callbacks.create(
                ctx.tenant_id, number=number, reason=str(arguments["reason"]), source="tool", call_id=ctx.call_id,
                agent_id=ctx.agent_id, scheduled_at=wanted)
        except Invalid:
            return error_result(f"{number!r} is not a phone number: ask for it with the country code")
        except CallbackQueueFull:
            return error_result("the callback list is full right now: take a note for the staff instead")
        ctx.extra["callbacks_scheduled"] = used + 1
        result: dict[str, Any] = {"callback_id": task["id"], "number": task["number"], "status": task["status"],
                                  "already_on_the_list": not created}
        if task["scheduled_at"]:
            result["call_back_at"] = self._local(task["scheduled_at"])
        else:
            result["call_back_by"] = self._local(task["due_at"])
        return ToolResult(result)

    def _wanted(self, day: Any, hhmm: Any) -> datetime | None:
        """The caller's preferred time, in UTC; None when they named none."""
        if not day and not hhmm:
            return None
        zone = ZoneInfo(self.timezone)
        now = self.clock().astimezone(zone)
        try:
            when_day = date.fromisoformat(str(day)) if day else now.date()
        except ValueError:
            raise ValueError(f"date {day!r} is not a date like 2025-06-01") from None
        hour, minute = str(hhmm or DEFAULT_HOUR).split(":")
        wanted = datetime(when_day.year, when_day.month, when_day.day, int(hour), int(minute), tzinfo=zone)
        if wanted < now - timedelta(minutes=1):
            raise ValueError("that time has already passed: ask for a later one")
        if wanted > now + timedelta(days=MAX_DAYS_AHEAD):
            raise ValueError(f"call backs are scheduled at most {MAX_DAYS_AHEAD} days ahead")
        return wanted.astimezone(UTC)

    def _local(self, stored: str) -> str:
        """A stored UTC time as the tenant's local 'YYYY-MM-DD HH:MM'."""
        moment = datetime.strptime(stored, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return moment.astimezone(ZoneInfo(self.timezone)).strftime("%Y-%m-%d %H:%M")
