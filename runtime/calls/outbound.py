"""Outbound calls, whatever carrier dials them: the request, the route, and what the call does
once its carrier says who answered.

``POST /api/v1/calls`` (runtime.telephony.outbound) validates a ``PlaceCall``, routes it as the
``from`` number (its agent, or ``agent_id``'s; operating hours do not apply: the tenant chose to
call now) and opens the call ``queued``. The carrier's bridge dials it and reports its progress
(``dialing``, ``ringing``), the media connects it as an inbound call's does.

``OutboundCall`` rides on the session (``session.outbound``) with the call's variables, its
rendered greeting and voicemail message, and the answering-machine result:

- ``detect``: the result is a ``call.machine_detected`` event; the agent greets at once.
- ``voicemail``: the agent waits silent (paused, its greeting held) for the result: a human or
  ``unknown`` gets the greeting, a machine (after its beep) the version's ``voicemail_message``
  and then a hang-up (``voicemail_left``), a fax a hang-up (``fax``). A result that arrives
  before the media is held until the call connects; none at all greets after ``amd_fallback_s``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from runtime.calls.routing import CallRoute, stored_config
from runtime.control.errors import Conflict, Invalid, NotFound
from runtime.control.schemas import Input, check_e164
from runtime.events.models import MachineDetected
from runtime.store.store import Store

if TYPE_CHECKING:
    from runtime.calls.session import CallSession

log = logging.getLogger("voicectl.calls")

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_VARIABLES = 50
MAX_VARIABLE_CHARS = 500
ANSWERED_BY = ("human", "machine", "fax", "unknown")
AMD_FALLBACK_MARGIN_S = 5.0  # past the carrier's own detection timeout, greet without a result
MACHINE_DETECTION_TAG = "machine_detection"  # in the call's metadata


def render(text: str | None, variables: dict[str, Any]) -> str | None:
    """``{{name}}`` replaced by the variable's value; a name with no value becomes empty."""
    if text is None or "{{" not in text:
        return text
    return PLACEHOLDER.sub(lambda m: _plain(variables.get(m.group(1), "")), text)


