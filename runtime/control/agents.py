"""Agents and their versions: changes make drafts, ``promote`` makes a version active."""

from __future__ import annotations

from typing import Any

from runtime.control import gate
from runtime.control.errors import Conflict, Invalid, NotFound
from runtime.control.models import Agent, AgentVersion, from_row
from runtime.control.pagination import Page, PageRequest
from runtime.control.rollouts import end_running, promote_in
from runtime.control.schemas import AgentConfig, AgentCreate, AgentUpdate
from runtime.control.tenant_urls import check_urls, version_urls
from runtime.control.version_warnings import version_warnings
from runtime.egress.policy import EgressPolicy
from runtime.events.recorder import EventRecorder
from runtime.ids import new_id, now_iso
from runtime.store.errors import UniqueViolation
from runtime.store.store import Store, Tables


class AgentService:
    def __init__(self, store: Store, egress: EgressPolicy | None = None, events: EventRecorder | None = None) -> None:
        self.store = store
        self.egress = egress or EgressPolicy()
        self.events = events or EventRecorder()

    async def _check_refs(self, tenant_id: str, config: AgentConfig) -> None:
        profile = config.voice_profile_id
        if profile and await self.store.voice_profiles.get(profile, tenant_id=tenant_id) is None:
            raise Invalid(f"voice profile {profile} not found", {"voice_profile_id": profile})

    async def create(self, tenant_id: str, data: AgentCreate) -> Agent:
        """Version 1 is created and made active at once."""
        validated = AgentConfig.model_validate(data.model_dump(exclude={"name"}))
        check_urls(self.egress, version_urls(validated))
        await self._check_refs(tenant_id, validated)
        config = validated.model_dump()
        now = now_iso()
        agent_id = new_id("agt")
        try:
            async with self.store.atomic() as tx:
                await tx.agents.insert({
                    "id": agent_id, "tenant_id": tenant_id, "name": data.name, "active_version": 1,
                    "latest_version": 1, "created_at": now, "updated_at": now,
                })
                await self._insert_version(tx, tenant_id, agent_id, 1, config, "active", None, now, promoted=True)
        except UniqueViolation:
            raise Conflict(f"an agent named {data.name!r} already exists", {"name": data.name}) from None
        return await self.get(tenant_id, agent_id)

    @staticmethod
    async def _insert_version(
        tx: Tables, tenant_id: str, agent_id: str, version: int, config: dict[str, Any], status: str,
        note: str | None, now: str, promoted: bool = False,
    ) -> None:
        await tx.agent_versions.insert({
            "id": new_id("agv"), "tenant_id": tenant_id, "agent_id": agent_id, "version": version,
            "status": status, "config": config, "note": note, "created_at": now,
            "promoted_at": now if promoted else None,
        })

    async def _row(self, tenant_id: str, agent_id: str) -> dict[str, Any]:
        row = await self.store.agents.get(agent_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"agent {agent_id} not found", {"agent_id": agent_id})
        return row

    async def get(self, tenant_id: str, agent_id: str) -> Agent:
        row = await self._row(tenant_id, agent_id)
        active = None
        if row["active_version"] is not None:
            active = await self.version(tenant_id, agent_id, row["active_version"])
        return from_row(Agent, {**row, "active": active})

    async def resolve(self, tenant_id: str, ref: str) -> Agent:
        """An id or a unique name within the tenant (the CLI's --agent)."""
        row = await self.store.agents.get(ref, tenant_id=tenant_id)
        if row is None:
            row = await self.store.agents.find(tenant_id=tenant_id, name=ref)
        if row is None:
            raise NotFound(f"no agent with id or name {ref!r}", {"agent": ref})
        return await self.get(tenant_id, row["id"])

    async def list(self, tenant_id: str, page: PageRequest) -> Page[Agent]:
        rows, total = await self.store.agents.list(tenant_id=tenant_id, limit=page.limit, offset=page.offset)
        active = {
            v["agent_id"]: _version_of(v)
            for v in await self.store.active_versions(tenant_id, [r["id"] for r in rows])
        }
        items = [from_row(Agent, {**r, "active": active.get(r["id"])}) for r in rows]
        return Page(items, total, page.limit, page.offset)

    async def update(self, tenant_id: str, agent_id: str, data: AgentUpdate) -> Agent:
        """Rename, change settings (a new draft version), and/or set the agent's own gate settings
        (``rollout_required_suite_id``, ``rollout_min_eval_score``; null: the tenant's). The API lets
        only admin keys change the gate."""
        row = await self._row(tenant_id, agent_id)
        now = now_iso()
        changes = data.config_changes()
        gate_changes = data.gate_changes()
        suite = gate_changes.get("rollout_required_suite_id")
        if suite is not None and await self.store.eval_suites.get(suite, tenant_id=tenant_id) is None:
            raise Invalid(f"no suite {suite} in this tenant", {"rollout_required_suite_id": suite})
        async with self.store.atomic() as tx:
            agent_changes: dict[str, Any] = dict(gate_changes)
            if data.name is not None and data.name != row["name"]:
                agent_changes["name"] = data.name
            if changes:
                latest = await tx.agent_versions.find(tenant_id=tenant_id, agent_id=agent_id,
                                                      version=row["latest_version"])
                merged = {**latest["config"], **changes}
                try:
                    validated = AgentConfig.model_validate(merged)
                except ValueError as exc:
                    raise Invalid("the changed agent settings are not valid", {"errors": str(exc)}) from None
                check_urls(self.egress, version_urls(validated))  # the whole new version, as every change
                await self._check_refs(tenant_id, validated)
                config = validated.model_dump()
                version = row["latest_version"] + 1
                await self._insert_version(tx, tenant_id, agent_id, version, config, "draft", data.note, now)
                agent_changes["latest_version"] = version
            if agent_changes:
                agent_changes["updated_at"] = now
                try:
                    await tx.agents.update(agent_id, agent_changes, tenant_id=tenant_id)
                except UniqueViolation:
                    raise Conflict(f"an agent named {data.name!r} already exists", {"name": data.name}) from None
        return await self.get(tenant_id, agent_id)

    async def promote(self, tenant_id: str, agent_id: str, version: int | None = None, *, by: str = "cli",
                      force: bool = False, reason: str | None = None) -> Agent:
        """Make a version active (default: the latest). With the gate on (runtime.control.gate) the
        version needs a good enough evaluation, unless ``force`` (admins only) with a ``reason``;
        who promoted it, whether the gate was overridden and why are kept on the version and sent
        in ``agent.promoted``. A running rollout ends (``promoted`` if this was its candidate)."""
        row = await self._row(tenant_id, agent_id)
        target = version or row["latest_version"]
        if force and not (reason and reason.strip()):
            raise Invalid("forcing a promotion past the evaluation gate needs a reason", {"reason": reason})
        if await self.store.agent_versions.find(tenant_id=tenant_id, agent_id=agent_id, version=target) is None:
            raise NotFound(f"agent {agent_id} has no version {target}", {"version": target})
        tenant = await self.store.tenants.get(tenant_id, tenant_id=tenant_id)
        forced = False
        try:
            await gate.check(self.store, tenant, row, target)
        except gate.EvaluationRequired:
            if not force:
                raise
            forced = True
        now = now_iso()
        async with self.store.atomic() as tx:
            running = await tx.agent_rollouts.find(tenant_id=tenant_id, agent_id=agent_id, status="running")
            ending = "promoted" if running is not None and running["candidate_version"] == target else "superseded"
            staged = await end_running(tx, self.events, tenant_id, agent_id, ending, by)
            staged += await promote_in(tx, self.events, tenant_id, agent_id, target, by=by, now=now, forced=forced,
                                       reason=reason.strip() if reason else None)
        self.events.committed(staged)
        return await self.get(tenant_id, agent_id)

    async def version(self, tenant_id: str, agent_id: str, version: int) -> AgentVersion:
        found = await self.store.agent_versions.find(tenant_id=tenant_id, agent_id=agent_id, version=version)
        if found is None:
            raise NotFound(f"agent {agent_id} has no version {version}", {"version": version})
        return _version_of(found)

    async def versions(self, tenant_id: str, agent_id: str, page: PageRequest) -> Page[AgentVersion]:
        await self._row(tenant_id, agent_id)
        rows, total = await self.store.agent_versions.list(
            tenant_id=tenant_id, equals={"agent_id": agent_id}, limit=page.limit, offset=page.offset
        )
        return Page([_version_of(r) for r in rows], total, page.limit, page.offset)

    async def delete(self, tenant_id: str, agent_id: str) -> None:
        await self._row(tenant_id, agent_id)
        routed = await self.store.count_numbers_for_agent(tenant_id, agent_id)
        if routed:
            raise Conflict(
                f"agent {agent_id} still answers {routed} phone number(s); move or remove them first",
                {"numbers": routed},
            )
        await self.store.agents.delete(agent_id, tenant_id=tenant_id)


def _version_of(row: dict[str, Any]) -> AgentVersion:
    """A stored version, with what calls leave out of it (written by an earlier release)."""
    return from_row(AgentVersion, {**row, "warnings": version_warnings(row["config"])})
