"""Validated inputs of the control plane (pydantic): one schema per write, shared by CLI and API.

The same models produce the request-body JSON schemas in the OpenAPI document.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
HHMM_RANGE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$")
TOOL_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{0,63}$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BUILTIN_TOOLS = (
    "end_call", "transfer_to_human", "log_note", "check_availability", "create_booking", "create_order",
)
MAX_VERSION = 2**31 - 1  # agent versions are INTEGER columns (32-bit on PostgreSQL)


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def check_timezone(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)") from None
    return value


def check_e164(value: str | None) -> str | None:
    if value is None:
        return None
    compact = re.sub(r"[\s\-().]", "", value)
    if not E164.match(compact):
        raise ValueError(f"{value!r} is not an E.164 number (expected + then 7 to 15 digits, e.g. +15551230001)")
    return compact


def check_http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("expected an http(s) URL")
    return value


# Tenants


class TenantCreate(Input):
    name: str = Field(min_length=1, max_length=100)
    timezone: str = "UTC"
    max_concurrent_calls: int = Field(10, ge=1, le=10_000)
    max_call_duration_s: int = Field(1800, ge=30, le=86_400)
    recording_enabled: bool = False
    retention_days: int = Field(30, ge=1, le=3650)
    metadata: dict[str, Any] = Field(default_factory=dict)

    _tz = field_validator("timezone")(check_timezone)


class TenantUpdate(Input):
    name: str | None = Field(None, min_length=1, max_length=100)
    timezone: str | None = None
    max_concurrent_calls: int | None = Field(None, ge=1, le=10_000)
    max_call_duration_s: int | None = Field(None, ge=30, le=86_400)
    recording_enabled: bool | None = None
    retention_days: int | None = Field(None, ge=1, le=3650)
    status: Literal["active", "disabled"] | None = None
    metadata: dict[str, Any] | None = None

    _tz = field_validator("timezone")(check_timezone)


# API keys


class ApiKeyCreate(Input):
    scope: Literal["runtime", "admin"]
    tenant_id: str | None = None
    name: str | None = Field(None, max_length=100)

    @model_validator(mode="after")
    def _tenant_matches_scope(self) -> ApiKeyCreate:
        if self.scope == "runtime" and not self.tenant_id:
            raise ValueError("tenant_id is required for runtime keys")
        if self.scope == "admin" and self.tenant_id:
            raise ValueError("admin keys belong to no tenant: leave tenant_id out")
        return self


# Agents


class ProviderChoice(Input):
    provider: str | None = Field(None, description="null: the appliance default (providers.defaults)")
    model: str | None = None
    base_url: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=32_000)
    fallback: list[str] = Field(default_factory=list)


class TurnSettings(Input):
    endpointing_silence_ms: int = Field(500, ge=100, le=5000)
    min_interruption_ms: int = Field(300, ge=0, le=5000)
    silence_reprompt_s: float = Field(8.0, ge=1, le=120)


class HttpTool(Input):
    name: str
    description: str = Field(min_length=1, max_length=1000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str
    timeout_s: float = Field(5.0, gt=0, le=60)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TOOL_NAME.match(value):
            raise ValueError("tool names are letters, digits and underscores, starting with a letter")
        return value

    _url = field_validator("url")(check_http_url)


class OperatingHours(Input):
    """Weekly schedule in the tenant's time zone; a day missing from the map is closed."""

    schedule: dict[str, list[str]]

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for day, ranges in value.items():
            if day not in WEEKDAYS:
                raise ValueError(f"unknown day {day!r}; expected one of {', '.join(WEEKDAYS)}")
            for item in ranges:
                if not HHMM_RANGE.match(item) or item[:5] >= item[6:]:
                    raise ValueError(f"{day}: {item!r} is not a range like 09:00-17:30")
        return value


class AfterHours(Input):
    mode: Literal["greeting", "transfer"] = "greeting"
    greeting: str | None = None
    system_prompt: str | None = None


