"""Forward-only migrations in portable SQL.

Type words in braces go through a small per-dialect map. Timestamps are
fixed-width ISO-8601 UTC text on both backends (see runtime.ids.now_iso), so
values are byte-identical across backends and sort as times. JSON is plain
``JSON`` on PostgreSQL, not ``JSONB``: it keeps the document as written (key
order, number forms), so JSON columns also read back identically on both.
"""

from __future__ import annotations

from dataclasses import dataclass

TYPE_MAP = {
    "sqlite": {"json": "TEXT", "bool": "INTEGER", "real": "REAL", "bigint": "INTEGER", "ts": "TEXT"},
    "postgres": {"json": "JSON", "bool": "BOOLEAN", "real": "DOUBLE PRECISION", "bigint": "BIGINT", "ts": "TEXT"},
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]

    def render(self, dialect: str) -> list[str]:
        types = TYPE_MAP[dialect]
        return [stmt.format(**types) for stmt in self.statements]


_T = "tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE"

INITIAL = Migration(
    1,
    "initial schema",
    (
        """CREATE TABLE tenants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            timezone TEXT NOT NULL,
            max_concurrent_calls INTEGER NOT NULL,
            max_call_duration_s INTEGER NOT NULL,
            recording_enabled {bool} NOT NULL,
            retention_days INTEGER NOT NULL,
            metadata {json} NOT NULL,
            created_at {ts} NOT NULL,
            updated_at {ts} NOT NULL
        )""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            tenant_id TEXT REFERENCES tenants(id) ON DELETE CASCADE,
            scope TEXT NOT NULL,
            name TEXT,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            last4 TEXT NOT NULL,
            created_at {ts} NOT NULL,
            last_used_at {ts},
            revoked_at {ts}
        )""",
        "CREATE INDEX api_keys_tenant ON api_keys (tenant_id)",
        f"""CREATE TABLE voice_profiles (
            id TEXT PRIMARY KEY,
            {_T},
            name TEXT NOT NULL,
            provider TEXT NOT NULL,
            voice_id TEXT NOT NULL,
            language TEXT NOT NULL,
            speed {{real}} NOT NULL,
            created_at {{ts}} NOT NULL,
            updated_at {{ts}} NOT NULL,
            UNIQUE (tenant_id, name)
        )""",
        f"""CREATE TABLE agents (
            id TEXT PRIMARY KEY,
            {_T},
            name TEXT NOT NULL,
            active_version INTEGER,
            latest_version INTEGER NOT NULL,
            created_at {{ts}} NOT NULL,
            updated_at {{ts}} NOT NULL,
            UNIQUE (tenant_id, name)
        )""",
        f"""CREATE TABLE agent_versions (
            id TEXT PRIMARY KEY,
            {_T},
            agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            config {{json}} NOT NULL,
            note TEXT,
            created_at {{ts}} NOT NULL,
            promoted_at {{ts}},
            UNIQUE (agent_id, version)
        )""",
        f"""CREATE TABLE phone_numbers (
            id TEXT PRIMARY KEY,
            {_T},
            e164 TEXT NOT NULL UNIQUE,
            provider TEXT NOT NULL,
            agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
            pinned_version INTEGER,
            label TEXT,
            created_at {{ts}} NOT NULL,
            updated_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX phone_numbers_tenant ON phone_numbers (tenant_id)",
        f"""CREATE TABLE credentials (
            id TEXT PRIMARY KEY,
            {_T},
            provider TEXT NOT NULL,
            fields {{json}} NOT NULL,
            secret_ref TEXT,
            created_at {{ts}} NOT NULL,
            updated_at {{ts}} NOT NULL,
            UNIQUE (tenant_id, provider)
        )""",
        f"""CREATE TABLE webhook_configs (
            id TEXT PRIMARY KEY,
            {_T},
            url TEXT NOT NULL,
            events {{json}} NOT NULL,
            active {{bool}} NOT NULL,
            description TEXT,
            secret_ref TEXT NOT NULL,
            created_at {{ts}} NOT NULL,
            updated_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX webhook_configs_tenant ON webhook_configs (tenant_id)",
        f"""CREATE TABLE voice_calls (
            id TEXT PRIMARY KEY,
            {_T},
            agent_id TEXT,
            agent_version INTEGER,
            number_id TEXT,
            provider TEXT NOT NULL,
            provider_call_id TEXT,
            direction TEXT NOT NULL,
            from_number TEXT,
            to_number TEXT,
            status TEXT NOT NULL,
            end_reason TEXT,
            hangup_by TEXT,
            started_at {{ts}} NOT NULL,
            connected_at {{ts}},
            ended_at {{ts}},
            duration_ms {{bigint}},
            summary {{json}} NOT NULL,
            latency {{json}} NOT NULL,
            metadata {{json}} NOT NULL,
            trace_id TEXT NOT NULL,
            created_at {{ts}} NOT NULL,
            updated_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX voice_calls_tenant_created ON voice_calls (tenant_id, created_at)",
        "CREATE INDEX voice_calls_provider_call ON voice_calls (provider, provider_call_id)",
        "CREATE INDEX voice_calls_status ON voice_calls (status)",
        f"""CREATE TABLE transcripts (
            id TEXT PRIMARY KEY,
            {_T},
            call_id TEXT NOT NULL REFERENCES voice_calls(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL,
            text TEXT NOT NULL,
            start_ms {{bigint}},
            end_ms {{bigint}},
            interrupted {{bool}} NOT NULL,
            created_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX transcripts_call ON transcripts (call_id, seq)",
        f"""CREATE TABLE call_events (
            id TEXT PRIMARY KEY,
            {_T},
            call_id TEXT REFERENCES voice_calls(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            topic TEXT NOT NULL,
            payload {{json}} NOT NULL,
            trace_id TEXT,
            created_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX call_events_call ON call_events (call_id, seq)",
        "CREATE INDEX call_events_tenant_created ON call_events (tenant_id, created_at)",
        f"""CREATE TABLE tool_calls (
            id TEXT PRIMARY KEY,
            {_T},
            call_id TEXT NOT NULL REFERENCES voice_calls(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            arguments {{json}} NOT NULL,
            result {{json}},
            status TEXT NOT NULL,
            latency_ms {{bigint}},
            created_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX tool_calls_call ON tool_calls (call_id)",
        f"""CREATE TABLE recordings (
            id TEXT PRIMARY KEY,
            {_T},
            call_id TEXT NOT NULL REFERENCES voice_calls(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            storage TEXT NOT NULL,
            uri TEXT NOT NULL,
            format TEXT NOT NULL,
            duration_ms {{bigint}},
            size_bytes {{bigint}},
            created_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX recordings_call ON recordings (call_id)",
        f"""CREATE TABLE webhook_deliveries (
            id TEXT PRIMARY KEY,
            {_T},
            webhook_id TEXT NOT NULL REFERENCES webhook_configs(id) ON DELETE CASCADE,
            event_id TEXT NOT NULL,
            topic TEXT NOT NULL,
            payload {{json}} NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            next_attempt_at {{ts}},
            last_status_code INTEGER,
            last_error TEXT,
            created_at {{ts}} NOT NULL,
            updated_at {{ts}} NOT NULL,
            delivered_at {{ts}},
            UNIQUE (webhook_id, event_id)
        )""",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at)",
        f"""CREATE TABLE evaluations (
            id TEXT PRIMARY KEY,
            {_T},
            agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
            agent_version INTEGER NOT NULL,
            call_id TEXT REFERENCES voice_calls(id) ON DELETE SET NULL,
            status TEXT NOT NULL,
            score {{real}},
            rubric {{json}} NOT NULL,
            notes TEXT,
            created_at {{ts}} NOT NULL
        )""",
        f"""CREATE TABLE callback_tasks (
            id TEXT PRIMARY KEY,
            {_T},
            call_id TEXT REFERENCES voice_calls(id) ON DELETE SET NULL,
            phone TEXT,
            reason TEXT,
            status TEXT NOT NULL,
            due_at {{ts}},
            disposition TEXT,
            notes TEXT,
            created_at {{ts}} NOT NULL,
            updated_at {{ts}} NOT NULL
        )""",
    ),
)

DELIVERY_ATTEMPTS = Migration(
    2,
    "webhook delivery attempts",
    (
        f"""CREATE TABLE webhook_delivery_attempts (
            id TEXT PRIMARY KEY,
            {_T},
            delivery_id TEXT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
            attempt INTEGER NOT NULL,
            status_code INTEGER,
            error TEXT,
            duration_ms {{bigint}} NOT NULL,
            created_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX webhook_delivery_attempts_delivery ON webhook_delivery_attempts (delivery_id, attempt)",
        "CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, created_at)",
    ),
)

# The sample booking pack (runtime.tools.booking). A booking holds one of a slot's tables: the
# unique (tenant, day, slot, table_no) is what stops two concurrent bookings taking the same one.
# call_id is SET NULL: retention purging a call keeps the booking it made.
BOOKINGS_ORDERS = Migration(
    3,
    "sample booking pack",
    (
        f"""CREATE TABLE bookings (
            id TEXT PRIMARY KEY,
            {_T},
            call_id TEXT REFERENCES voice_calls(id) ON DELETE SET NULL,
            reference TEXT NOT NULL,
            day TEXT NOT NULL,
            time TEXT NOT NULL,
            slot TEXT NOT NULL,
            table_no INTEGER NOT NULL,
            party_size INTEGER NOT NULL,
            name TEXT,
            phone TEXT,
            status TEXT NOT NULL,
            created_at {{ts}} NOT NULL,
            UNIQUE (tenant_id, reference),
            UNIQUE (tenant_id, day, slot, table_no)
        )""",
        f"""CREATE TABLE orders (
            id TEXT PRIMARY KEY,
            {_T},
            call_id TEXT REFERENCES voice_calls(id) ON DELETE SET NULL,
            reference TEXT NOT NULL,
            items {{json}} NOT NULL,
            total_cents INTEGER NOT NULL,
            currency TEXT NOT NULL,
            pickup_time TEXT,
            name TEXT,
            phone TEXT,
            status TEXT NOT NULL,
            created_at {{ts}} NOT NULL,
            UNIQUE (tenant_id, reference)
        )""",
        "CREATE INDEX orders_tenant_created ON orders (tenant_id, created_at)",
    ),
)

# GoTo Connect notification channels (runtime.telephony.goto.channels). The webhook path token is
# kept only as its SHA-256 (like API keys): the URL registered with GoTo is its one copy. A tenant
# may briefly hold two rows while a channel is re-registered; the old one goes once the new is active.
GOTO_CHANNELS = Migration(
    4,
    "goto notification channels",
    (
        f"""CREATE TABLE goto_channels (
            id TEXT PRIMARY KEY,
            {_T},
            account_key TEXT NOT NULL,
            nickname TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            channel_id TEXT,
            status TEXT NOT NULL,
            subscription {{json}} NOT NULL,
            created_at {{ts}} NOT NULL,
            updated_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX goto_channels_tenant ON goto_channels (tenant_id)",
    ),
)

# Recordings uploaded to the tenant's S3-compatible storage (runtime.recording.upload). upload_status
# is NULL for tenants without an ``s3`` credential (local files, the default), else pending -> uploaded
# (storage becomes 's3', uri 's3://<bucket>/<key>') or failed (the file stays local).
RECORDING_UPLOADS = Migration(
    5,
    "recording uploads",
    (
        "ALTER TABLE recordings ADD COLUMN upload_status TEXT",
        "ALTER TABLE recordings ADD COLUMN upload_attempts INTEGER",
        "ALTER TABLE recordings ADD COLUMN upload_error TEXT",
        "ALTER TABLE recordings ADD COLUMN uploaded_at {ts}",
        "CREATE INDEX recordings_upload_status ON recordings (upload_status)",
    ),
)

# LiveKit room egresses by LiveKit's egress id (runtime.telephony.livekit): egress_ended can come
# long after its call, or after a restart, and must still find the call its files belong to.
LIVEKIT_EGRESSES = Migration(
    6,
    "livekit egresses",
    (
        f"""CREATE TABLE livekit_egresses (
            id TEXT PRIMARY KEY,
            {_T},
            call_id TEXT NOT NULL,
            created_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX livekit_egresses_call ON livekit_egresses (tenant_id, call_id)",
    ),
)

# Webhook delivery that outlives an outage (runtime.events.delivery). A config's status is 'active' or
# 'disabled' (after consecutive_failures deliveries in a row failed for good; its new deliveries are
# then 'held' until it is switched on). A delivery's retries run from retry_from (NULL: created_at;
# a redelivery restarts them), and attempts_before counts the attempts made before that.
WEBHOOK_STATUS = Migration(
    7,
    "webhook status and redelivery",
    (
        "ALTER TABLE webhook_configs ADD COLUMN status TEXT NOT NULL DEFAULT 'active'",
        "ALTER TABLE webhook_configs ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE webhook_configs ADD COLUMN disabled_at {ts}",
        "ALTER TABLE webhook_deliveries ADD COLUMN retry_from {ts}",
        "ALTER TABLE webhook_deliveries ADD COLUMN attempts_before INTEGER NOT NULL DEFAULT 0",
    ),
)

# GoTo web-call devices (runtime.telephony.goto.channels): GoTo offers web calls to a device
# registered on the tenant's channel with the extension the GoTo admin routes the number to.
GOTO_DEVICES = Migration(
    8,
    "goto web-call devices",
    (
        "ALTER TABLE goto_channels ADD COLUMN device_id TEXT",
        "ALTER TABLE goto_channels ADD COLUMN extension TEXT",
    ),
)

# Outbound calls (runtime.calls.outbound): a call's variables (templated into its prompt and
# greeting, NULL for inbound calls), and each tenant's toll-fraud bounds: the prefixes its calls may
# dial (NULL: the country codes of its own numbers) and how many it may place per day.
OUTBOUND_CALLS = Migration(
    9,
    "outbound calls",
    (
        "ALTER TABLE voice_calls ADD COLUMN variables {json}",
        "ALTER TABLE tenants ADD COLUMN outbound_allowed_prefixes {json}",
        "ALTER TABLE tenants ADD COLUMN max_outbound_per_day INTEGER NOT NULL DEFAULT 100",
        "CREATE INDEX voice_calls_tenant_direction ON voice_calls (tenant_id, direction, created_at)",
    ),
)

# Evaluations, gated promotion and percentage rollout (runtime.evals, runtime.rollout):
# - eval_suites: a tenant's stored scenario suites (the YAML as written, the WAV files it plays as base64,
#   its sha256; one row per content).
# - evaluations (from migration 1, unused until now): one row per run, with the suite it ran, the
#   score, whether every scenario passed, the per-scenario results and the optional judge's rubric.
# - eval_pins: a synthetic call's single-use pin. The secret travels in the voice webhook's URL; only
#   its SHA-256 is kept, and the row says which agent version the call is pinned to.
# - the gate: tenants' (and, overriding them, agents') required suite and minimum score; who promoted a
#   version, forced or not, and why.
# - agent_rollouts: a candidate version answering a percentage of an agent's new calls, its stop
#   conditions and how it ended; at most one running per agent. Calls in a rollout name it.
EVALUATIONS_ROLLOUT = Migration(
    10,
    "evaluations, gated promotion and rollout",
    (
        f"""CREATE TABLE eval_suites (
            id TEXT PRIMARY KEY,
            {_T},
            name TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            source TEXT NOT NULL,
            assets {{json}},
            scenarios INTEGER NOT NULL,
            created_at {{ts}} NOT NULL,
            UNIQUE (tenant_id, sha256)
        )""",
        "ALTER TABLE evaluations ADD COLUMN suite_id TEXT",
        "ALTER TABLE evaluations ADD COLUMN suite_name TEXT",
        "ALTER TABLE evaluations ADD COLUMN suite_sha256 TEXT",
        "ALTER TABLE evaluations ADD COLUMN passed {bool}",
        "ALTER TABLE evaluations ADD COLUMN results {json}",
        "ALTER TABLE evaluations ADD COLUMN calls INTEGER",
        "ALTER TABLE evaluations ADD COLUMN concurrency INTEGER",
        "ALTER TABLE evaluations ADD COLUMN error TEXT",
        "ALTER TABLE evaluations ADD COLUMN started_by TEXT",
        "ALTER TABLE evaluations ADD COLUMN finished_at {ts}",
        "CREATE INDEX evaluations_agent ON evaluations (tenant_id, agent_id, created_at)",
        f"""CREATE TABLE eval_pins (
            id TEXT PRIMARY KEY,
            {_T},
            evaluation_id TEXT NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
            agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
            agent_version INTEGER NOT NULL,
            scenario TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            expires_at {{ts}} NOT NULL,
            used_at {{ts}},
            call_id TEXT,
            created_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX eval_pins_evaluation ON eval_pins (evaluation_id)",
        "ALTER TABLE tenants ADD COLUMN rollout_required_suite_id TEXT",
        "ALTER TABLE tenants ADD COLUMN rollout_min_eval_score {real}",
        "ALTER TABLE agents ADD COLUMN rollout_required_suite_id TEXT",
        "ALTER TABLE agents ADD COLUMN rollout_min_eval_score {real}",
        "ALTER TABLE agent_versions ADD COLUMN promoted_by TEXT",
        "ALTER TABLE agent_versions ADD COLUMN promote_forced {bool}",
        "ALTER TABLE agent_versions ADD COLUMN promote_reason TEXT",
        f"""CREATE TABLE agent_rollouts (
            id TEXT PRIMARY KEY,
            {_T},
            agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
            base_version INTEGER NOT NULL,
            candidate_version INTEGER NOT NULL,
            percent INTEGER NOT NULL,
            stop_conditions {{json}} NOT NULL,
            auto_promote_after INTEGER,
            status TEXT NOT NULL,
            started_by TEXT,
            started_at {{ts}} NOT NULL,
            ended_at {{ts}},
            end_reason TEXT,
            breach {{json}},
            checked_at {{ts}},
            created_at {{ts}} NOT NULL,
            updated_at {{ts}} NOT NULL
        )""",
        "CREATE INDEX agent_rollouts_agent ON agent_rollouts (tenant_id, agent_id, created_at)",
        "CREATE UNIQUE INDEX agent_rollouts_running ON agent_rollouts (agent_id) WHERE status = 'running'",
        "ALTER TABLE voice_calls ADD COLUMN rollout_id TEXT",
        "CREATE INDEX voice_calls_rollout ON voice_calls (rollout_id, agent_version)",
    ),
)

# Callback tasks and the operations record (runtime.control.callbacks, runtime.calls.call_record).
# callback_tasks (unused until now) gets the fields of a human follow-up queue: its number (renamed
# from phone), where it came from, when it is wanted (scheduled_at), who has it, the calls placed
# for it, and when callback.overdue fired (once). Each tenant sets its SLA and whether due tasks are
# dialled by themselves. A call row keeps its outcome, who it was transferred to, and the engines
# and voice it really used (after any failover). Number 11: 10 is the evaluations migration.
CALLBACKS_AND_RECORD = Migration(
    11,
    "callback tasks and the operations record",
    (
        "ALTER TABLE callback_tasks RENAME COLUMN phone TO number",
        "ALTER TABLE callback_tasks ADD COLUMN agent_id TEXT",
        "ALTER TABLE callback_tasks ADD COLUMN source TEXT NOT NULL DEFAULT 'tool'",
        "ALTER TABLE callback_tasks ADD COLUMN scheduled_at {ts}",
        "ALTER TABLE callback_tasks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE callback_tasks ADD COLUMN assignee TEXT",
        "ALTER TABLE callback_tasks ADD COLUMN last_call_id TEXT",
        "ALTER TABLE callback_tasks ADD COLUMN overdue_at {ts}",
        "ALTER TABLE callback_tasks ADD COLUMN completed_at {ts}",
        "CREATE INDEX callback_tasks_tenant_due ON callback_tasks (tenant_id, status, due_at)",
        "CREATE INDEX callback_tasks_due ON callback_tasks (status, due_at)",
        # One task in the queue per number: a caller who calls three times is called back once.
        "CREATE UNIQUE INDEX callback_tasks_active_number ON callback_tasks (tenant_id, number) "
        "WHERE status IN ('open', 'scheduled', 'in_progress')",
        "CREATE INDEX callback_tasks_call ON callback_tasks (call_id)",
        "ALTER TABLE tenants ADD COLUMN callback_sla_minutes INTEGER NOT NULL DEFAULT 240",
        "ALTER TABLE tenants ADD COLUMN callback_auto_dial {bool} NOT NULL DEFAULT FALSE",
        "ALTER TABLE voice_calls ADD COLUMN outcome TEXT",
        "ALTER TABLE voice_calls ADD COLUMN escalated_to TEXT",
        "ALTER TABLE voice_calls ADD COLUMN stt_provider TEXT",
        "ALTER TABLE voice_calls ADD COLUMN llm_provider TEXT",
        "ALTER TABLE voice_calls ADD COLUMN llm_model TEXT",
        "ALTER TABLE voice_calls ADD COLUMN tts_provider TEXT",
        "ALTER TABLE voice_calls ADD COLUMN tts_voice TEXT",
        "CREATE INDEX bookings_tenant_created ON bookings (tenant_id, created_at)",
    ),
)

# Several runtimes on one database (runtime.cluster.instances): each registers an ``instances`` row
# and renews its lease (``expires_at``, its heartbeat plus its ``lease_s``) with what it carries; a
# survivor claims a row whose lease ran out (``reaped_by``, once) and fails its live calls. A call
# names the instance holding its media (NULL: a row from before this migration). The partial index
# keeps the admission count (a tenant's live calls, or all of them) proportional to live calls.
CLUSTER_INSTANCES = Migration(
    12,
    "instances, their leases and their calls",
    (
        """CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            port INTEGER,
            pid INTEGER NOT NULL,
            version TEXT NOT NULL,
            started_at {ts} NOT NULL,
            heartbeat_at {ts} NOT NULL,
            expires_at {ts} NOT NULL,
            lease_s {real} NOT NULL,
            live_calls INTEGER NOT NULL DEFAULT 0,
            local_calls INTEGER NOT NULL DEFAULT 0,
            max_calls INTEGER,
            load {real} NOT NULL DEFAULT 0,
            accepting {bool} NOT NULL DEFAULT TRUE,
            reaped_by TEXT,
            reaped_at {ts}
        )""",
        "CREATE INDEX instances_expires ON instances (expires_at)",
        "ALTER TABLE voice_calls ADD COLUMN instance_id TEXT",
        # The instance running an evaluation started through the API: only it (restarting) or a
        # survivor of its loss fails the run, not any instance that starts.
        "ALTER TABLE evaluations ADD COLUMN instance_id TEXT",
        "CREATE INDEX voice_calls_live ON voice_calls (tenant_id, instance_id) "
        "WHERE status IN ('queued', 'dialing', 'ringing', 'connected', 'transferring')",
    ),
)

# Several instances on one PostgreSQL (cluster mode, runtime.cluster). stream_tokens: the media
# stream tokens issued with the TwiML, so the instance Twilio's media socket reaches can check one
# (and take the call over) whichever instance answered the voice webhook; only a keyed digest of
# each token is kept, and a token is spent by one UPDATE (single use across instances). The unique
# index on Twilio CallSids makes a retried voice webhook that reaches another instance find the
# call instead of opening a second one (only Twilio's ids are unique per call: LiveKit and GoTo
# ids may name several calls). Number 13: 12 is the cluster's instances.
CLUSTER_KEYS = Migration(
    13,
    "shared stream tokens and one call per Twilio CallSid",
    (
        """CREATE TABLE stream_tokens (
            token_hash TEXT PRIMARY KEY,
            call_id TEXT NOT NULL,
            issued_by TEXT NOT NULL,
            expires_at {ts} NOT NULL,
            used_at {ts},
            used_by TEXT,
            created_at {ts} NOT NULL
        )""",
        "CREATE INDEX stream_tokens_call ON stream_tokens (call_id)",
        "CREATE INDEX stream_tokens_expires ON stream_tokens (expires_at)",
        # Per tenant: Twilio's CallSids are unique anyway, and a tenant's webhook (signed with its own
        # token) can never name, and so block, another tenant's call.
        "CREATE UNIQUE INDEX voice_calls_twilio_call_sid ON voice_calls (tenant_id, provider, provider_call_id) "
        "WHERE provider = 'twilio'",
    ),
)

# Secret values sealed with a key derived from the master key (secrets.backend: database,
# runtime.secrets_database): what several runtimes on one database share. Number 14: 12 and 13 are
# the cluster's instances and stream tokens.
SECRET_VALUES = Migration(
    14,
    "secret values in the database",
    (
        """CREATE TABLE secret_values (
            ref TEXT PRIMARY KEY,
            sealed TEXT NOT NULL,
            updated_at {ts} NOT NULL
        )""",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (INITIAL, DELIVERY_ATTEMPTS, BOOKINGS_ORDERS, GOTO_CHANNELS, RECORDING_UPLOADS,
                                     LIVEKIT_EGRESSES, WEBHOOK_STATUS, GOTO_DEVICES, OUTBOUND_CALLS,
                                     EVALUATIONS_ROLLOUT, CALLBACKS_AND_RECORD, CLUSTER_INSTANCES, CLUSTER_KEYS,
                                     SECRET_VALUES)
LATEST_VERSION = MIGRATIONS[-1].version
