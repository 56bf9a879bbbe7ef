"""YAML config plus VOICECTL_* environment overrides -> frozen, validated settings.

The key names follow the skeleton in DESIGN.md; every key is documented in
config.example.yaml and a test keeps the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from runtime.egress.policy import EgressPolicy, format_allow_entry, parse_allow_entry
from runtime.providers import options as opt
from runtime.providers import registry

ENV_PREFIX = "VOICECTL_"
# Variables with the prefix that are not config overrides.
ENV_RESERVED = {"VOICECTL_CONFIG", "VOICECTL_MASTER_KEY", "VOICECTL_API_KEY"}
# Concurrent calls on the offline stack one core serves with voice-to-voice p95 near 1 s, by the
# Whisper model (bench/pipeline.py --part offline --stt-model M: tiny.en 4 calls on one core, p50
# 843 ms, p95 1,014 ms; base 1 call on one core p50 706 ms, p95 1,050 ms over 15 turns, and with
# --local-calls 4, 2 calls p95 1,752 ms and 3 calls p95 1,326 ms, so 1).
LOCAL_CALLS_PER_CORE: dict[str, int] = {"tiny.en": 4, "base": 1}
DEFAULT_CONFIG_NAME = "config.yaml"


class ConfigError(Exception):
    """Invalid or missing configuration; the message is meant for the operator."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    public_url: str | None = None
    max_body_bytes: int = Field(1_048_576, ge=1024)
    shutdown_grace_s: float = Field(30.0, ge=0)
    # Reverse proxies (IPs or CIDR networks) whose X-Forwarded-For names the client; none by default.
    trusted_proxies: list[str] = Field(default_factory=list)
    # This instance's name among several runtimes (cluster mode); unset: hostname:port.
    instance_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    # Seconds an instance's heartbeat stays valid; a peer is presumed dead after it (cluster mode).
    lease_s: float = Field(10.0, ge=1, le=600)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/8)") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("expected an absolute http(s) URL such as https://voice.example.com")
        return value.rstrip("/")


class DatabaseSettings(_Model):
    url: str = "sqlite:///voicectl.db"
    pool_min: int = Field(1, ge=1)
    pool_max: int = Field(10, ge=1)
    sqlite_readers: int = Field(4, ge=1, le=64)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
            return value
        if value.startswith(("postgresql://", "postgres://")):
            return value
        raise ValueError("expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")


class SecretsSettings(_Model):
    # database: sealed in the database with a key derived from the master key (what several runtimes
    # on one PostgreSQL share); the others keep values on this box.
    backend: Literal["auto", "keyring", "cryptfile", "database"] = "auto"
    master_key_file: str = "master.key"
    keyring_file: str = "secrets.cfg"


class RateLimit(_Model):
    limit: int = Field(ge=1)
    window_s: int = Field(ge=1)


RATE_CLASSES = ("read", "write", "session", "realtime", "recording", "control", "outbound")


class RateLimitClasses(_Model):
    """A limit per route class; null means unlimited."""

    read: RateLimit | None = None
    write: RateLimit | None = None
    session: RateLimit | None = None
    realtime: RateLimit | None = None
    recording: RateLimit | None = None
    control: RateLimit | None = None  # live call control: hangup, transfer, say, pause
    outbound: RateLimit | None = None  # placing outbound calls (POST /api/v1/calls)


def _runtime_rate_defaults() -> RateLimitClasses:
    # Seed 004's limits, plus writes at the read rate.
    return RateLimitClasses(
        read=RateLimit(limit=100, window_s=900),
        write=RateLimit(limit=100, window_s=900),
        session=RateLimit(limit=10, window_s=3600),
        realtime=RateLimit(limit=30, window_s=3600),
        recording=RateLimit(limit=20, window_s=3600),
        # An integrator's backend drives its live calls: say, pause, hang up, many per call.
        control=RateLimit(limit=3000, window_s=60),
        # Each placed call costs money: a runaway integration is stopped within a minute.
        outbound=RateLimit(limit=60, window_s=60),
    )


RATE_LIMIT_STORAGES = ("memory://", "async+redis://")


