"""Validated inputs of the control plane (pydantic): one schema per write, shared by CLI and API.

The same models produce the request-body JSON schemas in the OpenAPI document.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from runtime.control.patterns import check_pattern
from runtime.control.tool_schemas import check_tool_schema
from runtime.egress.policy import WEB, WEB_AND_SOCKETS, url_target
from runtime.providers import registry

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
HHMM_RANGE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$")
TOOL_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{0,63}$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BUILTIN_TOOLS = (
    "end_call", "transfer_to_human", "log_note", "check_availability", "create_booking", "create_order",
    "schedule_callback",
)
MAX_VERSION = 2**31 - 1  # agent versions are INTEGER columns (32-bit on PostgreSQL)


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


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


def _tenant_url(schemes: tuple[str, ...]) -> Any:
    """A validator of a tenant URL's form: scheme, host, port, no user name or password (where it
    points is checked against the egress policy when it is stored, by the service). A version
    read back as stored is not checked: the connection is."""

    def check(value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not (info.context and info.context.get("stored")):
            url_target(value, schemes)  # UrlRefused is a ValueError: a 422 naming the field
        return value

    return check


check_http_url = _tenant_url(WEB)


# Tenants

DIAL_PREFIX = re.compile(r"^\+[1-9]\d{0,14}$")
MAX_OUTBOUND_PREFIXES = 100
DEFAULT_OUTBOUND_PER_DAY = 100
DEFAULT_CALLBACK_SLA_MINUTES = 240
MAX_CALLBACK_SLA_MINUTES = 30 * 24 * 60


def check_prefixes(value: list[str] | None) -> list[str] | None:
    """Outbound prefixes: ``+`` and 1-15 digits each (e.g. +1415, +49), at most 100; None: the
    default (the country codes of the tenant's own numbers)."""
    if value is None:
        return None
    if len(value) > MAX_OUTBOUND_PREFIXES:
        raise ValueError(f"at most {MAX_OUTBOUND_PREFIXES} prefixes")
    compact = [re.sub(r"[\s\-().]", "", v) for v in value]
    bad = [v for v, c in zip(value, compact, strict=True) if not DIAL_PREFIX.match(c)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a dialling prefix (+ and 1 to 15 digits, e.g. +1415 or +49)")
    return list(dict.fromkeys(compact))


class TenantCreate(Input):
    name: str = Field(min_length=1, max_length=100)
    timezone: str = "UTC"
    max_concurrent_calls: int = Field(10, ge=1, le=10_000)
    max_call_duration_s: int = Field(1800, ge=30, le=86_400)
    recording_enabled: bool = False
    retention_days: int = Field(30, ge=1, le=3650)
    metadata: dict[str, Any] = Field(default_factory=dict)
    outbound_allowed_prefixes: list[str] | None = Field(
        None, description="prefixes outbound calls may dial, e.g. [\"+1415\"] (default: the country codes of the "
                          "tenant's own numbers)")
    max_outbound_per_day: int = Field(DEFAULT_OUTBOUND_PER_DAY, ge=0, le=1_000_000,
                                      description="outbound calls per day in the tenant's time zone (0: none)")
    callback_sla_minutes: int = Field(DEFAULT_CALLBACK_SLA_MINUTES, ge=1, le=MAX_CALLBACK_SLA_MINUTES,
                                      description="a callback task is due this long after it is wanted")
    callback_auto_dial: bool = Field(False, description="scheduled callback tasks are dialled when their time comes")

    _tz = field_validator("timezone")(check_timezone)
    _prefixes = field_validator("outbound_allowed_prefixes")(check_prefixes)


class TenantUpdate(Input):
    name: str | None = Field(None, min_length=1, max_length=100)
    timezone: str | None = None
    max_concurrent_calls: int | None = Field(None, ge=1, le=10_000)
    max_call_duration_s: int | None = Field(None, ge=30, le=86_400)
    recording_enabled: bool | None = None
    retention_days: int | None = Field(None, ge=1, le=3650)
    status: Literal["active", "disabled"] | None = None
    metadata: dict[str, Any] | None = None
    outbound_allowed_prefixes: list[str] | None = Field(None, description="null: back to the default")
    max_outbound_per_day: int | None = Field(None, ge=0, le=1_000_000)
    callback_sla_minutes: int | None = Field(None, ge=1, le=MAX_CALLBACK_SLA_MINUTES)
    callback_auto_dial: bool | None = None
    rollout_required_suite_id: str | None = Field(
        None, max_length=64, description="the promotion gate: the suite a version's latest evaluation must be on "
                                         "(null with rollout_min_eval_score null: the gate is off)")
    rollout_min_eval_score: float | None = Field(None, ge=0, le=1, description="the gate's minimum score (0-1)")

    _tz = field_validator("timezone")(check_timezone)
    _prefixes = field_validator("outbound_allowed_prefixes")(check_prefixes)

    # Columns that may be set to null (the others are NOT NULL).
    NULLABLE: ClassVar[frozenset[str]] = frozenset({"outbound_allowed_prefixes", "rollout_required_suite_id",
                                                    "rollout_min_eval_score"})


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
    """A version's choice for one modality: ``provider`` (null: the appliance default), ``model``,
    ``base_url``, ``fallback`` and, flat beside them, the provider's own options (the registry
    entry's options model: Deepgram's ``endpointing_ms``, Chatterbox's ``exaggeration``, a TTS
    ``voice``...). Which keys a provider takes is checked against the registry by AgentConfig,
    which knows the modality."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True, frozen=True,
                              json_schema_extra=lambda schema: schema.update(_vendor_keys_schema()))

    provider: str | None = Field(None, description="null: the appliance default (providers.defaults)")
    model: str | None = None
    base_url: str | None = None
    fallback: list[str] = Field(default_factory=list, description="providers to try next, in order")

    _base_url = field_validator("base_url")(_tenant_url(WEB_AND_SOCKETS))

    @model_validator(mode="before")
    @classmethod
    def _drop_unset_options(cls, data: Any) -> Any:
        # Versions written by earlier releases hold every vendor key, unset ones as null.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in _COMMON_CHOICE_KEYS}
        return data

    @property
    def option_values(self) -> dict[str, Any]:
        """The vendor keys this choice sets."""
        return dict(self.model_extra or {})

    def options_for(self, entry: registry.ProviderEntry) -> Any:
        """The options of ``entry`` this choice sets, typed by its options model (keys of other
        providers, which only stored versions can hold, are left out)."""
        fields = entry.options.model_fields
        return entry.options.model_validate({k: v for k, v in self.option_values.items() if k in fields})

    def with_provider(self, name: str) -> ProviderChoice:
        return self.model_copy(update={"provider": name})

    def check(self, modality: str, *, stored: bool = False) -> None:
        """Provider names known to the registry, and each vendor key one the provider takes, in
        its range. ``stored``: a version read back, not checked (an earlier release may have
        saved what today's registry refuses; a call skips what it cannot use)."""
        if stored:
            return
        for name in [self.provider, *self.fallback]:
            if name is not None and registry.find(modality, name) is None:
                raise ValueError(f"{modality}.provider: unknown provider {name!r}; "
                                 f"known: {', '.join(registry.names(modality))}")
        values = self.option_values
        entry = registry.find(modality, self.provider) if self.provider else None
        for key, value in values.items():
            owners = registry.option_owners(modality, key)
            if entry is not None and key not in entry.options.model_fields or not owners:
                raise ValueError(f"{modality}.{key}: {_owned_by(modality, key, owners)}")
            # With no provider named, a key is checked against the providers that take it.
            models = [entry.options] if entry is not None else [registry.get(modality, o).options for o in owners]
            errors = [_option_error(model, key, value) for model in models]
            if all(errors):
                raise ValueError(f"{modality}.{key}: {errors[0]}")


_COMMON_CHOICE_KEYS = frozenset(registry.COMMON_CHOICE_KEYS)


def _vendor_keys_schema() -> dict[str, Any]:
    """OpenAPI: the vendor keys a choice may carry beside the common ones, by provider (from the
    registry; which apply is checked against the modality and the provider when saved)."""
    by_key: dict[str, list[str]] = {}
    for entry in registry.PROVIDERS:
        for key in entry.options.model_fields:
            by_key.setdefault(key, []).append(f"{entry.modality}:{entry.name}")
    return {"description": "Vendor keys, flat beside provider/model/base_url/fallback; each for the providers "
                           "named: " + "; ".join(f"{key} ({', '.join(owners)})" for key, owners in by_key.items())}


def _owned_by(modality: str, key: str, owners: tuple[str, ...]) -> str:
    if owners:
        return f"only for {', '.join(owners)}"
    others = [m for m in registry.MODALITIES if m != modality and registry.option_owners(m, key)]
    if others:
        return f"only for {' and '.join(others)}"
    return "not a setting of any provider"


def _option_error(model: type[BaseModel], key: str, value: Any) -> str | None:
    try:
        model.model_validate({key: value})
    except ValidationError as exc:
        return exc.errors()[0]["msg"].removeprefix("Value error, ")
    return None


# Turn-taking defaults (the pipeline's TurnPolicy and ConversationSettings use these too).
ENDPOINTING_SILENCE_MS = 500
MIN_INTERRUPTION_MS = 300
SILENCE_REPROMPT_S = 8.0
NOT_UNDERSTOOD_REPLY = "Sorry, I didn't catch that."


class TurnSettings(Input):
    endpointing_silence_ms: int = Field(ENDPOINTING_SILENCE_MS, ge=100, le=5000)
    min_interruption_ms: int = Field(MIN_INTERRUPTION_MS, ge=0, le=5000)
    silence_reprompt_s: float = Field(SILENCE_REPROMPT_S, ge=1, le=120)
    silence_prompts: Literal["auto", "on", "off"] = Field(
        "auto", description="the re-prompt and the silence hang-up: auto = on, except for an external brain")
    not_understood_reply: str = Field(
        NOT_UNDERSTOOD_REPLY, max_length=300,
        description="said at once to a caller turn with speech but no words understood; empty: say nothing")


def _stored(info: ValidationInfo) -> bool:
    """Validating a version as stored (AgentConfig.from_stored), not a write."""
    return bool(info.context and info.context.get("stored"))


class HttpTool(Input):
    name: str
    description: str = Field(min_length=1, max_length=1000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}},
                                       description="JSON Schema (draft 2020-12) of the arguments, an object")
    url: str
    timeout_s: float = Field(5.0, gt=0, le=60)

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Stored by an earlier release: kept; a schema that cannot be applied stops only its tool's calls.
        if not _stored(info):
            check_tool_schema(value)
        return value

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
    callback: bool = Field(False, description="every after-hours caller not transferred gets a callback task, "
                                              "scheduled for the next opening")


# The rules brain (runtime.providers.llm.rules): a scripted, deterministic stand-in for an LLM.

DTMF_KEYS = frozenset("0123456789*#ABCD")


def _tenant_pattern(value: str, info: ValidationInfo) -> str:
    # Written now: RE2 must take it. Stored by an earlier release: kept, and skipped when it runs.
    return value if _stored(info) else check_pattern(value)


# A regex a tenant writes: runs on RE2 (runtime.control.patterns), case-insensitive.
TenantPattern = Annotated[str, AfterValidator(_tenant_pattern)]


class RuleSlot(Input):
    """A value the brain extracts from what the caller says (see runtime.providers.llm.rules)."""

    type: Literal["count", "number", "time", "date", "name", "items", "text"]
    default: str | int | None = Field(None, description='used when never said, e.g. "today" for a date')
    choices: list[str] = Field(default_factory=list, max_length=200,
                               description="items: the names to look for (a menu)")
    pm_hours: tuple[int, int] = Field((5, 11), description="time: bare hours in this range are read as PM")
    pattern: TenantPattern | None = Field(None, description="text: a regex (RE2 syntax) whose first group (or "
                                                            "match) is the value")

    @field_validator("pm_hours")
    @classmethod
    def _pm(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1] <= 11:
            raise ValueError("pm_hours is a range within 1..11, e.g. [5, 11]")
        return value


class RuleOutcome(Input):
    """A reply step: what is said, and what the next caller turn is read against."""

    when: dict[str, Any] = Field(default_factory=dict,
                                 description="after a tool: field values the result must have (empty: any)")
    reply: str = Field("", max_length=2000)
    confirm: RuleConfirm | None = None
    ask: str | None = Field(None, description="a slot the next answer fills, e.g. time after 'full at 7'")
    reset: bool = Field(False, description="forget the slots once this reply is made (the task is done)")


class RuleConfirm(Input):
    """The reply asked a yes/no question: what a yes or a no does next (an intent's name, or a reply)."""

    yes: str | RuleOutcome | None = None
    no: str | RuleOutcome | None = None


RuleOutcome.model_rebuild()


class RuleIntent(Input):
    name: str
    keywords: list[str] = Field(default_factory=list, max_length=200)
    fuzzy: int | None = Field(None, ge=0, le=3, description="misheard keywords: edits allowed in spelling (default "
                              "by length: 0 under 5 letters, 1 up to 7, 2 from 8); 0: as written only")
    exact: bool = Field(False, description="keywords match only as written (no tolerance for misheard words)")
    patterns: list[TenantPattern] = Field(default_factory=list, max_length=50, description="regexes (RE2 syntax)")
    requires: list[str] = Field(default_factory=list, description="slots that must be known before acting")
    ask: dict[str, str] = Field(default_factory=dict, description="slot -> the question asked when it is missing")
    reply: str = Field("", max_length=2000, description="spoken first (before the tool call when there is one)")
    tool: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict, description='tool arguments; "{slot}" passes the value')
    results: list[RuleOutcome] = Field(default_factory=list, description="replies to the tool result, first match")
    on_error: RuleOutcome | None = Field(None, description="the reply when the tool fails (default: error_reply)")
    confirm: RuleConfirm | None = Field(None, description="the reply asked a yes/no question")

    _names = field_validator("name", "tool")(lambda v: v if v is None or TOOL_NAME.match(v) else _bad_name(v))

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        cleaned = [k.strip().lower() for k in value]
        if any(not k or len(k) > 100 for k in cleaned):
            raise ValueError("keywords are 1 to 100 characters")
        return cleaned