def has_placeholders(text: str | None) -> bool:
    return text is not None and PLACEHOLDER.search(text) is not None


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class PlaceCall(Input):
    to: str = Field(description="the number to call (E.164), within the tenant's outbound_allowed_prefixes")
    from_: str = Field(alias="from", description="one of the tenant's numbers (E.164): the caller id and route")
    agent_id: str | None = Field(None, description="default: the from number's agent")
    variables: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="templated into the prompt and greeting as {{name}}; stored with the call")
    machine_detection: Literal["off", "detect", "voicemail"] = Field(
        "off", description="detect: report who answered; voicemail: on a machine, wait for the beep, say the "
                           "version's voicemail_message, hang up (Twilio numbers only)")
    timeout_s: int = Field(30, ge=1, le=600, description="seconds to let it ring")

    _to = field_validator("to")(check_e164)
    _from = field_validator("from_")(check_e164)

    @field_validator("variables")
    @classmethod
    def _variables(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_VARIABLES:
            raise ValueError(f"at most {MAX_VARIABLES} variables")
        for name, item in value.items():
            if not VARIABLE_NAME.match(name):
                raise ValueError(f"{name!r} is not a variable name (a letter or _, then letters, digits or _)")
            if isinstance(item, str) and len(item) > MAX_VARIABLE_CHARS:
                raise ValueError(f"variable {name!r} is longer than {MAX_VARIABLE_CHARS} characters")
        return value


async def outbound_route(store: Store, tenant_id: str, from_number: str, agent_id: str | None) -> CallRoute:
    """The route an outbound call takes: its ``from`` number (the tenant's) and that number's
    agent, or ``agent_id``'s active version."""
    found = await store.route_by_e164(from_number)
    if found is None or found["number"]["tenant_id"] != tenant_id:
        # Another tenant's number is as unknown as none.
        raise Invalid(f"{from_number} is not one of this tenant's numbers", {"field": "from"})
    number, tenant = found["number"], found["tenant"]
    if agent_id is None or agent_id == number["agent_id"]:
        agent, version = found["agent"], number["pinned_version"] or (found["agent"] or {}).get("active_version")
        row = found["version"]
    else:
        agent = await store.agents.get(agent_id, tenant_id=tenant_id)
        if agent is None:
            raise NotFound(f"agent {agent_id} not found", {"agent_id": agent_id})
        version = agent["active_version"]
        row = (await store.agent_versions.find(tenant_id=tenant_id, agent_id=agent_id, version=version)
               if version is not None else None)
    if agent is None or version is None or row is None:
        raise Conflict("the agent has no active version", {"agent_id": agent_id or number["agent_id"]})
    return CallRoute(tenant, number, agent["id"], version, stored_config(row), after_hours=False)


@dataclass(eq=False)
class OutboundCall:
    """An outbound call's request and what its carrier reported (see the module docstring)."""

    variables: dict[str, Any]
    machine_detection: str  # off | detect | voicemail
    timeout_s: int
    greeting: str | None  # rendered
    voicemail_message: str | None  # rendered
    amd_fallback_s: float = 35.0
    leg: Any = None  # the carrier bridge's own state of the call (e.g. Twilio's CallSid)
    result: tuple[str, int | None] | None = None  # (answered_by, detection_ms)
    _acted: bool = False
    _timer: asyncio.TimerHandle | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def for_route(cls, route: CallRoute, req: PlaceCall, amd_timeout_s: float) -> OutboundCall:
        return cls(dict(req.variables), req.machine_detection, req.timeout_s,
                   render(route.config.greeting, req.variables), render(route.config.voicemail_message, req.variables),
                   amd_fallback_s=amd_timeout_s + AMD_FALLBACK_MARGIN_S)

    @classmethod
    def from_row(cls, row: dict[str, Any], route: CallRoute, amd_timeout_s: float, leg: Any) -> OutboundCall:
        """The call as the instance that placed it had it, from its row (another instance runs it
        now: its media reached that one); its ringing timeout is spent by then."""
        variables = row.get("variables") or {}
        return cls(variables, (row.get("metadata") or {}).get(MACHINE_DETECTION_TAG, "off"), 0,
                   render(route.config.greeting, variables), render(route.config.voicemail_message, variables),
                   amd_fallback_s=amd_timeout_s + AMD_FALLBACK_MARGIN_S, leg=leg)

    @property
    def holds_greeting(self) -> bool:
        """The agent waits for who answered before it speaks."""
        return self.machine_detection == "voicemail"

    def attach(self, session: CallSession) -> None:
        session.outbound = self
        if self.machine_detection != "off":  # stored with the call: an instance taking it over reads it
            session.tags[MACHINE_DETECTION_TAG] = self.machine_detection
        session.on_connected.append(self._connected)
        session.on_end.append(self._ended)

    async def detected(self, session: CallSession, answered_by: str, detection_ms: int | None,
                       carrier_value: str) -> bool:
        """The carrier's answering-machine result (the first one counts); False when ignored."""
        if self.result is not None or not session.live:
            return False
        self.result = (answered_by, detection_ms)
        session.summary["machine_detection"] = {"answered_by": answered_by, "carrier_answered_by": carrier_value,
                                                "detection_ms": detection_ms}
        await session.emit(MachineDetected(answered_by=answered_by, detection_ms=detection_ms))
        if self.holds_greeting and session.state == "connected" and session.conversation is not None:
            self._spawn(self._act(session))
        return True

    async def _connected(self, session: CallSession) -> None:
        if not self.holds_greeting or session.conversation is None:
            return
        session.conversation.set_paused(True)  # not a word to a machine's greeting
        if self.result is not None:
            self._spawn(self._act(session))
        else:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.amd_fallback_s, lambda: self._spawn(self._act(session)))

    async def _act(self, session: CallSession) -> None:
        if self._acted or not session.live:
            return
        self._acted = True
        if self._timer is not None:
            self._timer.cancel()
        answered_by = self.result[0] if self.result is not None else "unknown"
        conversation = session.conversation
        if conversation is None:
            return
        if answered_by == "machine":
            if self.voicemail_message:  # after the beep (Twilio reports the greeting's end), whole
                await conversation.say_uninterruptible(self.voicemail_message)
            if session.live:
                await session.hangup("voicemail_left")
        elif answered_by == "fax":
            await session.hangup("fax")
        else:
            conversation.set_paused(False)
            if self.greeting:
                conversation.say_now(self.greeting, interrupt=False)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("outbound call handling failed", exc_info=task.exception())

    def _ended(self, session: CallSession) -> None:
        if self._timer is not None:
            self._timer.cancel()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
