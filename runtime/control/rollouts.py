"""Percentage rollout: a candidate version answers a share of an agent's new calls while the
promoted version answers the rest, until a stop condition trips (revert) or it is stopped, promoted,
or auto-promoted after enough calls.

Which calls: inbound calls routed by number whose number is not pinned to a version and whose
caller's number is known; ``in_rollout`` puts a caller on the candidate when the hash of the rollout
and the number falls under the percentage, so a caller keeps its arm for the rollout's life (and
keeps it as the percentage grows). Those calls carry the rollout's id (``voice_calls.rollout_id``);
each arm's numbers are read from them (``arm_stats``). The scheduler checks running rollouts
(runtime.calls.rollout_watch); ``judge`` is its decision.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import Field

from runtime.control import gate
from runtime.control.errors import Conflict, Invalid, NotFound
from runtime.control.schemas import MAX_VERSION, Input
from runtime.events.models import AgentPromoted, RolloutReverted, RolloutStarted, RolloutStopped
from runtime.events.recorder import EventRecorder
from runtime.ids import new_id, now_iso
from runtime.store.errors import UniqueViolation
from runtime.store.store import Store, Tables

LATENCY_SAMPLE = 5000  # the candidate's latest calls read for its p95


def in_rollout(rollout_id: str, caller: str, percent: float) -> bool:
    """Whether ``caller`` is on the candidate arm (sticky: the same answer for the rollout's life)."""
    digits = "".join(ch for ch in caller if ch.isdigit() or ch == "+")
    bucket = int.from_bytes(hashlib.sha256(f"{rollout_id}:{digits}".encode()).digest()[:8], "big") % 10_000
    return bucket < percent * 100


class StopConditions(Input):
    max_failure_rate: float | None = Field(0.2, ge=0, le=1, description="failed calls / candidate calls")
    max_transfer_rate: float | None = Field(None, ge=0, le=1, description="transferred calls / candidate calls")
    max_p95_first_audio_ms: int | None = Field(None, ge=50, le=60_000,
                                               description="p95 of the calls' own p95 first-audio latency (v2v)")
    min_calls: int = Field(20, ge=1, le=1_000_000, description="candidate calls before any condition is judged")


class RolloutStart(Input):
    version: int = Field(ge=2, le=MAX_VERSION, description="the candidate (a version other than the promoted one)")
    percent: int = Field(ge=1, le=100, description="share of new calls the candidate answers")
    stop: StopConditions = Field(default_factory=StopConditions)
    auto_promote_after: int | None = Field(None, ge=1, le=1_000_000,
                                           description="promote the candidate after this many of its calls "
                                                       "without a breach (default: never)")


@dataclass(frozen=True)
class ArmStats:
    version: int
    calls: int = 0
    failures: int = 0
    transfers: int = 0
    p95_first_audio_ms: float | None = None

    @property
    def failure_rate(self) -> float:
        return round(self.failures / self.calls, 4) if self.calls else 0.0

    @property
    def transfer_rate(self) -> float:
        return round(self.transfers / self.calls, 4) if self.calls else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failure_rate": self.failure_rate, "transfer_rate": self.transfer_rate}


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], 1)


def judge(rollout: dict[str, Any], candidate: ArmStats) -> tuple[str, list[str]]:
    """``revert`` (with the conditions that tripped), ``promote``, or ``wait``."""
    stop = StopConditions.model_validate(rollout["stop_conditions"] or {})
    if candidate.calls < stop.min_calls:
        return "wait", []
    tripped = []
    if stop.max_failure_rate is not None and candidate.failure_rate > stop.max_failure_rate:
        tripped.append("failure_rate")
    if stop.max_transfer_rate is not None and candidate.transfer_rate > stop.max_transfer_rate:
        tripped.append("transfer_rate")
    if (stop.max_p95_first_audio_ms is not None and candidate.p95_first_audio_ms is not None
            and candidate.p95_first_audio_ms > stop.max_p95_first_audio_ms):
        tripped.append("p95_first_audio_ms")
    if tripped:
        return "revert", tripped
    after = rollout.get("auto_promote_after")
    if after is not None and candidate.calls >= after:
        return "promote", []
    return "wait", []


