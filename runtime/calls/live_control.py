"""Live call control for integrators: hang up, transfer, say a line, pause or resume the agent.

Each action finds the tenant's live call through a ``CallLocator``; a call that is over answers
409 ``call_ended`` whoever ended it, another tenant's call (or none) 404.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from runtime.calls.locator import CallLocator
from runtime.calls.session import CallSession
from runtime.control.errors import Conflict, NotFound
from runtime.control.schemas import Input, check_e164
from runtime.store.store import Store

MAX_SAY_CHARS = 2000
ENDED = ("ended", "failed")


class CallEnded(Conflict):
    code = "call_ended"


class CallNotConnected(Conflict):
    code = "call_not_connected"


class HangupRequest(Input):
    reason: str = Field("api_hangup", pattern=r"^[a-z0-9_]{1,40}$", description="end reason stored on the call")


class TransferRequest(Input):
    to: str = Field(description="E.164 number or sip: URI")

    @field_validator("to")
    @classmethod
    def _target(cls, value: str) -> str:
        if value.startswith("sip:") and len(value) <= 256:
            return value
        return check_e164(value) or value


class SayRequest(Input):
    text: str = Field(min_length=1, max_length=MAX_SAY_CHARS, description="what the agent says, as its own line")
    interrupt: bool = Field(False, description="cut what the agent is saying (default: after it)")


class CallUpdate(Input):
    ai: Literal["on", "paused"] = Field(description="paused: the agent stays silent; the call goes on")


class LiveControl:
    def __init__(self, locator: CallLocator, store: Store) -> None:
        self.locator, self.store = locator, store

    async def live_session(self, tenant_id: str, call_id: str) -> CallSession:
        session = self.locator.live_call(tenant_id, call_id)
        if session is not None:
            return session
        row = await self.store.voice_calls.get(call_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"call {call_id} not found", {"call_id": call_id})
        if row["status"] in ENDED:
            raise CallEnded(f"call {call_id} has ended", {"call_id": call_id, "status": row["status"]})
        # Not held by this runtime (a crash left it behind; or, in a cluster, another process).
        raise Conflict(f"call {call_id} is not live on this runtime", {"call_id": call_id, "status": row["status"]})

    async def hangup(self, tenant_id: str, call_id: str, req: HangupRequest) -> dict[str, Any]:
        session = await self.live_session(tenant_id, call_id)
        await session.hangup(req.reason)  # an outbound call not answered yet is canceled
        return {"id": session.id, "status": session.state, "end_reason": session.end_reason or req.reason}

    async def transfer(self, tenant_id: str, call_id: str, req: TransferRequest) -> dict[str, Any]:
        session = await self.live_session(tenant_id, call_id)
        if session.state != "connected":
            raise CallNotConnected(f"call {call_id} is {session.state}: only a connected call can be transferred",
                                   {"call_id": call_id, "status": session.state})
        await session.transfer(req.to, reason="api")
        return {"id": session.id, "status": session.state, "to": req.to}

    def _conversation(self, session: CallSession) -> Any:
        if session.state != "connected" or session.conversation is None:
            raise CallNotConnected(f"call {session.id} is {session.state}: the agent speaks once it is connected",
                                   {"call_id": session.id, "status": session.state})
        return session.conversation

    async def say(self, tenant_id: str, call_id: str, req: SayRequest) -> dict[str, Any]:
        session = await self.live_session(tenant_id, call_id)
        if not self._conversation(session).say_now(req.text, interrupt=req.interrupt):
            raise Conflict("too many lines are waiting to be said on this call", {"call_id": call_id})
        return {"id": session.id, "queued": True, "interrupt": req.interrupt}

    async def update(self, tenant_id: str, call_id: str, req: CallUpdate) -> dict[str, Any]:
        session = await self.live_session(tenant_id, call_id)
        self._conversation(session).set_paused(req.ai == "paused")
        return {"id": session.id, "status": session.state, "ai": req.ai}
