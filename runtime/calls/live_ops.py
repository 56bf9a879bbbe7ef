"""Operations on a live call and its integrator sessions, by name: what the calls and integrator routes
and the event socket's say/flush run.

An operation targets a call or session id. It runs here when this process holds the target (or
outside cluster mode, always: the local answer is then the whole answer); in cluster mode it is
forwarded to the instance that holds it (runtime.cluster.remote_calls), which runs the same
operation with the same code and replies with its result or error, so the client gets the answer a
local run would give. Lists of sessions gather every instance's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from runtime.calls.integrator_control import (
    IntegratorControl,
    SayText,
    SpeakingCreate,
    SpeakingVoices,
    TranscribeCreate,
)
from runtime.calls.live_control import CallUpdate, HangupRequest, SayRequest, TransferRequest
from runtime.calls.locator import LocalCalls

if TYPE_CHECKING:
    from runtime.store.store import Store

# (control over this process's calls, tenant id, target id, validated body or None) -> the JSON answer
Runner = Callable[[IntegratorControl, str, str, Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class LiveOp:
    name: str
    run: Runner
    body: type[BaseModel] | None = None  # re-validated by the holder: it trusts no forwarder's body


async def _sync(value: dict[str, Any]) -> dict[str, Any]:
    return value


def _ops(*ops: LiveOp) -> dict[str, LiveOp]:
    return {op.name: op for op in ops}


# The target of a create is the call (the body's reference_id); of the others, the path's id.
OPS = _ops(
    LiveOp("call.hangup", lambda c, t, i, b: c.live.hangup(t, i, b), HangupRequest),
    LiveOp("call.transfer", lambda c, t, i, b: c.live.transfer(t, i, b), TransferRequest),
    LiveOp("call.say", lambda c, t, i, b: c.live.say(t, i, b), SayRequest),
    LiveOp("call.update", lambda c, t, i, b: c.live.update(t, i, b), CallUpdate),
    LiveOp("transcribe.create", lambda c, t, i, b: c.create_transcribe(t, b), TranscribeCreate),
    LiveOp("transcribe.get", lambda c, t, i, b: _sync(c.get_transcribe(t, i))),
    LiveOp("transcribe.stop", lambda c, t, i, b: c.stop_transcribe(t, i)),
    LiveOp("speaking.create", lambda c, t, i, b: c.create_speaking(t, b), SpeakingCreate),
    LiveOp("speaking.get", lambda c, t, i, b: _sync(c.get_speaking(t, i))),
    LiveOp("speaking.say", lambda c, t, i, b: _sync(c.say(t, i, b.text)), SayText),
    LiveOp("speaking.flush", lambda c, t, i, b: _sync(c.flush(t, i))),
    LiveOp("speaking.stop", lambda c, t, i, b: c.stop_speaking(t, i)),
)

# List name -> the items of this process's live calls for a tenant.
LISTS: dict[str, Callable[[IntegratorControl, str], dict[str, Any]]] = {
    "transcribes": IntegratorControl.list_transcribes,
    "speakings": IntegratorControl.list_speakings,
}


class Forwarder(Protocol):
    """The instances holding what this one does not (runtime.cluster.remote_calls.RemoteCalls)."""

    async def forward(self, name: str, tenant_id: str, target_id: str, body: Any) -> dict[str, Any] | None:
        """The holder's answer (its error raised as this process would), or None: no instance holds it."""

    async def gather(self, name: str, tenant_id: str) -> list[dict[str, Any]]:
        """The items of list ``name`` of every instance, this one's included."""


class LiveOps:
    """Runs live operations here or on the holder; ``remote`` is None outside cluster mode."""

    def __init__(self, local: LocalCalls, store: Store, voices: SpeakingVoices | None = None,
                 remote: Forwarder | None = None) -> None:
        self.local, self.remote = local, remote
        self.control = IntegratorControl(local, store, voices)

    async def run(self, name: str, tenant_id: str, target_id: str, body: Any = None) -> dict[str, Any]:
        op = OPS[name]
        if self.remote is not None and not self.local.holds(target_id):
            answer = await self.remote.forward(name, tenant_id, target_id, body)
            if answer is not None:
                return answer
            # No instance holds it: the local run answers (404, or 409 for a call that ended or was lost).
        return await op.run(self.control, tenant_id, target_id, body)

    def run_here(self, name: str, tenant_id: str, target_id: str, body: Any) -> Awaitable[dict[str, Any]]:
        """The holder's side of a forwarded operation: never forwarded again."""
        return OPS[name].run(self.control, tenant_id, target_id, body)

    def list_here(self, name: str, tenant_id: str) -> list[dict[str, Any]]:
        return LISTS[name](self.control, tenant_id)["items"]

    async def list(self, name: str, tenant_id: str) -> dict[str, Any]:
        items = self.list_here(name, tenant_id) if self.remote is None else await self.remote.gather(name, tenant_id)
        return {"items": items, "total": len(items)}