async def arm_stats(store: Store, rollout: dict[str, Any]) -> tuple[ArmStats, ArmStats]:
    """(base, candidate): the finished calls of each arm of the rollout."""
    counts = {r["agent_version"]: r for r in await store.rollout_arm_counts(rollout["tenant_id"], rollout["id"])}
    arms = []
    for version in (rollout["base_version"], rollout["candidate_version"]):
        row = counts.get(version)
        if row is None:
            arms.append(ArmStats(version))
            continue
        latency = p95(await _latencies(store, rollout, version))
        arms.append(ArmStats(version, int(row["calls"]), int(row["failures"] or 0), int(row["transfers"] or 0),
                             latency))
    return arms[0], arms[1]


async def _latencies(store: Store, rollout: dict[str, Any], version: int) -> list[float]:
    rows, _ = await store.voice_calls.list(
        tenant_id=rollout["tenant_id"], equals={"rollout_id": rollout["id"], "agent_version": version,
                                                "status": ("ended", "failed")},
        limit=LATENCY_SAMPLE, descending=True, count=False)
    out = []
    for row in rows:
        v2v = (row.get("latency") or {}).get("v2v")
        if isinstance(v2v, dict) and isinstance(v2v.get("p95_ms"), (int, float)):
            out.append(float(v2v["p95_ms"]))
    return out


class RolloutService:
    def __init__(self, store: Store, events: EventRecorder) -> None:
        self.store = store
        self.events = events

    async def _agent(self, tenant_id: str, agent_id: str) -> dict[str, Any]:
        row = await self.store.agents.get(agent_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"agent {agent_id} not found", {"agent_id": agent_id})
        return row

    async def running(self, tenant_id: str, agent_id: str) -> dict[str, Any] | None:
        return await self.store.agent_rollouts.find(tenant_id=tenant_id, agent_id=agent_id, status="running")

    async def start(self, tenant_id: str, agent_id: str, data: RolloutStart, *, by: str) -> dict[str, Any]:
        agent = await self._agent(tenant_id, agent_id)
        base = agent["active_version"]
        if base is None:
            raise Conflict("the agent has no promoted version to roll out beside", {"agent_id": agent_id})
        if data.version == base:
            raise Invalid(f"version {data.version} is already the promoted one", {"version": data.version})
        if await self.store.agent_versions.find(tenant_id=tenant_id, agent_id=agent_id, version=data.version) is None:
            raise NotFound(f"agent {agent_id} has no version {data.version}", {"version": data.version})
        tenant = await self.store.tenants.get(tenant_id, tenant_id=tenant_id)
        await gate.check(self.store, tenant, agent, data.version)  # live traffic is gated as promotion is
        now = now_iso()
        row = {
            "id": new_id("rol"), "tenant_id": tenant_id, "agent_id": agent_id, "base_version": base,
            "candidate_version": data.version, "percent": data.percent,
            "stop_conditions": data.stop.model_dump(), "auto_promote_after": data.auto_promote_after,
            "status": "running", "started_by": by, "started_at": now, "ended_at": None, "end_reason": None,
            "breach": None, "checked_at": None, "created_at": now, "updated_at": now,
        }
        try:
            async with self.store.atomic() as tx:
                await tx.agent_rollouts.insert(row)
                staged = await self.events.stage(tx, tenant_id, RolloutStarted(
                    rollout_id=row["id"], agent_id=agent_id, candidate_version=data.version, base_version=base,
                    percent=data.percent, by=by))
        except UniqueViolation:
            raise Conflict("the agent already has a running rollout: stop it first", {"agent_id": agent_id}) from None
        self.events.committed([staged])
        return await self.status(tenant_id, agent_id)

    async def status(self, tenant_id: str, agent_id: str) -> dict[str, Any]:
        """The running rollout (else the latest) with both arms side by side."""
        await self._agent(tenant_id, agent_id)
        rows, _ = await self.store.agent_rollouts.list(tenant_id=tenant_id, equals={"agent_id": agent_id}, limit=1,
                                                       descending=True, count=False)
        if not rows:
            raise NotFound(f"agent {agent_id} has never had a rollout", {"agent_id": agent_id})
        return await self.describe(rows[0])

    async def describe(self, rollout: dict[str, Any]) -> dict[str, Any]:
        base, candidate = await arm_stats(self.store, rollout)
        return {**rollout, "arms": {"base": base.to_dict(), "candidate": candidate.to_dict()}}

    async def stop(self, tenant_id: str, agent_id: str, *, by: str) -> dict[str, Any]:
        await self._agent(tenant_id, agent_id)
        async with self.store.atomic() as tx:
            staged = await end_running(tx, self.events, tenant_id, agent_id, "stopped", by)
        if not staged:
            raise NotFound(f"agent {agent_id} has no running rollout", {"agent_id": agent_id})
        self.events.committed(staged)
        return await self.status(tenant_id, agent_id)

    async def check(self, rollout: dict[str, Any]) -> str:
        """One scheduler tick for a running rollout: revert, promote, or wait."""
        base, candidate = await arm_stats(self.store, rollout)
        decision, tripped = judge(rollout, candidate)
        now = now_iso()
        tenant_id = rollout["tenant_id"]
        if decision == "wait":
            await self.store.agent_rollouts.set(rollout["id"], {"checked_at": now}, tenant_id=tenant_id)
            return decision
        async with self.store.atomic() as tx:
            if decision == "revert":
                breach = {"tripped": tripped, "candidate": candidate.to_dict(), "base": base.to_dict(),
                          "stop_conditions": rollout["stop_conditions"]}
                if not await _finish(tx, rollout, "reverted", "breach", now, breach):
                    return "wait"  # ended meanwhile (stopped, or another runtime's tick)
                staged = [await self.events.stage(tx, tenant_id, RolloutReverted(
                    rollout_id=rollout["id"], agent_id=rollout["agent_id"],
                    candidate_version=rollout["candidate_version"], base_version=rollout["base_version"],
                    tripped=", ".join(tripped), calls=candidate.calls, failure_rate=candidate.failure_rate,
                    transfer_rate=candidate.transfer_rate, p95_first_audio_ms=candidate.p95_first_audio_ms))]
            else:
                by = f"rollout {rollout['id']}"
                if not await _finish(tx, rollout, "promoted", "auto_promoted", now, None):
                    return "wait"
                staged = await promote_in(tx, self.events, tenant_id, rollout["agent_id"],
                                          rollout["candidate_version"], by=by, now=now)
                staged.append(await self.events.stage(tx, tenant_id, RolloutStopped(
                    rollout_id=rollout["id"], agent_id=rollout["agent_id"],
                    candidate_version=rollout["candidate_version"], reason="promoted", by=by)))
        self.events.committed(staged)
        return decision


