"""Store: the tables of the product over one Database, plus the few special queries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import cached_property
from typing import Any

from runtime.store.base import Database, Executor, Params, Row
from runtime.store.cluster_rows import ClusterRows
from runtime.store.tables import Table, TableSpec, committed, decode, encode, wrote

TENANTS = TableSpec(
    "tenants",
    ("id", "name", "status", "timezone", "max_concurrent_calls", "max_call_duration_s", "recording_enabled",
     "retention_days", "metadata", "created_at", "updated_at", "outbound_allowed_prefixes", "max_outbound_per_day",
     "callback_sla_minutes", "callback_auto_dial",
     "rollout_required_suite_id", "rollout_min_eval_score"),
    json_columns=frozenset({"metadata", "outbound_allowed_prefixes"}),
    bool_columns=frozenset({"recording_enabled", "callback_auto_dial"}),
    tenant_column=None,
)
API_KEYS = TableSpec(
    "api_keys",
    ("id", "tenant_id", "scope", "name", "key_hash", "prefix", "last4", "created_at", "last_used_at", "revoked_at"),
)
VOICE_PROFILES = TableSpec(
    "voice_profiles",
    ("id", "tenant_id", "name", "provider", "voice_id", "language", "speed", "created_at", "updated_at"),
)
AGENTS = TableSpec(
    "agents", ("id", "tenant_id", "name", "active_version", "latest_version", "created_at", "updated_at",
               "rollout_required_suite_id", "rollout_min_eval_score")
)
AGENT_VERSIONS = TableSpec(
    "agent_versions",
    ("id", "tenant_id", "agent_id", "version", "status", "config", "note", "created_at", "promoted_at",
     "promoted_by", "promote_forced", "promote_reason"),
    json_columns=frozenset({"config"}),
    bool_columns=frozenset({"promote_forced"}),
    order_by="version",
)
PHONE_NUMBERS = TableSpec(
    "phone_numbers",
    ("id", "tenant_id", "e164", "provider", "agent_id", "pinned_version", "label", "created_at", "updated_at"),
)
CREDENTIALS = TableSpec(
    "credentials",
    ("id", "tenant_id", "provider", "fields", "secret_ref", "created_at", "updated_at"),
    json_columns=frozenset({"fields"}),
    order_by="provider",
)
WEBHOOK_CONFIGS = TableSpec(
    "webhook_configs",
    ("id", "tenant_id", "url", "events", "active", "description", "secret_ref", "created_at", "updated_at",
     "status", "consecutive_failures", "disabled_at"),
    json_columns=frozenset({"events"}),
    bool_columns=frozenset({"active"}),
)
VOICE_CALLS = TableSpec(
    "voice_calls",
    ("id", "tenant_id", "agent_id", "agent_version", "number_id", "provider", "provider_call_id", "direction",
     "from_number", "to_number", "status", "end_reason", "hangup_by", "started_at", "connected_at", "ended_at",
     "duration_ms", "summary", "latency", "metadata", "trace_id", "created_at", "updated_at", "variables",
     "outcome", "escalated_to", "stt_provider", "llm_provider", "llm_model", "tts_provider", "tts_voice",
     "rollout_id", "instance_id"),
    json_columns=frozenset({"summary", "latency", "metadata", "variables"}),
)
TRANSCRIPTS = TableSpec(
    "transcripts",
    ("id", "tenant_id", "call_id", "seq", "role", "text", "start_ms", "end_ms", "interrupted", "created_at"),
    bool_columns=frozenset({"interrupted"}),
    order_by="seq",
)
CALL_EVENTS = TableSpec(
    "call_events",
    ("id", "tenant_id", "call_id", "seq", "topic", "payload", "trace_id", "created_at"),
    json_columns=frozenset({"payload"}),
    order_by="created_at, seq",
)
TOOL_CALLS = TableSpec(
    "tool_calls",
    ("id", "tenant_id", "call_id", "name", "arguments", "result", "status", "latency_ms", "created_at"),
    json_columns=frozenset({"arguments", "result"}),
)
RECORDINGS = TableSpec(
    "recordings",
    ("id", "tenant_id", "call_id", "kind", "storage", "uri", "format", "duration_ms", "size_bytes", "created_at",
     "upload_status", "upload_attempts", "upload_error", "uploaded_at"),
)
WEBHOOK_DELIVERIES = TableSpec(
    "webhook_deliveries",
    ("id", "tenant_id", "webhook_id", "event_id", "topic", "payload", "status", "attempts", "next_attempt_at",
     "last_status_code", "last_error", "created_at", "updated_at", "delivered_at", "retry_from", "attempts_before"),
    json_columns=frozenset({"payload"}),
)
WEBHOOK_DELIVERY_ATTEMPTS = TableSpec(
    "webhook_delivery_attempts",
    ("id", "tenant_id", "delivery_id", "attempt", "status_code", "error", "duration_ms", "created_at"),
    order_by="attempt",
)
EVALUATIONS = TableSpec(
    "evaluations",
    ("id", "tenant_id", "agent_id", "agent_version", "call_id", "status", "score", "rubric", "notes", "created_at",
     "suite_id", "suite_name", "suite_sha256", "passed", "results", "calls", "concurrency", "error", "started_by",
     "finished_at", "instance_id"),
    json_columns=frozenset({"rubric", "results"}),
    bool_columns=frozenset({"passed"}),
)
EVAL_SUITES = TableSpec(
    "eval_suites", ("id", "tenant_id", "name", "sha256", "source", "assets", "scenarios", "created_at"),
    json_columns=frozenset({"assets"}),
)
EVAL_PINS = TableSpec(
    "eval_pins",
    ("id", "tenant_id", "evaluation_id", "agent_id", "agent_version", "scenario", "secret_hash", "expires_at",
     "used_at", "call_id", "created_at"),
)
AGENT_ROLLOUTS = TableSpec(
    "agent_rollouts",
    ("id", "tenant_id", "agent_id", "base_version", "candidate_version", "percent", "stop_conditions",
     "auto_promote_after", "status", "started_by", "started_at", "ended_at", "end_reason", "breach", "checked_at",
     "created_at", "updated_at"),
    json_columns=frozenset({"stop_conditions", "breach"}),
)
CALLBACK_TASKS = TableSpec(
    "callback_tasks",
    ("id", "tenant_id", "call_id", "number", "reason", "status", "due_at", "disposition", "notes", "created_at",
     "updated_at", "agent_id", "source", "scheduled_at", "attempts", "assignee", "last_call_id", "overdue_at",
     "completed_at"),
    order_by="due_at, id",  # the queue: what is due first
)

BOOKINGS = TableSpec(
    "bookings",
    ("id", "tenant_id", "call_id", "reference", "day", "time", "slot", "table_no", "party_size", "name", "phone",
     "status", "created_at"),
)
ORDERS = TableSpec(
    "orders",
    ("id", "tenant_id", "call_id", "reference", "items", "total_cents", "currency", "pickup_time", "name", "phone",
     "status", "created_at"),
    json_columns=frozenset({"items"}),
)

GOTO_CHANNELS = TableSpec(
    "goto_channels",
    ("id", "tenant_id", "account_key", "nickname", "token_hash", "channel_id", "status", "subscription",
     "created_at", "updated_at", "device_id", "extension"),
    json_columns=frozenset({"subscription"}),
)

LIVEKIT_EGRESSES = TableSpec("livekit_egresses", ("id", "tenant_id", "call_id", "created_at"))

# Not a tenant's: the runtimes sharing this database (runtime.cluster.instances).
INSTANCES = TableSpec(
    "instances",
    ("id", "host", "port", "pid", "version", "started_at", "heartbeat_at", "expires_at", "lease_s", "live_calls",
     "local_calls", "max_calls", "load", "accepting", "reaped_by", "reaped_at"),
    bool_columns=frozenset({"accepting"}),
    tenant_column=None,
    order_by="id",
)

ALL_SPECS = (TENANTS, API_KEYS, VOICE_PROFILES, AGENTS, AGENT_VERSIONS, PHONE_NUMBERS, CREDENTIALS,
             WEBHOOK_CONFIGS, VOICE_CALLS, TRANSCRIPTS, CALL_EVENTS, TOOL_CALLS, RECORDINGS,
             WEBHOOK_DELIVERIES, WEBHOOK_DELIVERY_ATTEMPTS, EVALUATIONS, CALLBACK_TASKS, BOOKINGS, ORDERS,
             GOTO_CHANNELS, LIVEKIT_EGRESSES, EVAL_SUITES, EVAL_PINS, AGENT_ROLLOUTS, INSTANCES)


class Tables(ClusterRows):
    """Every table bound to one executor (the database, or a transaction)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    # Each table is bound on first use (a transaction or a write batch touches one or two).
    @cached_property
    def tenants(self) -> Table:
        return Table(TENANTS, self.executor)

    @cached_property
    def api_keys(self) -> Table:
        return Table(API_KEYS, self.executor)

    @cached_property
    def voice_profiles(self) -> Table:
        return Table(VOICE_PROFILES, self.executor)

    @cached_property
    def agents(self) -> Table:
        return Table(AGENTS, self.executor)

    @cached_property
    def agent_versions(self) -> Table:
        return Table(AGENT_VERSIONS, self.executor)

    @cached_property
    def phone_numbers(self) -> Table:
        return Table(PHONE_NUMBERS, self.executor)

    @cached_property
    def credentials(self) -> Table:
        return Table(CREDENTIALS, self.executor)

    @cached_property
    def webhook_configs(self) -> Table:
        return Table(WEBHOOK_CONFIGS, self.executor)

    @cached_property
    def voice_calls(self) -> Table:
        return Table(VOICE_CALLS, self.executor)

    @cached_property
    def transcripts(self) -> Table:
        return Table(TRANSCRIPTS, self.executor)

    @cached_property
    def call_events(self) -> Table:
        return Table(CALL_EVENTS, self.executor)

    @cached_property
    def tool_calls(self) -> Table:
        return Table(TOOL_CALLS, self.executor)

    @cached_property
    def recordings(self) -> Table:
        return Table(RECORDINGS, self.executor)

    @cached_property
    def webhook_deliveries(self) -> Table:
        return Table(WEBHOOK_DELIVERIES, self.executor)

    @cached_property
    def webhook_delivery_attempts(self) -> Table:
        return Table(WEBHOOK_DELIVERY_ATTEMPTS, self.executor)

    @cached_property
    def evaluations(self) -> Table:
        return Table(EVALUATIONS, self.executor)

    @cached_property
    def eval_suites(self) -> Table:
        return Table(EVAL_SUITES, self.executor)

    @cached_property
    def eval_pins(self) -> Table:
        return Table(EVAL_PINS, self.executor)

    @cached_property
    def agent_rollouts(self) -> Table:
        return Table(AGENT_ROLLOUTS, self.executor)

    @cached_property
    def callback_tasks(self) -> Table:
        return Table(CALLBACK_TASKS, self.executor)

    @cached_property
    def bookings(self) -> Table:
        return Table(BOOKINGS, self.executor)

    @cached_property
    def orders(self) -> Table:
        return Table(ORDERS, self.executor)

    @cached_property
    def goto_channels(self) -> Table:
        return Table(GOTO_CHANNELS, self.executor)

    @cached_property
    def livekit_egresses(self) -> Table:
        return Table(LIVEKIT_EGRESSES, self.executor)

    @cached_property
    def instances(self) -> Table:
        return Table(INSTANCES, self.executor)

    # Special queries: lookups that are not by id within a tenant.

    async def api_key_by_hash(self, key_hash: str) -> Row | None:
        """The key row plus its tenant's status (``tenant_status``), in one read."""
        return await self.executor.fetchone(
            "SELECT k.*, t.status AS tenant_status FROM api_keys k "
            "LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.key_hash = ?",
            (key_hash,),
        )

    async def touch_api_key(self, key_id: str, when: str) -> None:
        await self.executor.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (when, key_id))

    async def api_key_states(self, key_ids: list[str]) -> list[Row]:
        """Open sockets re-checked in one read: ``id``, ``revoked_at`` and ``tenant_status`` of each
        key that still exists."""
        if not key_ids:
            return []
        marks = ", ".join("?" for _ in key_ids)
        return await self.executor.fetchall(
            "SELECT k.id, k.revoked_at, t.status AS tenant_status FROM api_keys k "
            f"LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.id IN ({marks})",
            tuple(key_ids),
        )

    async def number_by_e164(self, e164: str) -> Row | None:
        """Routing: the dialled number decides the tenant, so this lookup is global."""
        row = await self.executor.fetchone("SELECT * FROM phone_numbers WHERE e164 = ?", (e164,))
        return decode(PHONE_NUMBERS, row) if row else None

    async def route_by_e164(self, e164: str) -> dict[str, Row | None] | None:
        """Routing in one read: the number and, scoped to the number's tenant, the tenant, the agent
        and the agent version that would answer (pinned, else active), and the agent's running
        rollout with its candidate version (unless the number is pinned). None: no such number; a
        missing tenant, agent, version or rollout is None under its key."""
        row = await self.executor.fetchone(_ROUTE_SQL, (e164,))
        if row is None:
            return None
        out: dict[str, Row | None] = {}
        for key, spec in _ROUTE_PARTS:
            prefix = f"{key}__"
            part = {col: row[prefix + col] for col in spec.columns}
            out[key] = None if part["id"] is None else decode(spec, part)
        return out

    async def twilio_tenant_by_account_sid(self, account_sid: str) -> str | None:
        """The Twilio bridge: the tenant whose twilio credential has this account SID (global lookup)."""
        rows = await self.executor.fetchall(
            "SELECT tenant_id, fields FROM credentials WHERE provider = 'twilio' ORDER BY created_at", ()
        )
        for row in rows:
            fields = decode(CREDENTIALS, dict(row))["fields"] or {}
            if fields.get("account_sid") == account_sid:
                return row["tenant_id"]
        return None

    async def count_outbound_since(self, tenant_id: str, since: str, besides: str = "") -> int:
        """The tenant's outbound calls created at or after ``since`` (its daily cap), other than ``besides``."""
        return int(await self.executor.fetchval(
            "SELECT COUNT(*) AS n FROM voice_calls WHERE tenant_id = ? AND direction = 'outbound' AND created_at >= ? "
            "AND id <> ?", (tenant_id, since, besides)) or 0)

    # The callback queue (runtime.control.callbacks): claims are global, every row keeps its tenant.

    async def count_active_callbacks(self, tenant_id: str) -> int:
        return int(await self.executor.fetchval(
            "SELECT COUNT(*) AS n FROM callback_tasks WHERE tenant_id = ? AND status IN ('open', 'scheduled', "
            "'in_progress')", (tenant_id,)) or 0)

    async def claim_overdue_callbacks(self, now: str, limit: int) -> list[Row]:
        """Open or scheduled tasks past their due time whose overdue event has not fired: marked
        (``overdue_at``) and returned, at most ``limit``, most overdue first. A row is claimed
        once, whatever runs this at the same time (the mark is re-checked on the row itself)."""
        lock = " FOR UPDATE SKIP LOCKED" if self.executor.dialect == "postgres" else ""
        rows = await self.executor.fetchall(
            "UPDATE callback_tasks SET overdue_at = ? WHERE overdue_at IS NULL AND id IN ("
            "SELECT id FROM callback_tasks WHERE status IN ('open', 'scheduled') AND due_at < ? "
            f"AND overdue_at IS NULL ORDER BY due_at, id LIMIT ?{lock}) RETURNING *",
            (now, now, limit))
        return [decode(CALLBACK_TASKS, r) for r in rows]

    async def claim_due_callbacks(self, now: str, limit: int, max_attempts: int) -> list[Row]:
        """Scheduled tasks whose time has come, of active tenants with ``callback_auto_dial`` on,
        tried fewer than ``max_attempts`` times: ``in_progress`` and returned (claimed once)."""
        lock = " FOR UPDATE OF c SKIP LOCKED" if self.executor.dialect == "postgres" else ""
        rows = await self.executor.fetchall(
            "UPDATE callback_tasks SET status = 'in_progress', updated_at = ? WHERE status = 'scheduled' AND id IN ("
            "SELECT c.id FROM callback_tasks c JOIN tenants t ON t.id = c.tenant_id "
            "WHERE c.status = 'scheduled' AND c.scheduled_at <= ? AND c.attempts < ? AND t.status = 'active' "
            f"AND t.callback_auto_dial = ? ORDER BY c.scheduled_at, c.id LIMIT ?{lock}) RETURNING *",
            (now, now, max_attempts, True, limit))
        return [decode(CALLBACK_TASKS, r) for r in rows]

    async def tenant_number_e164s(self, tenant_id: str) -> list[str]:
        rows = await self.executor.fetchall("SELECT e164 FROM phone_numbers WHERE tenant_id = ?", (tenant_id,))
        return [r["e164"] for r in rows]

    async def goto_channel_by_token_hash(self, token_hash: str) -> Row | None:
        """The GoTo webhook: the path token's hash decides the tenant, so this lookup is global."""
        row = await self.executor.fetchone("SELECT * FROM goto_channels WHERE token_hash = ?", (token_hash,))
        return decode(GOTO_CHANNELS, row) if row else None

    async def count_numbers_for_agent(self, tenant_id: str, agent_id: str) -> int:
        return int(await self.executor.fetchval(
            "SELECT COUNT(*) AS n FROM phone_numbers WHERE tenant_id = ? AND agent_id = ?", (tenant_id, agent_id)
        ))

    async def named_secret_refs(self) -> list[str]:
        """Every secret reference a row names (credentials, webhooks), all tenants."""
        rows = await self.executor.fetchall(
            "SELECT secret_ref FROM credentials WHERE secret_ref IS NOT NULL "
            "UNION ALL SELECT secret_ref FROM webhook_configs WHERE secret_ref IS NOT NULL", ())
        return [r["secret_ref"] for r in rows]

    async def tenant_ids(self) -> list[str]:
        return [r["id"] for r in await self.executor.fetchall("SELECT id FROM tenants ORDER BY id", ())]

    async def secret_refs_for_tenant(self, tenant_id: str) -> list[str]:
        rows = await self.executor.fetchall(
            "SELECT secret_ref FROM credentials WHERE tenant_id = ? AND secret_ref IS NOT NULL "
            "UNION ALL SELECT secret_ref FROM webhook_configs WHERE tenant_id = ?",
            (tenant_id, tenant_id),
        )
        return [r["secret_ref"] for r in rows]

    async def active_versions(self, tenant_id: str, agent_ids: list[str]) -> list[Row]:
        if not agent_ids:
            return []
        marks = ", ".join("?" for _ in agent_ids)
        rows = await self.executor.fetchall(
            f"SELECT * FROM agent_versions WHERE tenant_id = ? AND status = 'active' AND agent_id IN ({marks})",
            (tenant_id, *agent_ids),
        )
        return [decode(AGENT_VERSIONS, r) for r in rows]

    async def max_event_seq(self, call_id: str) -> int | None:
        return await self.executor.fetchval("SELECT MAX(seq) AS s FROM call_events WHERE call_id = ?", (call_id,))

    # The webhook outbox (runtime.events.delivery): claims are global, every row keeps its tenant.

    async def claim_deliveries(self, now: str, limit: int, *, per_tenant: int,
                               busy: Mapping[str, int] | None = None) -> list[Row]:
        """Mark up to ``limit`` due pending deliveries ``sending`` and return them, oldest first, at
        most ``per_tenant`` of one tenant's minus what it already has in flight (``busy``). On
        PostgreSQL the rows are locked with SKIP LOCKED, so several runtimes never claim the same
        row; on SQLite the statement runs on the single writer."""
        lock = " FOR UPDATE SKIP LOCKED" if self.executor.dialect == "postgres" else ""
        busy = {t: n for t, n in (busy or {}).items() if n > 0}
        # Each tenant's share: per_tenant less its deliveries in flight (a CASE over the few busy ones).
        share = "CAST(? AS INTEGER)"  # typed: PostgreSQL cannot infer a CASE's parameter types
        params: list[Any] = [now, now]
        if busy:
            share = ("CASE tenant_id " + " ".join("WHEN ? THEN CAST(? AS INTEGER)" for _ in busy)
                     + " ELSE CAST(? AS INTEGER) END")
            for tenant_id, n in busy.items():
                params += [tenant_id, max(0, per_tenant - n)]
        params += [per_tenant, limit]
        rows = await self.executor.fetchall(
            "UPDATE webhook_deliveries SET status = 'sending', updated_at = ? WHERE id IN ("
            "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND id IN ("
            "SELECT id FROM (SELECT id, tenant_id, next_attempt_at, ROW_NUMBER() OVER ("
            "PARTITION BY tenant_id ORDER BY next_attempt_at, id) AS turn FROM webhook_deliveries "
            "WHERE status = 'pending' AND next_attempt_at <= ?) AS due "
            f"WHERE turn <= {share} ORDER BY next_attempt_at, id LIMIT ?){lock}) RETURNING *",
            tuple(params),
        )
        return [decode(WEBHOOK_DELIVERIES, r) for r in rows]

    async def requeue_stale_deliveries(self, claimed_before: str, now: str) -> int:
        """Deliveries left ``sending`` (by a process that died) since before ``claimed_before``: pending again."""
        return await self.executor.execute(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?, updated_at = ? "
            "WHERE status = 'sending' AND updated_at < ?",
            (now, now, claimed_before),
        )

    async def release_delivery(self, delivery_id: str, now: str) -> int:
        """A claimed delivery whose attempt did not finish: pending again, due now."""
        return await self.executor.execute(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?, updated_at = ? "
            "WHERE id = ? AND status = 'sending'",
            (now, now, delivery_id),
        )

    async def next_delivery_due(self) -> str | None:
        return await self.executor.fetchval(
            "SELECT MIN(next_attempt_at) AS t FROM webhook_deliveries WHERE status = 'pending'"
        )

    async def count_webhook_failure(self, webhook_id: str) -> Row | None:
        """One more delivery of the webhook failed for good: its count and status after that."""
        return await self.executor.fetchone(
            "UPDATE webhook_configs SET consecutive_failures = consecutive_failures + 1 WHERE id = ? "
            "RETURNING consecutive_failures, status",
            (webhook_id,),
        )

    async def reset_webhook_failures(self, webhook_id: str) -> None:
        await self.executor.execute(
            "UPDATE webhook_configs SET consecutive_failures = 0 WHERE id = ? AND consecutive_failures <> 0",
            (webhook_id,),
        )

    async def disable_webhook(self, webhook_id: str, now: str) -> bool:
        """Status 'disabled' and the webhook's pending deliveries held; False if it was not active."""
        changed = await self.executor.execute(
            "UPDATE webhook_configs SET status = 'disabled', disabled_at = ?, updated_at = ? "
            "WHERE id = ? AND status = 'active'",
            (now, now, webhook_id),
        )
        if changed:
            await self.executor.execute(
                "UPDATE webhook_deliveries SET status = 'held', next_attempt_at = NULL, updated_at = ? "
                "WHERE webhook_id = ? AND status = 'pending'",
                (now, webhook_id),
            )
        return changed > 0

    async def hold_delivery(self, delivery_id: str, webhook_id: str, now: str) -> bool:
        """A claimed delivery of a disabled webhook: 'held' (not retried) until the webhook is switched
        on. False when it no longer is disabled (on PostgreSQL the config row is share-locked, so a
        switch-on under way is waited for and seen)."""
        lock = " FOR SHARE" if self.executor.dialect == "postgres" else ""
        return await self.executor.execute(
            "UPDATE webhook_deliveries SET status = 'held', next_attempt_at = NULL, updated_at = ? "
            "WHERE id = ? AND status = 'sending' AND EXISTS ("
            f"SELECT 1 FROM webhook_configs WHERE id = ? AND status = 'disabled'{lock})",
            (now, delivery_id, webhook_id),
        ) > 0

    async def requeue_webhook_deliveries(self, tenant_id: str, webhook_id: str, now: str, *, statuses: tuple[str, ...],
                                         event_id: str | None = None, since: str | None = None) -> int:
        """Deliveries of the webhook in ``statuses`` (optionally one event's, or those created at or
        after ``since``) due again now, with their retries restarted; how many."""
        where = ["tenant_id = ?", "webhook_id = ?", f"status IN ({', '.join('?' for _ in statuses)})"]
        params: list[Any] = [tenant_id, webhook_id, *statuses]
        if event_id is not None:
            where.append("event_id = ?")
            params.append(event_id)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        return await self.executor.execute(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?, retry_from = ?, "
            f"attempts_before = attempts, updated_at = ? WHERE {' AND '.join(where)}",
            (now, now, now, *params),
        )

    async def delivery_attempts_for(self, tenant_id: str, delivery_ids: list[str]) -> list[Row]:
        if not delivery_ids:
            return []
        marks = ", ".join("?" for _ in delivery_ids)
        return await self.executor.fetchall(
            f"SELECT * FROM webhook_delivery_attempts WHERE tenant_id = ? AND delivery_id IN ({marks}) "
            "ORDER BY delivery_id, attempt",
            (tenant_id, *delivery_ids),
        )

    async def expired_call_ids(self, tenant_id: str, before: str, limit: int = 500) -> list[str]:
        """Retention: a tenant's finished calls created before ``before`` (ISO, oldest first)."""
        rows = await self.executor.fetchall(
            "SELECT id FROM voice_calls WHERE tenant_id = ? AND created_at < ? AND status IN ('ended', 'failed') "
            "ORDER BY created_at LIMIT ?",
            (tenant_id, before, limit),
        )
        return [r["id"] for r in rows]

    async def recordings_of_calls(self, tenant_id: str, call_ids: list[str]) -> list[Row]:
        """Retention: a tenant's recordings rows of these calls (their objects go with them)."""
        if not call_ids:
            return []
        marks = ", ".join("?" for _ in call_ids)
        rows = await self.executor.fetchall(
            f"SELECT * FROM recordings WHERE tenant_id = ? AND call_id IN ({marks}) ORDER BY call_id, id",
            (tenant_id, *call_ids),
        )
        return [decode(RECORDINGS, r) for r in rows]

    async def delete_calls(self, tenant_id: str, call_ids: list[str]) -> dict[str, int]:
        """Retention: delete calls with their transcripts, events, tool calls and recordings rows;
        rows deleted per table. Run inside ``atomic()``."""
        if not call_ids:
            return {}
        marks = ", ".join("?" for _ in call_ids)
        counts = {}
        for table in ("transcripts", "call_events", "tool_calls", "recordings", "livekit_egresses"):
            counts[table] = await self.executor.execute(
                f"DELETE FROM {table} WHERE tenant_id = ? AND call_id IN ({marks})", (tenant_id, *call_ids)
            )
        counts["voice_calls"] = await self.executor.execute(
            f"DELETE FROM voice_calls WHERE tenant_id = ? AND id IN ({marks})", (tenant_id, *call_ids)
        )
        return counts

    async def consume_eval_pin(self, pin_id: str, now: str) -> bool:
        """Use an evaluation call's pin: True once, False when it was used already or has expired."""
        return await self.executor.execute(
            "UPDATE eval_pins SET used_at = ? WHERE id = ? AND used_at IS NULL AND expires_at > ?",
            (now, pin_id, now)) == 1

    async def rollout_arm_counts(self, tenant_id: str, rollout_id: str) -> list[Row]:
        """Per agent version of a rollout's finished calls: ``calls``, ``failures`` (status failed) and
        ``transfers`` (ended transferred)."""
        return await self.executor.fetchall(
            "SELECT agent_version, COUNT(*) AS calls, "
            "SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failures, "
            "SUM(CASE WHEN end_reason IN ('transferred', 'after_hours_transfer') THEN 1 ELSE 0 END) AS transfers "
            "FROM voice_calls WHERE tenant_id = ? AND rollout_id = ? AND status IN ('ended', 'failed') "
            "GROUP BY agent_version", (tenant_id, rollout_id))

    async def end_rollout(self, tenant_id: str, rollout_id: str, changes: dict[str, Any]) -> bool:
        """Apply ``changes`` to a rollout that is still running; False when it no longer was."""
        values = encode(AGENT_ROLLOUTS, changes)
        sets = ", ".join(f"{k} = ?" for k in values)
        try:
            return await self.executor.execute(
                f"UPDATE agent_rollouts SET {sets} WHERE id = ? AND tenant_id = ? AND status = 'running'",
                (*values.values(), rollout_id, tenant_id)) == 1
        finally:
            wrote("agent_rollouts")  # routes cached with the rollout are read again

    async def running_rollouts(self, limit: int = 1000) -> list[Row]:
        """Every tenant's running rollouts (the scheduler checks them), oldest check first."""
        rows = await self.executor.fetchall(
            "SELECT * FROM agent_rollouts WHERE status = 'running' ORDER BY checked_at, id LIMIT ?", (limit,))
        return [decode(AGENT_ROLLOUTS, r) for r in rows]

    async def delete_rows_of_calls(self, tenant_id: str, tables: tuple[str, ...], call_ids: list[str]) -> int:
        """Delete a tenant's rows of ``tables`` (names from code: bookings, orders) made by these calls."""
        marks = ", ".join("?" for _ in call_ids)
        deleted = 0
        for table in tables:
            if table not in ("bookings", "orders"):
                raise ValueError(f"not a table of call-made rows: {table}")
            deleted += await self.executor.execute(
                f"DELETE FROM {table} WHERE tenant_id = ? AND call_id IN ({marks})", (tenant_id, *call_ids))
            wrote(table)
        return deleted

    async def set_agent_versions_status(self, tenant_id: str, agent_id: str, from_status: str, to_status: str) -> None:
        await self.executor.execute(
            "UPDATE agent_versions SET status = ? WHERE tenant_id = ? AND agent_id = ? AND status = ?",
            (to_status, tenant_id, agent_id, from_status),
        )


