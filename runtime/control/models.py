"""Domain objects of the control plane (typed dataclasses built from store rows)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


@cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


@cache
def _public_names(cls: type) -> tuple[str, ...]:
    hidden = set(getattr(cls, "_hidden", ()))
    return tuple(f.name for f in fields(cls) if f.name not in hidden)


def from_row(cls: type[T], row: dict[str, Any]) -> T:
    names = _field_names(cls)
    return cls(**{k: v for k, v in row.items() if k in names})


def _plain(value: Any) -> Any:
    """A field value as plain data, containers copied (what dataclasses.asdict gives, minus its deepcopy)."""
    if isinstance(value, Public):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


class Public:
    """Dataclasses whose public dict hides internal columns (hashes, secret references)."""

    _hidden: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        # On every API response: hidden fields are skipped, not converted and dropped.
        return {name: _plain(getattr(self, name)) for name in _public_names(type(self))}


@dataclass(frozen=True)
class Tenant(Public):
    id: str
    name: str
    status: str
    timezone: str
    max_concurrent_calls: int
    max_call_duration_s: int
    recording_enabled: bool
    retention_days: int
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    outbound_allowed_prefixes: list[str] | None = None  # None: the country codes of its numbers
    max_outbound_per_day: int = 100
    callback_sla_minutes: int = 240
    callback_auto_dial: bool = False
    rollout_required_suite_id: str | None = None  # the promotion gate (runtime.control.gate); None: off
    rollout_min_eval_score: float | None = None


@dataclass(frozen=True)
class ApiKey(Public):
    id: str
    tenant_id: str | None
    scope: str
    name: str | None
    prefix: str
    last4: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    key_hash: str = field(repr=False, default="")
    _hidden = ("key_hash",)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's scope and tenant."""

    key_id: str
    scope: str
    tenant_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


@dataclass(frozen=True)
class AgentVersion(Public):
    id: str
    tenant_id: str
    agent_id: str
    version: int
    status: str
    config: dict[str, Any]
    note: str | None
    created_at: str
    promoted_at: str | None
    # What calls leave out of this version, "field: why" (runtime.control.version_warnings).
    warnings: list[str] = field(default_factory=list)
    promoted_by: str | None = None  # who made it active: "key <id>", "cli <user>", "rollout <id>"
    promote_forced: bool | None = None  # the evaluation gate was overridden
    promote_reason: str | None = None


@dataclass(frozen=True)
class Agent(Public):
    id: str
    tenant_id: str
    name: str
    active_version: int | None
    latest_version: int
    created_at: str
    updated_at: str
    active: AgentVersion | None = None
    rollout_required_suite_id: str | None = None  # overrides the tenant's gate settings; None: the tenant's
    rollout_min_eval_score: float | None = None
    _hidden = ("active",)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["config"] = self.active.config if self.active else None
        data["warnings"] = list(self.active.warnings) if self.active else []
        return data


@dataclass(frozen=True)
class VoiceProfile(Public):
    id: str
    tenant_id: str
    name: str
    provider: str
    voice_id: str
    language: str
    speed: float
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class PhoneNumber(Public):
    id: str
    tenant_id: str
    e164: str
    provider: str
    agent_id: str
    pinned_version: int | None
    label: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Credential(Public):
    id: str
    tenant_id: str
    provider: str
    fields: dict[str, str]
    secret_set: bool
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class WebhookConfig(Public):
    id: str
    tenant_id: str
    url: str
    events: list[str]
    active: bool
    description: str | None
    created_at: str
    updated_at: str
    # active | inactive (switched off: active false) | disabled (after consecutive_failures
    # deliveries in a row failed; its deliveries are held until it is switched on)
    status: str = "active"
    consecutive_failures: int = 0
    disabled_at: str | None = None
    secret_ref: str = field(repr=False, default="")
    _hidden = ("secret_ref",)