class AgentConfig(Input):
    """Everything an agent version holds."""

    system_prompt: str = Field(min_length=1, max_length=100_000)
    greeting: str | None = Field(None, max_length=2000)
    language: str = Field("en", min_length=2, max_length=16)
    llm: ProviderChoice = Field(default_factory=ProviderChoice)
    stt: ProviderChoice = Field(default_factory=ProviderChoice)
    tts: ProviderChoice = Field(default_factory=ProviderChoice)
    voice_profile_id: str | None = None
    tools: list[str] = Field(default_factory=list, description="built-in tools the agent may call")
    http_tools: list[HttpTool] = Field(default_factory=list)
    escalation_target: str | None = Field(None, description="E.164 number or sip: URI for transfers")
    max_duration_s: int | None = Field(None, ge=30, le=86_400)
    turn: TurnSettings = Field(default_factory=TurnSettings)
    hours: OperatingHours | None = None
    after_hours: AfterHours = Field(default_factory=AfterHours)
    knowledge: str = Field("", max_length=200_000)

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in BUILTIN_TOOLS]
        if unknown:
            raise ValueError(f"unknown built-in tools {unknown}; known: {', '.join(BUILTIN_TOOLS)}")
        return list(dict.fromkeys(value))

    @field_validator("escalation_target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is None or value.startswith("sip:"):
            return value
        return check_e164(value)


class AgentCreate(AgentConfig):
    name: str = Field(min_length=1, max_length=100)


class AgentUpdate(Input):
    """Rename and/or change settings; a settings change creates a new draft version."""

    name: str | None = Field(None, min_length=1, max_length=100)
    note: str | None = Field(None, max_length=500)
    system_prompt: str | None = Field(None, min_length=1, max_length=100_000)
    greeting: str | None = Field(None, max_length=2000)
    language: str | None = Field(None, min_length=2, max_length=16)
    llm: ProviderChoice | None = None
    stt: ProviderChoice | None = None
    tts: ProviderChoice | None = None
    voice_profile_id: str | None = None
    tools: list[str] | None = None
    http_tools: list[HttpTool] | None = None
    escalation_target: str | None = None
    max_duration_s: int | None = Field(None, ge=30, le=86_400)
    turn: TurnSettings | None = None
    hours: OperatingHours | None = None
    after_hours: AfterHours | None = None
    knowledge: str | None = Field(None, max_length=200_000)

    def config_changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude={"name", "note"})


class PromoteRequest(Input):
    version: int | None = Field(None, ge=1, le=MAX_VERSION, description="default: the latest version")


# Voice profiles


class VoiceProfileCreate(Input):
    name: str = Field(min_length=1, max_length=100)
    provider: Literal["local", "chatterbox", "espeak"] = "local"
    voice_id: str = Field("default", min_length=1, max_length=200)
    language: str = Field("en", min_length=2, max_length=16)
    speed: float = Field(1.0, ge=0.5, le=2.0)


class VoiceProfileUpdate(Input):
    name: str | None = Field(None, min_length=1, max_length=100)
    provider: Literal["local", "chatterbox", "espeak"] | None = None
    voice_id: str | None = Field(None, min_length=1, max_length=200)
    language: str | None = Field(None, min_length=2, max_length=16)
    speed: float | None = Field(None, ge=0.5, le=2.0)


# Phone numbers


class NumberCreate(Input):
    e164: str
    provider: Literal["twilio", "goto", "livekit", "webrtc"]
    agent_id: str
    pinned_version: int | None = Field(None, ge=1, le=MAX_VERSION)
    label: str | None = Field(None, max_length=100)

    _e164 = field_validator("e164")(check_e164)


class NumberUpdate(Input):
    agent_id: str | None = None
    pinned_version: int | None = Field(None, ge=1, le=MAX_VERSION)
    label: str | None = Field(None, max_length=100)


# Credentials


class CredentialSet(Input):
    fields: dict[str, str] = Field(default_factory=dict)
    secret: str | None = Field(None, min_length=1, max_length=10_000, description="write-only")


# Webhook configs


class WebhookCreate(Input):
    url: str = Field(max_length=2000)
    events: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    active: bool = True
    description: str | None = Field(None, max_length=500)

    _url = field_validator("url")(check_http_url)


class WebhookUpdate(Input):
    url: str | None = Field(None, max_length=2000)
    events: list[str] | None = Field(None, min_length=1)
    active: bool | None = None
    description: str | None = Field(None, max_length=500)

    _url = field_validator("url")(check_http_url)