_ROUTE_PARTS = (("number", PHONE_NUMBERS), ("tenant", TENANTS), ("agent", AGENTS), ("version", AGENT_VERSIONS),
                ("rollout", AGENT_ROLLOUTS), ("candidate", AGENT_VERSIONS))
_ROUTE_SQL = (
    "SELECT " + ", ".join(f"{key[0]}.{col} AS {key}__{col}" for key, spec in _ROUTE_PARTS for col in spec.columns)
    + " FROM phone_numbers n"
    " LEFT JOIN tenants t ON t.id = n.tenant_id"
    " LEFT JOIN agents a ON a.tenant_id = n.tenant_id AND a.id = n.agent_id"
    " LEFT JOIN agent_versions v ON v.tenant_id = n.tenant_id AND v.agent_id = a.id"
    " AND v.version = COALESCE(n.pinned_version, a.active_version)"
    # The agent's running rollout and its candidate version (a pinned number never takes part).
    " LEFT JOIN agent_rollouts r ON r.tenant_id = n.tenant_id AND r.agent_id = a.id AND r.status = 'running'"
    " AND n.pinned_version IS NULL"
    " LEFT JOIN agent_versions c ON c.tenant_id = n.tenant_id AND c.agent_id = a.id"
    " AND c.version = r.candidate_version"
    " WHERE n.e164 = ?"
)