def _bad_name(value: str) -> str:
    raise ValueError(f"{value!r}: names are letters, digits and underscores, starting with a letter")


class RulesConfig(Input):
    """The rules brain's script: slots, intents in priority order, and the lines it falls back on."""

    slots: dict[str, RuleSlot] = Field(default_factory=dict)
    intents: list[RuleIntent] = Field(default_factory=list, max_length=200)
    fallback: str = Field("Sorry, I didn't catch that. How can I help?", min_length=1, max_length=2000)
    reprompt: str = Field("Sorry, I didn't catch that.", min_length=1, max_length=2000,
                          description="said before repeating the question for a missing slot")
    error_reply: str = Field("Sorry, something went wrong on my side.", min_length=1, max_length=2000)
    yes_words: list[str] = Field(default_factory=lambda: [
        "yes", "yeah", "yep", "yup", "sure", "ok", "okay", "please do", "go ahead", "correct", "that's right",
        "sounds good", "perfect", "absolutely", "of course", "definitely", "do it", "book it"])
    no_words: list[str] = Field(default_factory=lambda: [
        "no", "nope", "nah", "not really", "don't", "do not", "never mind", "cancel"])

    @model_validator(mode="after")
    def _references(self) -> RulesConfig:
        names = [i.name for i in self.intents]
        if len(set(names)) != len(names):
            raise ValueError("intent names must be unique")
        for intent in self.intents:
            for slot in [*intent.requires, *intent.ask]:
                if slot not in self.slots:
                    raise ValueError(f"intent {intent.name}: unknown slot {slot!r}")
            outcomes = [*intent.results, intent.on_error, RuleOutcome(confirm=intent.confirm)]
            self._check_outcomes(intent.name, outcomes, set(names), depth=0)
        return self

    def _check_outcomes(self, intent: str, outcomes: list[RuleOutcome | None], known: set[str], depth: int) -> None:
        if depth > 8:
            raise ValueError(f"intent {intent}: yes/no replies nest too deep")
        for outcome in filter(None, outcomes):
            if outcome.ask is not None and outcome.ask not in self.slots:
                raise ValueError(f"intent {intent}: ask refers to unknown slot {outcome.ask!r}")
            if outcome.confirm is None:
                continue
            for target in (outcome.confirm.yes, outcome.confirm.no):
                if isinstance(target, str) and target not in known:
                    raise ValueError(f"intent {intent}: confirm refers to unknown intent {target!r}")
                if isinstance(target, RuleOutcome):
                    self._check_outcomes(intent, [target], known, depth + 1)


