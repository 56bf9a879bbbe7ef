"""Helpers shared by the call tests (no tests here): provisioning, an engine, events of a call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.calls.tracker import CallTracker
from runtime.control.plane import ControlPlane
from runtime.control.schemas import AgentCreate, NumberCreate, TenantCreate
from runtime.events.bus import EventBus
from runtime.ids import new_id, now_iso


@dataclass
class World:
    tenant_id: str
    agent_id: str
    number_id: str
    e164: str


async def provision(control: ControlPlane, *, name: str = "acme", e164: str = "+15550100001",
                    timezone: str = "UTC", max_concurrent_calls: int = 10, recording: bool = False,
                    retention_days: int = 30, **config: Any) -> World:
    tenant = await control.tenants.create(TenantCreate(
        name=name, timezone=timezone, max_concurrent_calls=max_concurrent_calls, recording_enabled=recording,
        retention_days=retention_days,
    ))
    agent = await control.agents.create(tenant.id, AgentCreate(name=f"{name}-agent", system_prompt="day prompt",
                                                               greeting="hello", **config))
    number = await control.numbers.add(tenant.id, NumberCreate(e164=e164, provider="twilio", agent_id=agent.id))
    return World(tenant.id, agent.id, number.id, e164)


def engine(control: ControlPlane, *, max_calls: int = 200, recording_dir: Path | None = None) -> CallTracker:
    return CallTracker(control.store, EventBus(control.store), max_calls=max_calls, recording_dir=recording_dir)


async def events_of(control: ControlPlane, tenant_id: str, call_id: str) -> list[dict[str, Any]]:
    rows, _ = await control.store.call_events.list(tenant_id=tenant_id, equals={"call_id": call_id}, limit=200)
    return sorted(rows, key=lambda r: r["seq"])


async def insert_call(control: ControlPlane, tenant_id: str, *, status: str = "ended", created_at: str | None = None,
                      **extra: Any) -> str:
    call_id, now = new_id("call"), now_iso()
    when = created_at or now
    await control.store.voice_calls.insert({
        "id": call_id, "tenant_id": tenant_id, "agent_id": None, "agent_version": None, "number_id": None,
        "provider": "twilio", "provider_call_id": None, "direction": "inbound", "from_number": "+15550000001",
        "to_number": "+15550100001", "status": status, "end_reason": None, "hangup_by": None, "started_at": when,
        "connected_at": None, "ended_at": None, "duration_ms": None, "summary": {}, "latency": {},
        "metadata": {}, "trace_id": "tr", "created_at": when, "updated_at": when, **extra,
    })
    return call_id