class RateLimitSettings(_Model):
    runtime: RateLimitClasses = Field(default_factory=_runtime_rate_defaults)
    admin: RateLimitClasses = Field(default_factory=RateLimitClasses)
    # Where the counters live: memory:// (this process only) or async+redis://HOST:PORT/DB (shared by
    # every instance; cluster mode requires it).
    storage: str = "memory://"
    # Start of every Redis key the limits write (<prefix>:ratelimit...): deployments sharing one Redis
    # database count apart when their prefixes differ.
    key_prefix: str = Field("voicectl", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, value: str) -> str:
        if value != "memory://" and not (value.startswith("async+redis://") and len(value) > len("async+redis://")):
            raise ValueError("memory:// or async+redis://HOST:PORT/DB, e.g. async+redis://127.0.0.1:6379/0")
        return value

    @property
    def shared(self) -> bool:
        return self.storage != "memory://"


class LimitsSettings(_Model):
    max_calls: int = Field(200, ge=1)  # per instance
    # Concurrent calls across every instance of a cluster; unset: no cluster-wide cap.
    max_calls_cluster: int | None = Field(None, ge=1)
    # Calls whose speech runs on this box's own engines (offline STT or TTS) at once, counted in
    # calls of providers.local.stt_model (a call of a heavier model counts for more); more get the
    # busy answer. Unset: LOCAL_CALLS_PER_CORE of that model for each core this process may use.
    local_calls: int | None = Field(None, ge=1)

    def local_capacity(self, stt_model: str) -> int:
        return self.local_calls or LOCAL_CALLS_PER_CORE[stt_model] * len(os.sched_getaffinity(0))
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    # Media sockets open but not yet started (no valid stream token), per client address; more are
    # refused with 429. Room for a box's whole call limit arriving from one carrier address at once.
    pending_media_sockets_per_address: int = Field(256, ge=1, le=100_000)
    # The same for the whole box, so many addresses together cannot hold every file descriptor.
    pending_media_sockets: int = Field(1024, ge=1, le=100_000)
    # Outbound calls the box starts per second (all tenants), and per tenant: queued calls wait
    # for their slot (Twilio's accounts start at 1 call per second; more are queued there too).
    max_outbound_cps: float = Field(5.0, gt=0, le=1000)
    max_outbound_cps_per_tenant: float = Field(1.0, gt=0, le=1000)


class TwilioSettings(_Model):
    api_base_url: str = "https://api.twilio.com"
    # After a reply's last frame is sent, how long to wait for Twilio's echo of the mark behind it
    # (the audio has played) before a hang-up or transfer goes ahead anyway.
    mark_timeout_s: float = Field(3.0, gt=0, le=30)
    # Also require X-Twilio-Signature on the media WebSocket's upgrade (Twilio signs it over the
    # stream URL), on top of the single-use stream token. Off by default: behind a proxy the
    # signed URL must be exactly server.public_url's.
    require_stream_signature: bool = False
    # Answering-machine detection on outbound calls: Twilio's MachineDetectionTimeout (seconds it
    # tries before answering "unknown"); a voicemail call whose result never comes greets anyway
    # 5 s after this.
    amd_timeout_s: int = Field(30, ge=3, le=59)


class GotoSettings(_Model):
    api_base_url: str = "https://api.goto.com"
    # The web-calls API's host: GoTo's "Make and Receive Calls" guide shows it on a jive.com host,
    # not api.goto.com (which host a production account uses is not documented: set it if yours differs).
    webrtc_base_url: str = "https://webrtc.jive.com"
    # The appliance's GoTo OAuth client (one GoTo app that each tenant authorises); its secret is
    # set with `voicectl goto set-client-secret`. A tenant may bring its own (client_id on its
    # goto credential).
    client_id: str | None = None
    # GoTo's OAuth token endpoint (refresh token -> access token).
    auth_url: str = "https://authentication.logmeininc.com/oauth/token"
    # Per request to GoTo's API (OAuth, channel, subscription, web-call answer).
    request_timeout_s: float = Field(10.0, gt=0, le=60)


# Countries whose numbering plan the LiveKit bridge knows (runtime/telephony/livekit/numbers.py
# COUNTRIES: a test keeps the two lists equal).
TRUNK_COUNTRIES = frozenset({"AE", "AT", "AU", "BE", "BR", "CA", "CH", "CZ", "DE", "DK", "ES", "FI", "FR", "GB",
                             "GR", "HK", "IE", "IL", "IN", "IT", "JP", "LU", "MX", "NL", "NO", "NZ", "PL", "PR",
                             "PT", "SE", "SG", "TR", "US", "ZA"})