async def _finish(tx: Tables, rollout: dict[str, Any], status: str, reason: str, now: str,
                  breach: dict[str, Any] | None) -> bool:
    """End a running rollout; False when it was no longer running."""
    changes = {"status": status, "end_reason": reason, "ended_at": now, "updated_at": now, "checked_at": now}
    if breach is not None:
        changes["breach"] = breach
    return await tx.end_rollout(rollout["tenant_id"], rollout["id"], changes)


async def end_running(tx: Tables, events: EventRecorder, tenant_id: str, agent_id: str, reason: str,
                      by: str) -> list[Any]:
    """End the agent's running rollout (``stopped`` by a person, ``superseded`` or ``promoted`` by a
    promotion); the staged events (none when nothing was running)."""
    rollout = await tx.agent_rollouts.find(tenant_id=tenant_id, agent_id=agent_id, status="running")
    if rollout is None:
        return []
    status = "promoted" if reason == "promoted" else "stopped"
    if not await _finish(tx, rollout, status, reason, now_iso(), None):
        return []
    return [await events.stage(tx, tenant_id, RolloutStopped(
        rollout_id=rollout["id"], agent_id=agent_id, candidate_version=rollout["candidate_version"], reason=reason,
        by=by))]


async def promote_in(tx: Tables, events: EventRecorder, tenant_id: str, agent_id: str, version: int, *, by: str,
                     now: str, forced: bool = False, reason: str | None = None) -> list[Any]:
    """Make ``version`` the agent's active one inside ``tx``, recording who and why; the staged
    ``agent.promoted``."""
    agent = await tx.agents.get(agent_id, tenant_id=tenant_id)
    found = await tx.agent_versions.find(tenant_id=tenant_id, agent_id=agent_id, version=version)
    if agent is None or found is None:
        raise NotFound(f"agent {agent_id} has no version {version}", {"version": version})
    await tx.set_agent_versions_status(tenant_id, agent_id, "active", "retired")
    await tx.agent_versions.update(found["id"], {"status": "active", "promoted_at": now, "promoted_by": by,
                                                 "promote_forced": forced, "promote_reason": reason},
                                   tenant_id=tenant_id)
    await tx.agents.update(agent_id, {"active_version": version, "updated_at": now}, tenant_id=tenant_id)
    return [await events.stage(tx, tenant_id, AgentPromoted(
        agent_id=agent_id, version=version, previous_version=agent["active_version"], by=by, forced=forced,
        reason=reason))]