class AgentConfig(Input):
    """Everything an agent version holds. Frozen: the runtime reads a call's settings from it
    (``from_stored``) as the API validated them."""

    system_prompt: str = Field(min_length=1, max_length=100_000)
    greeting: str | None = Field(None, max_length=2000)
    voicemail_message: str | None = Field(
        None, max_length=2000, description="what an outbound call with machine_detection voicemail leaves after the beep")
    language: str = Field("en", min_length=2, max_length=16)
    llm: ProviderChoice = Field(default_factory=ProviderChoice)
    stt: ProviderChoice = Field(default_factory=ProviderChoice)
    tts: ProviderChoice = Field(default_factory=ProviderChoice)
    voice_profile_id: str | None = None
    tools: list[str] = Field(default_factory=list, description="built-in tools the agent may call")
    http_tools: list[HttpTool] = Field(default_factory=list)
    auto_flush: bool = Field(True, description="the caller interrupting drops the integrator's lines still "
                                               "waiting to be said (speaking sessions)")
    escalation_target: str | None = Field(None, description="E.164 number or sip: URI for transfers")
    max_duration_s: int | None = Field(None, ge=30, le=86_400)
    turn: TurnSettings = Field(default_factory=TurnSettings)
    hours: OperatingHours | None = None
    after_hours: AfterHours = Field(default_factory=AfterHours)
    knowledge: str = Field("", max_length=200_000)
    rules: RulesConfig | None = Field(None, description="the script of the rules brain (llm provider: rules)")
    dtmf_tools: dict[str, str] = Field(
        default_factory=dict, description="keypad digit -> tool the pipeline runs at once, e.g. {\"0\": \"transfer_to_human\"}")

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

    @model_validator(mode="after")
    def _choices(self, info: ValidationInfo) -> AgentConfig:
        stored = bool(info.context and info.context.get("stored"))
        for modality in registry.MODALITIES:
            getattr(self, modality).check(modality, stored=stored)
        return self

    @model_validator(mode="after")
    def _dtmf(self) -> AgentConfig:
        enabled = set(self.tools) | {t.name for t in self.http_tools}
        for digit, tool in self.dtmf_tools.items():
            if digit not in DTMF_KEYS:
                raise ValueError(f"dtmf_tools: {digit!r} is not a keypad key (0-9, *, #, A-D)")
            if tool not in enabled:
                raise ValueError(f"dtmf_tools: {tool!r} is not one of this agent's tools")
        return self


    @classmethod
    def from_stored(cls, raw: Mapping[str, Any]) -> AgentConfig:
        """A version's config as stored, including those written by earlier releases: a provider
        or vendor key today's registry does not know is kept (a call skips what it cannot use)
        rather than refusing the whole version."""
        return cls.model_validate(raw, context={"stored": True})