class LiveKitSettings(_Model):
    """The appliance's own LiveKit project (tenants may bring theirs as a ``livekit`` credential).
    Its API secret is never a config key: it lives in the keyring (``voicectl livekit set-secret``)."""

    url: str | None = None
    api_key: str | None = None
    agent_name: str = Field("voicectl", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    webhook_max_age_s: float = Field(300.0, gt=0, le=3600)
    join_timeout_s: float = Field(15.0, gt=0, le=120)
    # ISO 3166 country of the SIP trunks: reads national dialled numbers ("(555) 010-7100") as
    # E.164; a tenant's livekit credential may name its own (field ``country``).
    default_country: str | None = None
    # Rooms that may hold a SIP caller whose participant_joined was lost are checked this often
    # (ListParticipants); 0 turns the check off.
    reconcile_interval_s: float = Field(10.0, ge=0, le=600)
    # S3 uploads of room egresses address the bucket in the path (MinIO, most S3-compatible
    # stores) rather than as a subdomain (AWS S3's virtual-hosted style).
    egress_force_path_style: bool = True

    @field_validator("default_country")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in TRUNK_COUNTRIES:
            raise ValueError(f"unknown country {value!r}; known: {', '.join(sorted(TRUNK_COUNTRIES))}")
        return value.upper() if value is not None else None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("ws", "wss", "http", "https") or not parsed.netloc:
            raise ValueError("expected the LiveKit server URL, e.g. wss://example.livekit.cloud")
        return value.rstrip("/")


class IceServer(_Model):
    """A STUN/TURN server with credentials (TURN); a plain URL string needs none."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None


class OpusSettings(_Model):
    # libopus complexity (its default is 10): 3 halves the encode time at 16 kHz (73 vs 137 us
    # a frame here) for speech of near the same fidelity (waveform SNR 14.0 vs 14.2 dB).
    complexity: int = Field(3, ge=0, le=10)
    bitrate: int = Field(32000, ge=6000, le=128000)


class WebRTCSettings(_Model):
    ice_servers: list[str | IceServer] = Field(default_factory=list)
    # Extra local addresses to gather ICE host candidates on. aioice leaves 127.0.0.1 out of
    # the interface addresses it gathers; list it here to take calls from the same box.
    host_candidates: list[str] = Field(default_factory=list)
    # The pipeline's sample rate on Opus calls (G.711 calls run at 8000).
    opus_pipeline_rate: Literal[8000, 16000] = 16000
    opus: OpusSettings = Field(default_factory=OpusSettings)
    # ICE + DTLS must be up this long after the answer, or the call fails (ice_timeout).
    connect_timeout_s: float = Field(15.0, gt=0, le=120)
    # No audio from a connected peer for this long ends the call (peer_silent).
    silence_timeout_s: float = Field(10.0, gt=0, le=600)
    # Browser tokens (POST /api/v1/webrtc/tokens) live at most this long.
    token_max_ttl_s: int = Field(3600, ge=30, le=86400)

    @field_validator("host_candidates")
    @classmethod
    def _check_addresses(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address (e.g. 127.0.0.1)") from None
        return value

    @field_validator("ice_servers")
    @classmethod
    def _check_ice_urls(cls, value: list[str | IceServer]) -> list[str | IceServer]:
        for item in value:
            for url in [item] if isinstance(item, str) else item.urls:
                if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                    raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
        return value


class TelephonySettings(_Model):
    twilio: TwilioSettings = Field(default_factory=TwilioSettings)
    goto: GotoSettings = Field(default_factory=GotoSettings)
    livekit: LiveKitSettings = Field(default_factory=LiveKitSettings)
    webrtc: WebRTCSettings = Field(default_factory=WebRTCSettings)
    # A Twilio media socket must send its start message this long after it opens, or it is closed (4408).
    media_start_timeout_s: float = Field(5.0, ge=1, le=10)


class ProviderDefaults(_Model):
    """The engines a version gets when it names none (offline by default)."""

    stt: str = Field(default_factory=lambda: registry.offline_default("stt"))
    llm: str = Field(default_factory=lambda: registry.offline_default("llm"))
    tts: str = Field(default_factory=lambda: registry.offline_default("tts"))

    @field_validator("stt", "llm", "tts")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        entry = registry.find(info.field_name, value)
        if entry is None:
            raise ValueError(f"one of {', '.join(registry.names(info.field_name))}")
        if not entry.can_be_default:  # e.g. the customer's own brain: a version chooses it
            raise ValueError(f"{value} cannot be a default: name it in an agent version")
        return value


class ProvidersSettings(_Model):
    """``providers:``; one section per provider that has appliance settings (the registry's
    ``settings_section``; a test keeps the two in step)."""

    defaults: ProviderDefaults = Field(default_factory=ProviderDefaults)
    retries: int = Field(2, ge=0, le=10)
    first_byte_timeout_ms: int = Field(2000, ge=50)
    local: opt.LocalSttSettings = Field(default_factory=opt.LocalSttSettings)
    deepgram: opt.DeepgramSettings = Field(default_factory=opt.DeepgramSettings)
    anthropic: opt.AnthropicSettings = Field(default_factory=opt.AnthropicSettings)
    openai: opt.OpenAISettings = Field(default_factory=opt.OpenAISettings)
    chatterbox: opt.ChatterboxSettings = Field(default_factory=opt.ChatterboxSettings)
    elevenlabs: opt.ElevenLabsSettings = Field(default_factory=opt.ElevenLabsSettings)
    cartesia: opt.CartesiaSettings = Field(default_factory=opt.CartesiaSettings)
    openai_tts: opt.OpenAITTSSettings = Field(default_factory=opt.OpenAITTSSettings)


class WebhookDeliverySettings(_Model):
    # The stop rule: a delivery is retried until this long after its event (or its redelivery).
    retry_for_s: float = Field(86_400, gt=0)
    attempts: int | None = Field(None, ge=1)  # an optional cap on top of retry_for_s
    backoff_cap_s: float = Field(3_600, gt=0)
    timeout_s: float = Field(5, gt=0)
    # Deliveries in a row that failed for good before the webhook is disabled (null: never).
    disable_after_failures: int | None = Field(100, ge=1)
    # Deliveries in flight at once (per runtime), and at most this many of one tenant's, so one
    # tenant's slow or silent receiver cannot hold every slot and delay the others' events.
    concurrency: int = Field(16, ge=1, le=256)
    per_tenant: int = Field(4, ge=1, le=256)


class NatsSettings(_Model):
    """NATS JetStream for events across instances; an empty url keeps the in-process fan-out."""

    url: str = ""
    stream: str = Field("VOICECTL", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    subject_prefix: str = Field("voicectl", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    max_age_s: int = Field(3600, ge=60, le=30 * 86_400)  # how long the stream keeps an event
    # How long an instance waits for the peer holding a call to answer a control request (then 504).
    request_timeout_s: float = Field(5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value and (urlparse(value).scheme not in ("nats", "tls") or not urlparse(value).hostname):
            raise ValueError("empty, or a NATS URL such as nats://127.0.0.1:4222")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.url)


class EventsSettings(_Model):
    webhooks: WebhookDeliverySettings = Field(default_factory=WebhookDeliverySettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)


class RecordingS3Settings(_Model):
    """Uploads to a tenant's S3-compatible storage (tenants with an ``s3`` credential)."""

    attempts: int = Field(4, ge=1, le=20)
    backoff_s: float = Field(1.0, gt=0, le=60)
    attempt_timeout_s: float = Field(120.0, gt=0, le=3600)
    connect_timeout_s: float = Field(5.0, gt=0, le=60)


class RecordingSettings(_Model):
    dir: str = "recordings"
    s3: RecordingS3Settings = Field(default_factory=RecordingS3Settings)


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class EgressSettings(_Model):
    """Where tenants' URLs may send the runtime (runtime.egress.policy): never to this box or a
    private network, except what ``allow`` lists."""

    allow: list[str] = Field(default_factory=list)
    _policy: EgressPolicy = PrivateAttr(default_factory=EgressPolicy)

    @field_validator("allow")
    @classmethod
    def _check_allow(cls, value: list[str]) -> list[str]:
        return [format_allow_entry(parse_allow_entry(entry)) for entry in value]

    def model_post_init(self, context: Any) -> None:
        self._policy = EgressPolicy.from_entries(self.allow)

    @property
    def policy(self) -> EgressPolicy:
        return self._policy


class SecuritySettings(_Model):
    egress: EgressSettings = Field(default_factory=EgressSettings)


class CallbackSettings(_Model):
    """The callback queue (runtime.control.callbacks): its scheduler tick, retries, a bound per tenant."""

    check_interval_s: float = Field(60.0, ge=1, le=3600)  # overdue tasks and auto-dial, checked this often
    max_attempts: int = Field(3, ge=1, le=20)  # calls auto-dial places for one task
    retry_after_s: int = Field(1800, ge=60, le=7 * 86_400)  # a task whose call was not answered: tried again then
    max_active_per_tenant: int = Field(10_000, ge=1, le=1_000_000)  # open, scheduled or in progress at once


class AnalysisSettings(_Model):
    """The post-call summary through the tenant's LLM (runtime.pipeline.call_analysis)."""

    enabled: bool = True
    timeout_s: float = Field(30.0, gt=0, le=300)
    max_transcript_chars: int = Field(12_000, ge=500, le=200_000)
    max_tokens: int = Field(600, ge=100, le=4000)
    concurrency: int = Field(4, ge=1, le=64)  # analyses in flight per runtime
    max_pending: int = Field(1000, ge=1, le=100_000)  # waiting beyond this: skipped (recorded as such)
class EvaluationSettings(_Model):
    """Synthetic-call evaluations (runtime.evals): what one run may place."""

    max_calls: int = Field(100, ge=1, le=10_000)  # calls of one run: scenarios x --calls
    max_concurrency: int = Field(4, ge=1, le=100)  # calls of one run at once (also bounded by the tenant's limit)
    max_running_per_tenant: int = Field(1, ge=1, le=100)  # runs started through the API at once, per tenant


class RolloutSettings(_Model):
    check_interval_s: float = Field(30.0, ge=0.05, le=3600)  # how often running rollouts' stop conditions are checked


class Settings(_Model):
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    telephony: TelephonySettings = Field(default_factory=TelephonySettings)
    providers: ProvidersSettings = Field(default_factory=ProvidersSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    callbacks: CallbackSettings = Field(default_factory=CallbackSettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    evaluations: EvaluationSettings = Field(default_factory=EvaluationSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    # Folder of the config file: relative paths resolve against it. Not a YAML key.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def database_url(self) -> str:
        """database.url with a relative SQLite path made absolute."""
        url = self.database.url
        if url.startswith("sqlite:///"):
            return "sqlite:///" + str(self.resolve_path(url[len("sqlite:///"):]))
        return url

    @property
    def cluster_mode(self) -> bool:
        """Several runtimes share one Postgres: turned on by events.nats.url."""
        return self.events.nats.enabled

    def instance_id(self, port: int) -> str:
        import socket

        return self.server.instance_id or f"{socket.gethostname()}:{port}"

    @property
    def master_key_path(self) -> Path:
        return self.resolve_path(self.secrets.master_key_file)

    @property
    def keyring_path(self) -> Path:
        return self.resolve_path(self.secrets.keyring_file)

    @property
    def recording_dir(self) -> Path:
        return self.resolve_path(self.recording.dir)


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config PATH, else $VOICECTL_CONFIG, else ./config.yaml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("VOICECTL_CONFIG")
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG_NAME)


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """VOICECTL_SECTION__KEY[__SUBKEY]=value -> nested dict; values parse as YAML scalars."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if len(parts) < 2:
            raise ConfigError(
                f"environment variable {name}: expected VOICECTL_<SECTION>__<KEY>, e.g. VOICECTL_DATABASE__URL"
            )
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name}: conflicts with another override")
        node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key (check the spelling against config.example.yaml)"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: got {error.get('input')!r}; expected: {message}"


def build_settings(data: dict[str, Any], base_dir: Path, source: str = "config") -> Settings:
    # Merge over the full defaults, so a partial section (e.g. only
    # limits.rate_limits.runtime.read.limit) keeps the defaults of its siblings.
    defaults = Settings(base_dir=base_dir).model_dump()
    if "base_dir" in data:  # a field, but not a key: the config file's folder decides it
        raise ConfigError(f"invalid configuration in {source}:\n  base_dir: unknown key (not a config key)")
    try:
        return Settings.model_validate({**_merge(defaults, data), "base_dir": base_dir})
    except ValidationError as exc:
        lines = "\n".join("  " + _describe(e) for e in exc.errors())
        raise ConfigError(f"invalid configuration in {source}:\n{lines}") from None


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
    must_exist: bool = True,
) -> Settings:
    """Load the config file (see find_config_path) and apply environment overrides."""
    config_path = find_config_path(path)
    data: dict[str, Any] = {}
    if config_path.exists():
        try:
            loaded = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: expected a mapping of sections at the top level")
        data = loaded
    elif must_exist:
        raise ConfigError(
            f"config file not found: {config_path} (run `voicectl init` to create one, "
            "or pass --config PATH / set VOICECTL_CONFIG)"
        )
    data = _merge(data, env_overrides(environ))
    return build_settings(data, config_path.resolve().parent, source=str(config_path))
