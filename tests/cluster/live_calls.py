"""A live call held by one instance of a cluster test, without speech engines: its conversation and
bridge record what live control asks of them (the cluster tests and bench/cluster_control.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.api.appkeys import TRACKER
from runtime.calls.session import CallSession
from runtime.control.schemas import ApiKeyCreate
from tests.api.support import LiveApi
from tests.calls.support import provision


@dataclass(frozen=True)
class Voice:
    provider_name: str = "local"


@dataclass
class HeardLines:
    """The conversation end of a call (what live control steers): lines queued, flushes, pause."""

    paused: bool = False
    tts: Voice = field(default_factory=Voice)
    lines: list[tuple[str, bool, Any]] = field(default_factory=list)
    flushes: int = 0

    def say_now(self, text: str, *, interrupt: bool, tts: Any = None) -> bool:
        self.lines.append((text, interrupt, tts))
        return True

    def flush_lines(self) -> None:
        self.flushes += 1

    async def say(self, text: str) -> None:
        self.lines.append((text, False, None))

    async def say_uninterruptible(self, text: str) -> None:
        self.lines.append((text, False, None))

    def set_paused(self, paused: bool) -> None:
        self.paused = paused


@dataclass
class Bridge:
    """The call's provider side: what hangup and transfer asked of it."""

    asked: list[tuple[str, str]] = field(default_factory=list)

    async def hangup(self, reason: str) -> None:
        self.asked.append(("hangup", reason))

    async def transfer(self, target: str) -> None:
        self.asked.append(("transfer", target))


@dataclass
class Tenant:
    id: str
    key: str
    e164: str


async def tenant_with_key(live: LiveApi, name: str, e164: str) -> Tenant:
    world = await provision(live.control, name=name, e164=e164)
    _, key = await live.control.keys.create(ApiKeyCreate(tenant_id=world.tenant_id, scope="runtime"))
    return Tenant(world.tenant_id, key, e164)


async def connected_call(live: LiveApi, tenant: Tenant) -> tuple[CallSession, HeardLines, Bridge]:
    """A connected call held by ``live``'s instance, its conversation and bridge recorded."""
    session = await live.app[TRACKER].open_call(to_number=tenant.e164, from_number="+15550000001",
                                                provider="twilio")
    heard, bridge = HeardLines(), Bridge()
    session.control, session.conversation = bridge, heard
    await session.connect()
    return session, heard, bridge