class AgentCreate(AgentConfig):
    name: str = Field(min_length=1, max_length=100)


class AgentUpdate(Input):
    """Rename and/or change settings; a settings change creates a new draft version."""

    name: str | None = Field(None, min_length=1, max_length=100)
    note: str | None = Field(None, max_length=500)
    system_prompt: str | None = Field(None, min_length=1, max_length=100_000)
    greeting: str | None = Field(None, max_length=2000)
    voicemail_message: str | None = Field(None, max_length=2000)
    language: str | None = Field(None, min_length=2, max_length=16)
    llm: ProviderChoice | None = None
    stt: ProviderChoice | None = None
    tts: ProviderChoice | None = None
    voice_profile_id: str | None = None
    tools: list[str] | None = None
    http_tools: list[HttpTool] | None = None
    escalation_target: str | None = None
    auto_flush: bool | None = None
    max_duration_s: int | None = Field(None, ge=30, le=86_400)
    turn: TurnSettings | None = None
    hours: OperatingHours | None = None
    after_hours: AfterHours | None = None
    knowledge: str | None = Field(None, max_length=200_000)
    rules: RulesConfig | None = None
    dtmf_tools: dict[str, str] | None = None
    rollout_required_suite_id: str | None = Field(
        None, max_length=64, description="admin keys: this agent's gate suite (null: the tenant's)")
    rollout_min_eval_score: float | None = Field(None, ge=0, le=1,
                                                 description="admin keys: this agent's gate threshold (null: the tenant's)")

    GATE_FIELDS: ClassVar[frozenset[str]] = frozenset({"rollout_required_suite_id", "rollout_min_eval_score"})

    def config_changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude={"name", "note", *self.GATE_FIELDS})

    def gate_changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, include=set(self.GATE_FIELDS))


