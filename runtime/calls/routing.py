"""Routing: dialled number -> phone_numbers row -> tenant -> agent -> active (or pinned) version."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

from runtime.control.rollouts import in_rollout
from runtime.control.schemas import WEEKDAYS, AgentConfig, OperatingHours
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS, WRITES

# The tables a number's route (store.route_by_e164) is read from.
ROUTE_TABLES = ("phone_numbers", "tenants", "agents", "agent_versions", "agent_rollouts")


class RouteRejected(Exception):
    """The call cannot be served; ``reason`` is a stable word, ``tenant_id`` set where the tenant is known."""

    def __init__(self, reason: str, message: str, tenant_id: str | None = None, number_id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.tenant_id = tenant_id
        self.number_id = number_id


class ReadCache:
    """A global read (``read(key)``) cached per key for ``ttl_s``: each call's voice webhook and
    status callback would otherwise each read its number's route. A write by this process to one
    of ``tables`` drops every entry at once (so the API's changes apply to the next call); another
    process's (the CLI's) applies within the TTL. Bounded: emptied when full. The results are
    shared between callers: read-only."""

    def __init__(self, read: Callable[[Any], Awaitable[Any]], tables: tuple[str, ...], *,
                 ttl_s: float = 1.0, max_entries: int = 10_000) -> None:
        self._read = read
        self._tables = tables
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[Any, tuple[tuple[int, ...], float, Any]] = {}

    async def get(self, key: Any) -> Any:
        generation = tuple([WRITES.get(t, 0) for t in self._tables])  # before the read: a write during it drops it
        now = time.monotonic()
        cached = self._entries.get(key)
        if cached is not None and cached[0] == generation and now < cached[1]:
            return cached[2]
        value = await self._read(key)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (generation, now + self.ttl_s, value)
        return value


@dataclass(frozen=True)
class CallRoute:
    """The rows may come from a ReadCache, shared by the calls to one number: read-only."""

    tenant: dict[str, Any]
    number: dict[str, Any]
    agent_id: str
    version: int
    config: AgentConfig
    after_hours: bool
    rollout_id: str | None = None  # the agent's running rollout this call takes part in
    rollout_arm: str | None = None  # candidate | base

    @property
    def tenant_id(self) -> str:
        return self.tenant["id"]

    @property
    def max_duration_s(self) -> int:
        """The shorter of the tenant's and the version's limits."""
        limits = [self.tenant["max_call_duration_s"], self.config.max_duration_s]
        return min(v for v in limits if v)

    @property
    def greeting(self) -> str | None:
        if self.after_hours and self.config.after_hours.greeting:
            return self.config.after_hours.greeting
        return self.config.greeting

    @property
    def system_prompt(self) -> str:
        if self.after_hours and self.config.after_hours.system_prompt:
            return self.config.after_hours.system_prompt
        return self.config.system_prompt

    @property
    def transfer_now(self) -> bool:
        """After hours with mode=transfer and somewhere to transfer to."""
        return (self.after_hours and self.config.after_hours.mode == "transfer"
                and bool(self.config.escalation_target))


def within_hours(hours: OperatingHours | None, timezone: str, now: datetime) -> bool:
    """True when there is no schedule, or ``now`` falls in one of today's ranges (tenant time zone)."""
    if hours is None:
        return True
    local = now.astimezone(ZoneInfo(timezone))
    hhmm = local.strftime("%H:%M")
    for item in hours.schedule.get(WEEKDAYS[local.weekday()], []):
        start, end = item.split("-")
        if start <= hhmm < end:
            return True
    return False


def next_opening(hours: OperatingHours | None, timezone: str, now: datetime) -> datetime | None:
    """When the schedule next opens after ``now`` (UTC), within a week; None without a schedule."""
    if hours is None:
        return None
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        for item in sorted(hours.schedule.get(WEEKDAYS[day.weekday()], [])):
            opens = datetime.combine(day, clock_time(int(item[:2]), int(item[3:5])), tzinfo=zone)
            if opens > local:
                return opens.astimezone(UTC)
    return None