class Store(Tables):
    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.db = db

    def atomic(self) -> _Atomic:
        """``async with store.atomic() as tx:`` gives Tables bound to one transaction."""
        return _Atomic(self.db)

    def batch(self, check: Callable[[Tables], Awaitable[None]] | None = None) -> WriteBatch:
        """Writes collected now and committed together by ``await batch.commit()``; see WriteBatch.
        ``check``: run in that transaction after them, before the commit (reads that see them;
        what it raises rolls everything back)."""
        return WriteBatch(self.db, check)


class _Recorder(Executor):
    """Collects write statements instead of running them (no reads: nothing has run yet)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.statements: list[tuple[str, Params]] = []

    async def execute(self, sql: str, params: Params = ()) -> int:
        self.statements.append((sql, params))
        return 0  # not known until the batch commits

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        raise TypeError("a write batch cannot read or return rows; use store.atomic()")


class WriteBatch(Tables):
    """Tables whose inserts, deletes and plain statements are collected, then committed as one
    transaction (all or nothing) by ``commit()``: one round trip to the SQLite writer thread
    instead of one per statement. Methods that read or use RETURNING (get, list, update) raise.
    With ``check`` the batch runs in an ordinary transaction, ``check`` after the statements."""

    def __init__(self, db: Database, check: Callable[[Tables], Awaitable[None]] | None = None) -> None:
        self._db = db
        self._check = check
        self._recorder = _Recorder(db.dialect)
        super().__init__(self._recorder)

    @property
    def statements(self) -> list[tuple[str, Params]]:
        return self._recorder.statements

    async def commit(self) -> list[int]:
        """Run the collected statements atomically; their changed-row counts."""
        statements, self._recorder.statements = self._recorder.statements, []
        if not statements:
            return []
        try:
            if self._check is None:
                return await self._db.run_batch(statements)
            async with self._db.transaction() as tx:
                counts = [await tx.execute(sql, params) for sql, params in statements]
                await self._check(Tables(tx))
                return counts
        finally:
            committed(self)


class _Atomic:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cm: Any = None

    async def __aenter__(self) -> Tables:
        self._cm = self._db.transaction()
        executor = await self._cm.__aenter__()
        self._tables = Tables(executor)
        return self._tables

    async def __aexit__(self, *exc: Any) -> bool | None:
        try:
            return await self._cm.__aexit__(*exc)
        finally:
            committed(self._tables)