class PromoteRequest(Input):
    version: int | None = Field(None, ge=1, le=MAX_VERSION, description="default: the latest version")
    force: bool = Field(False, description="admin keys: promote past the evaluation gate (needs a reason)")
    reason: str | None = Field(None, max_length=500, description="why (recorded, and sent in agent.promoted)")


# Voice profiles


def check_tts_provider(value: str | None) -> str | None:
    if value is not None and registry.find("tts", value) is None:
        raise ValueError(f"unknown tts provider {value!r}; known: {', '.join(registry.names('tts'))}")
    return value


class VoiceProfileCreate(Input):
    name: str = Field(min_length=1, max_length=100)
    provider: str = Field(default_factory=lambda: registry.offline_default("tts"),
                          description="a TTS provider; the voice and speed apply where it has voices")
    voice_id: str = Field("default", min_length=1, max_length=200)
    language: str = Field("en", min_length=2, max_length=16)
    speed: float = Field(1.0, ge=0.5, le=2.0)

    _provider = field_validator("provider")(check_tts_provider)


class VoiceProfileUpdate(Input):
    name: str | None = Field(None, min_length=1, max_length=100)
    provider: str | None = None
    voice_id: str | None = Field(None, min_length=1, max_length=200)
    language: str | None = Field(None, min_length=2, max_length=16)
    speed: float | None = Field(None, ge=0.5, le=2.0)

    _provider = field_validator("provider")(check_tts_provider)


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