async def route_call(store: Store, e164: str, now: datetime,
                     found: dict[str, Any] | None = None, caller: str | None = None) -> CallRoute:
    """``found``: the ``store.route_by_e164(e164)`` result when the caller has just read it.
    ``caller``: the calling number; with a rollout running on the agent, it decides (sticky) whether
    the call gets the candidate version (runtime.control.rollouts)."""
    if found is None:
        found = await store.route_by_e164(e164)  # number, tenant, agent and version in one read
    if found is None:
        raise RouteRejected("unknown_number", f"{e164} is not routed")
    number, tenant, agent = found["number"], found["tenant"], found["agent"]
    if tenant is None or tenant["status"] != "active":
        raise RouteRejected("tenant_disabled", "the tenant is disabled", number["tenant_id"], number["id"])
    version = number["pinned_version"] or (agent or {}).get("active_version")
    if agent is None or version is None:
        raise RouteRejected("no_active_version", "the agent has no promoted version", tenant["id"], number["id"])
    row = found["version"]
    if row is None:
        raise RouteRejected("no_active_version", f"agent version {version} is missing", tenant["id"], number["id"])
    rollout, arm = found.get("rollout"), None
    if rollout is not None and caller and found.get("candidate") is not None:
        arm = "candidate" if in_rollout(rollout["id"], caller, rollout["percent"]) else "base"
        if arm == "candidate":
            version, row = rollout["candidate_version"], found["candidate"]
    config = stored_config(row)
    after_hours = not within_hours(config.hours, tenant["timezone"], now)
    return CallRoute(tenant, number, agent["id"], version, config, after_hours,
                     rollout_id=rollout["id"] if arm else None, rollout_arm=arm)


async def pinned_route(store: Store, tenant_id: str, agent_id: str, version: int) -> CallRoute:
    """The route of a call pinned to one agent version (an evaluation's synthetic call): the agent's
    first number if it has one (else none), answered as in opening hours (an evaluation must not
    depend on the time it runs)."""
    tenant = await store.tenants.get(tenant_id, tenant_id=ALL_TENANTS)
    if tenant is None or tenant["status"] != "active":
        raise RouteRejected("tenant_disabled", "the tenant is disabled", tenant_id)
    row = await store.agent_versions.find(tenant_id=tenant_id, agent_id=agent_id, version=version)
    if row is None:
        raise RouteRejected("no_active_version", f"agent version {version} is missing", tenant_id)
    number = await store.phone_numbers.find(tenant_id=tenant_id, agent_id=agent_id)
    if number is None:
        number = {"id": None, "tenant_id": tenant_id, "e164": None, "provider": "twilio", "agent_id": agent_id,
                  "pinned_version": version}
    return CallRoute(tenant, number, agent_id, version, stored_config(row), after_hours=False)


async def route_of_call(store: Store, row: dict[str, Any]) -> CallRoute:
    """The route a call was opened with, read back from its row (another instance opened it and
    this one takes it over): the same tenant, number, agent version and rollout arm, in or after
    hours as when it started."""
    tenant_id = row["tenant_id"]
    tenant = await store.tenants.get(tenant_id, tenant_id=ALL_TENANTS)
    if tenant is None or tenant["status"] != "active":
        raise RouteRejected("tenant_disabled", "the tenant is disabled", tenant_id)
    version = await store.agent_versions.find(tenant_id=tenant_id, agent_id=row["agent_id"],
                                              version=row["agent_version"])
    number = await store.phone_numbers.get(row["number_id"], tenant_id=tenant_id) if row["number_id"] else None
    if version is None or number is None:
        raise RouteRejected("no_active_version", "the call's number or agent version is gone", tenant_id)
    tags = row.get("metadata") or {}
    return CallRoute(tenant, number, row["agent_id"], row["agent_version"], stored_config(version),
                     bool(tags.get("after_hours")), rollout_id=row.get("rollout_id"),
                     rollout_arm=tags.get("rollout_arm"))


# Versions never change once written: each is validated once per process, then shared.
_CONFIGS: dict[str, AgentConfig] = {}
MAX_CACHED_CONFIGS = 10_000


def stored_config(row: dict[str, Any]) -> AgentConfig:
    """The typed config of an agent_versions row."""
    key = row.get("id")
    config = _CONFIGS.get(key) if key is not None else None
    if config is None:
        config = AgentConfig.from_stored(row["config"])
        if key is not None:
            if len(_CONFIGS) >= MAX_CACHED_CONFIGS:
                _CONFIGS.clear()
            _CONFIGS[key] = config
    return config
