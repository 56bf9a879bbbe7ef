"""The store suite: runs unchanged on SQLite and PostgreSQL (the ``backend`` fixture)."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from runtime.ids import new_id, now_iso
from runtime.store import migrate as migrations
from runtime.store.base import open_database
from runtime.store.errors import ForeignKeyViolation, UniqueViolation
from runtime.store.schema import LATEST_VERSION, MIGRATIONS
from runtime.store.store import ALL_SPECS, Store
from runtime.store.tables import ALL_TENANTS

EXPECTED_TABLES = {
    "tenants", "api_keys", "agents", "agent_versions", "voice_profiles", "phone_numbers", "credentials",
    "webhook_configs", "voice_calls", "transcripts", "call_events", "tool_calls", "recordings",
    "webhook_deliveries", "webhook_delivery_attempts", "evaluations", "callback_tasks", "bookings", "orders",
    "goto_channels", "livekit_egresses", "eval_suites", "eval_pins", "agent_rollouts",
}
NOT_TENANTS = {"instances"}  # the runtimes sharing the database


@pytest_asyncio.fixture
async def raw_db(db_url):
    """A connected database without migrations."""
    db = open_database(db_url)
    await db.connect()
    try:
        yield db
    finally:
        await db.close()


@pytest_asyncio.fixture
async def store(raw_db):
    await migrations.migrate(raw_db)
    return Store(raw_db)


def tenant_row(name: str | None = None, **extra) -> dict:
    now = now_iso()
    row = {
        "id": new_id("ten"), "name": name or new_id("name"), "status": "active", "timezone": "UTC",
        "max_concurrent_calls": 5, "max_call_duration_s": 600, "recording_enabled": False, "retention_days": 30,
        "metadata": {}, "created_at": now, "updated_at": now, "outbound_allowed_prefixes": None,
        "max_outbound_per_day": 100, "callback_sla_minutes": 240, "callback_auto_dial": False,
        "rollout_required_suite_id": None, "rollout_min_eval_score": None,
    }
    row.update(extra)
    return row


async def fill_tenant(store: Store, tenant_id: str) -> dict[str, str]:
    """One row in every tenant-owned table; returns table name -> row id."""
    now = now_iso()
    ids = {name: new_id(name[:3]) for name in EXPECTED_TABLES if name != "tenants"}
    t = tenant_id
    await store.api_keys.insert({
        "id": ids["api_keys"], "tenant_id": t, "scope": "runtime", "name": None, "key_hash": new_id("h"),
        "prefix": "vk_rt_abcd", "last4": "wxyz", "created_at": now,
    })
    await store.voice_profiles.insert({
        "id": ids["voice_profiles"], "tenant_id": t, "name": "v", "provider": "local", "voice_id": "default",
        "language": "en", "speed": 1.0, "created_at": now, "updated_at": now,
    })
    await store.agents.insert({
        "id": ids["agents"], "tenant_id": t, "name": "a", "active_version": 1, "latest_version": 1,
        "created_at": now, "updated_at": now,
    })
    await store.agent_versions.insert({
        "id": ids["agent_versions"], "tenant_id": t, "agent_id": ids["agents"], "version": 1, "status": "active",
        "config": {"system_prompt": "hi"}, "created_at": now,
    })
    await store.phone_numbers.insert({
        "id": ids["phone_numbers"], "tenant_id": t, "e164": "+1555" + str(abs(hash(t)))[:7], "provider": "twilio",
        "agent_id": ids["agents"], "created_at": now, "updated_at": now,
    })
    await store.credentials.insert({
        "id": ids["credentials"], "tenant_id": t, "provider": "twilio", "fields": {"account_sid": "AC1"},
        "secret_ref": f"tenant/{t}/credential/twilio", "created_at": now, "updated_at": now,
    })
    await store.webhook_configs.insert({
        "id": ids["webhook_configs"], "tenant_id": t, "url": "https://example.com/h", "events": ["*"],
        "active": True, "secret_ref": f"tenant/{t}/webhook/x", "created_at": now, "updated_at": now,
    })
    await store.voice_calls.insert({
        "id": ids["voice_calls"], "tenant_id": t, "provider": "webrtc", "direction": "inbound",
        "status": "ended", "started_at": now, "summary": {}, "latency": {}, "metadata": {}, "trace_id": "tr",
        "created_at": now, "updated_at": now,
    })
    call = ids["voice_calls"]
    await store.transcripts.insert({
        "id": ids["transcripts"], "tenant_id": t, "call_id": call, "seq": 1, "role": "user", "text": "hello",
        "interrupted": False, "created_at": now,
    })
    await store.call_events.insert({
        "id": ids["call_events"], "tenant_id": t, "call_id": call, "seq": 1, "topic": "call.connected",
        "payload": {"a": 1}, "created_at": now,
    })
    await store.tool_calls.insert({
        "id": ids["tool_calls"], "tenant_id": t, "call_id": call, "name": "end_call", "arguments": {},
        "status": "ok", "created_at": now,
    })
    await store.recordings.insert({
        "id": ids["recordings"], "tenant_id": t, "call_id": call, "kind": "mixed", "storage": "local",
        "uri": "file:///x.wav", "format": "wav", "created_at": now,
    })
    await store.webhook_deliveries.insert({
        "id": ids["webhook_deliveries"], "tenant_id": t, "webhook_id": ids["webhook_configs"], "event_id": "ev1",
        "topic": "call.connected", "payload": {}, "status": "pending", "attempts": 0, "created_at": now,
        "updated_at": now,
    })
    await store.webhook_delivery_attempts.insert({
        "id": ids["webhook_delivery_attempts"], "tenant_id": t, "delivery_id": ids["webhook_deliveries"],
        "attempt": 1, "status_code": 500, "error": "HTTP 500", "duration_ms": 12, "created_at": now,
    })
    await store.evaluations.insert({
        "id": ids["evaluations"], "tenant_id": t, "agent_id": ids["agents"], "agent_version": 1, "call_id": call,
        "status": "done", "score": 0.5, "rubric": {"k": "v"}, "created_at": now,
    })
    await store.callback_tasks.insert({
        "id": ids["callback_tasks"], "tenant_id": t, "call_id": call, "status": "open", "created_at": now,
        "updated_at": now,
    })
    await store.bookings.insert({
        "id": ids["bookings"], "tenant_id": t, "call_id": call, "reference": "ABC234", "day": "2030-01-01",
        "time": "19:00", "slot": "19:00", "table_no": 1, "party_size": 2, "status": "confirmed", "created_at": now,
    })
    await store.orders.insert({
        "id": ids["orders"], "tenant_id": t, "call_id": call, "reference": "ABC234",
        "items": [{"name": "tiramisu", "qty": 1}], "total_cents": 650, "currency": "USD", "status": "placed",
        "created_at": now,
    })
    await store.goto_channels.insert({
        "id": ids["goto_channels"], "tenant_id": t, "account_key": "1234", "nickname": "voicectl-x",
        "token_hash": new_id("h"), "channel_id": "Webhook.x", "status": "active", "subscription": {},
        "created_at": now, "updated_at": now,
    })
    await store.eval_suites.insert({
        "id": ids["eval_suites"], "tenant_id": t, "name": "booking", "sha256": "0" * 64, "source": "name: booking",
        "scenarios": 1, "created_at": now,
    })
    await store.eval_pins.insert({
        "id": ids["eval_pins"], "tenant_id": t, "evaluation_id": ids["evaluations"], "agent_id": ids["agents"],
        "agent_version": 1, "scenario": "s", "secret_hash": "1" * 64, "expires_at": now, "created_at": now,
    })
    await store.agent_rollouts.insert({
        "id": ids["agent_rollouts"], "tenant_id": t, "agent_id": ids["agents"], "base_version": 1,
        "candidate_version": 1, "percent": 10, "stop_conditions": {}, "status": "running", "started_at": now,
        "created_at": now, "updated_at": now,
    })
    await store.livekit_egresses.insert({"id": ids["livekit_egresses"], "tenant_id": t, "call_id": call,
                                         "created_at": now})
    return ids


# Migrations


async def test_migrations_apply_once_and_are_recorded(raw_db):
    applied = await migrations.migrate(raw_db)
    assert applied == [m.version for m in MIGRATIONS]
    rows = await raw_db.fetchall("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(r["applied_at"] for r in rows)
    assert await migrations.migrate(raw_db) == []
    status = await migrations.status(raw_db)
    assert status.current == LATEST_VERSION and status.up_to_date


async def test_a_migration_numbered_below_one_applied_is_reported_and_applied(raw_db, monkeypatch):
    """Branches merge in any order: a lower number may arrive after a higher one was applied."""
    from runtime.store.schema import Migration

    await migrations.migrate(raw_db)
    late = Migration(1000, "a branch merged later", ("CREATE TABLE gap_probe (id TEXT)",))
    monkeypatch.setattr(migrations, "MIGRATIONS", (*MIGRATIONS, late))
    monkeypatch.setattr(migrations, "LATEST_VERSION", late.version)
    await raw_db.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                         (1001, "applied by a build with a higher number", "2030-01-01T00:00:00.000000Z"))
    status = await migrations.status(raw_db)
    assert status.current == 1001 and status.missing == (1000,) and not status.up_to_date
    assert await migrations.migrate(raw_db) == [1000]
    status = await migrations.status(raw_db)
    assert status.missing == () and status.up_to_date


async def test_concurrent_migrate_applies_each_version_once(db_url):
    dbs = [open_database(db_url) for _ in range(3)]
    for db in dbs:
        await db.connect()
    try:
        results = await asyncio.gather(*(migrations.migrate(db) for db in dbs))
        applied = sorted(v for result in results for v in result)
        assert applied == [m.version for m in MIGRATIONS]
        count = await dbs[0].fetchval("SELECT COUNT(*) AS n FROM schema_migrations")
        assert count == len(MIGRATIONS)
    finally:
        for db in dbs:
            await db.close()


async def test_concurrent_migrate_on_one_database(raw_db):
    results = await asyncio.gather(*(migrations.migrate(raw_db) for _ in range(3)))
    assert sorted(v for result in results for v in result) == [m.version for m in MIGRATIONS]


async def test_every_table_exists(store):
    names = set(await store.db.table_names())
    assert EXPECTED_TABLES <= names
    assert "schema_migrations" in names
    assert {spec.name for spec in ALL_SPECS} == EXPECTED_TABLES | NOT_TENANTS


async def test_every_spec_column_exists(store):
    for spec in ALL_SPECS:
        row = await store.db.fetchall(f"SELECT * FROM {spec.name} LIMIT 0")
        assert row == []
        # A select naming every column fails if the spec and the schema disagree.
        await store.db.fetchall(f"SELECT {', '.join(spec.columns)} FROM {spec.name} LIMIT 0")


# Cascades and constraint errors


async def test_tenant_delete_cascades_to_every_tenant_owned_table(store):
    doomed = tenant_row()
    kept = tenant_row()
    await store.tenants.insert(doomed)
    await store.tenants.insert(kept)
    doomed_ids = await fill_tenant(store, doomed["id"])
    kept_ids = await fill_tenant(store, kept["id"])
    for spec in ALL_SPECS:
        if spec.name == "tenants" or spec.name in NOT_TENANTS:
            continue
        assert await getattr(store, spec.name).get(doomed_ids[spec.name], tenant_id=doomed["id"]) is not None

    assert await store.tenants.delete(doomed["id"], tenant_id=ALL_TENANTS)

    for spec in ALL_SPECS:
        if spec.name == "tenants" or spec.name in NOT_TENANTS:
            continue
        n = await store.db.fetchval(f"SELECT COUNT(*) AS n FROM {spec.name} WHERE tenant_id = ?", (doomed["id"],))
        assert n == 0, f"{spec.name} kept rows of a deleted tenant"
        assert await getattr(store, spec.name).get(kept_ids[spec.name], tenant_id=kept["id"]) is not None


async def test_unique_violation_is_mapped(store):
    await store.tenants.insert(tenant_row("acme"))
    with pytest.raises(UniqueViolation):
        await store.tenants.insert(tenant_row("acme"))
    row = tenant_row("dup-id")
    await store.tenants.insert(row)
    with pytest.raises(UniqueViolation):
        await store.tenants.insert(tenant_row("other", id=row["id"]))


async def test_unique_violation_inside_transaction_is_mapped(store):
    await store.tenants.insert(tenant_row("acme"))
    with pytest.raises(UniqueViolation):
        async with store.atomic() as tx:
            await tx.tenants.insert(tenant_row("acme"))


async def test_foreign_key_violation_is_mapped(store):
    now = now_iso()
    with pytest.raises(ForeignKeyViolation):
        await store.agents.insert({
            "id": new_id("agt"), "tenant_id": "ten_missing", "name": "a", "active_version": 1,
            "latest_version": 1, "created_at": now, "updated_at": now,
        })


# Value round trips


JSON_VALUE = {
    "zeta": "keys out of order", "text": "héllo \"quoted\" ✓\n\ttab", "int": 7, "big": 2**62,
    "float": 1.5, "whole_float": 2.0, "huge_float": 1e20, "bool": True, "null": None,
    "list": [1, "two", {"three": [3]}], "nested": {"b": {"a": {"c": []}}, "a": 1}, "empty": {},
}


def shape(value):
    """The value with dict key order and int/float types made visible (== ignores both)."""
    if isinstance(value, dict):
        return [("dict", [(k, shape(v)) for k, v in value.items()])]
    if isinstance(value, list):
        return [("list", [shape(v) for v in value])]
    return (type(value).__name__, value)


async def test_json_and_bool_round_trip(store):
    row = tenant_row(metadata=JSON_VALUE, recording_enabled=True, outbound_allowed_prefixes=["+1415", "+49"],
                     callback_auto_dial=True)
    inserted = await store.tenants.insert(dict(row))
    got = await store.tenants.get(row["id"], tenant_id=ALL_TENANTS)
    assert got == inserted == row
    assert got["recording_enabled"] is True and got["callback_auto_dial"] is True
    assert shape(got["metadata"]) == shape(JSON_VALUE)
    listed_row = (await store.tenants.list(tenant_id=ALL_TENANTS))[0][0]
    assert shape(listed_row["metadata"]) == shape(JSON_VALUE)

    updated = await store.tenants.update(
        row["id"], {"recording_enabled": False, "metadata": {"k": [None, False]}}, tenant_id=ALL_TENANTS
    )
    assert updated["recording_enabled"] is False
    assert updated["metadata"] == {"k": [None, False]}
    listed, _ = await store.tenants.list(tenant_id=ALL_TENANTS, equals={"recording_enabled": False})
    assert [r["id"] for r in listed] == [row["id"]]
    assert listed[0] == await store.tenants.get(row["id"], tenant_id=ALL_TENANTS)


async def test_json_list_and_nullable_json_round_trip(store):
    tenant = await store.tenants.insert(tenant_row())
    await fill_tenant(store, tenant["id"])
    whk = (await store.webhook_configs.list(tenant_id=tenant["id"]))[0][0]
    assert whk["events"] == ["*"] and whk["active"] is True
    tool = (await store.tool_calls.list(tenant_id=tenant["id"]))[0][0]
    assert tool["arguments"] == {} and tool["result"] is None
    tr = (await store.transcripts.list(tenant_id=tenant["id"]))[0][0]
    assert tr["interrupted"] is False


# Lists


async def test_list_pagination_total_and_descending(store):
    rows = []
    for i in range(7):
        row = tenant_row(f"t{i}", created_at=f"2024-01-01T00:00:0{i}.000000Z")
        await store.tenants.insert(row)
        rows.append(row["id"])

    page, total = await store.tenants.list(tenant_id=ALL_TENANTS, limit=3, offset=0)
    assert [r["id"] for r in page] == rows[:3] and total == 7
    page, total = await store.tenants.list(tenant_id=ALL_TENANTS, limit=3, offset=3)
    assert [r["id"] for r in page] == rows[3:6] and total == 7
    page, total = await store.tenants.list(tenant_id=ALL_TENANTS, limit=3, offset=6)
    assert [r["id"] for r in page] == rows[6:] and total == 7
    page, total = await store.tenants.list(tenant_id=ALL_TENANTS, limit=3, offset=9)
    assert page == [] and total == 7
    page, total = await store.tenants.list(tenant_id=ALL_TENANTS, limit=50)
    assert len(page) == 7 and total == 7

    page, total = await store.tenants.list(tenant_id=ALL_TENANTS, limit=3, descending=True)
    assert [r["id"] for r in page] == rows[::-1][:3] and total == 7
    page, _ = await store.tenants.list(tenant_id=ALL_TENANTS, limit=3, offset=3, descending=True)
    assert [r["id"] for r in page] == rows[::-1][3:6]


async def test_list_filters_and_is_null(store):
    tenant = await store.tenants.insert(tenant_row())
    await fill_tenant(store, tenant["id"])
    now = now_iso()
    await store.api_keys.insert({
        "id": new_id("key"), "tenant_id": tenant["id"], "scope": "runtime", "key_hash": new_id("h"),
        "prefix": "vk_rt_", "last4": "0000", "created_at": now, "revoked_at": now,
    })
    live, total = await store.api_keys.list(tenant_id=tenant["id"], equals={"revoked_at": None})
    assert len(live) == 1 and total == 1
    every, total = await store.api_keys.list(tenant_id=tenant["id"])
    assert len(every) == 2 and total == 2
    with pytest.raises(KeyError):
        await store.api_keys.list(tenant_id=tenant["id"], equals={"nope": 1})


# Transactions


async def test_transaction_rolls_back_on_exception(store):
    row = tenant_row()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.atomic() as tx:
            await tx.tenants.insert(row)
            assert await tx.tenants.get(row["id"], tenant_id=ALL_TENANTS) is not None
            raise Boom
    assert await store.tenants.get(row["id"], tenant_id=ALL_TENANTS) is None

    async with store.atomic() as tx:
        await tx.tenants.insert(row)
    assert await store.tenants.get(row["id"], tenant_id=ALL_TENANTS) is not None


async def test_raw_transaction_rolls_back(store):
    row = tenant_row()
    with pytest.raises(RuntimeError):
        async with store.db.transaction() as tx:
            await store.tenants.on(tx).insert(row)
            raise RuntimeError("abort")
    assert await store.db.fetchval("SELECT COUNT(*) AS n FROM tenants") == 0


# Write batches (run_batch): one transaction, all or nothing


async def test_write_batch_commits_together(store):
    batch = store.batch()
    a, b = tenant_row(), tenant_row()
    await batch.tenants.insert(a)
    await batch.tenants.insert(b)
    assert await store.tenants.get(a["id"], tenant_id=ALL_TENANTS) is None  # nothing runs before commit
    assert await batch.commit() == [1, 1]
    assert await store.tenants.get(a["id"], tenant_id=ALL_TENANTS) is not None
    assert await store.tenants.get(b["id"], tenant_id=ALL_TENANTS) is not None
    assert await batch.commit() == []  # the statements went with the first commit


async def test_write_batch_is_all_or_nothing(store):
    taken = await store.tenants.insert(tenant_row())
    fresh = tenant_row()
    batch = store.batch()
    await batch.tenants.insert(fresh)
    await batch.tenants.insert(tenant_row(name=taken["name"]))  # names are unique
    with pytest.raises(UniqueViolation):
        await batch.commit()
    assert await store.tenants.get(fresh["id"], tenant_id=ALL_TENANTS) is None
    with pytest.raises(ForeignKeyViolation):
        await store.db.run_batch([
            ("INSERT INTO tenants (id, name, status, timezone, max_concurrent_calls, max_call_duration_s, "
             "recording_enabled, retention_days, metadata, created_at, updated_at) "
             "VALUES (?, ?, 'active', 'UTC', 1, 60, ?, 1, '{}', ?, ?)",
             (fresh["id"], fresh["name"], False, fresh["created_at"], fresh["created_at"])),
            ("INSERT INTO agents (id, tenant_id, name, active_version, latest_version, created_at, updated_at) "
             "VALUES (?, ?, 'a', NULL, 0, ?, ?)", ("agt_x", "ten_missing", fresh["created_at"], fresh["created_at"])),
        ])
    assert await store.tenants.get(fresh["id"], tenant_id=ALL_TENANTS) is None
    # The database is usable afterwards (no transaction left open).
    await store.tenants.insert(fresh)
    assert await store.tenants.get(fresh["id"], tenant_id=ALL_TENANTS) is not None


async def test_write_batch_cannot_read(store):
    batch = store.batch()
    with pytest.raises(TypeError):
        await batch.tenants.get("x", tenant_id=ALL_TENANTS)


async def test_concurrent_batches_fail_alone(store):
    """Batches in flight together (merged into one SQLite transaction) keep their own outcome."""
    taken = await store.tenants.insert(tenant_row())
    good = [tenant_row() for _ in range(20)]

    async def commit(rows):
        batch = store.batch()
        for row in rows:
            await batch.tenants.insert(row)
        return await batch.commit()

    jobs = [commit([row]) for row in good[:10]]
    jobs.append(commit([tenant_row(), tenant_row(name=taken["name"])]))
    jobs += [commit([row]) for row in good[10:]]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert isinstance(results[10], UniqueViolation)
    assert all(r == [1] for i, r in enumerate(results) if i != 10)
    total = await store.db.fetchval("SELECT COUNT(*) AS n FROM tenants")
    assert total == 21
    if store.db.dialect == "sqlite":
        assert store.db.batch_groups < len(jobs)  # merged: fewer writer hops than batches


# Tenant scoping


async def test_table_refuses_none_tenant(store):
    with pytest.raises(TypeError):
        await store.agents.get("x", tenant_id=None)
    with pytest.raises(TypeError):
        await store.agents.list(tenant_id=None)
    with pytest.raises(TypeError):
        await store.agents.find(tenant_id=None, name="a")
    with pytest.raises(TypeError):
        await store.agents.update("x", {"name": "b"}, tenant_id=None)
    with pytest.raises(TypeError):
        await store.agents.delete("x", tenant_id=None)


async def test_rows_are_invisible_to_other_tenants(store):
    a = await store.tenants.insert(tenant_row())
    b = await store.tenants.insert(tenant_row())
    ids = await fill_tenant(store, a["id"])
    agent_id = ids["agents"]
    assert await store.agents.get(agent_id, tenant_id=b["id"]) is None
    assert await store.agents.get(agent_id, tenant_id=a["id"]) is not None
    assert await store.agents.get(agent_id, tenant_id=ALL_TENANTS) is not None
    assert await store.agents.find(tenant_id=b["id"], name="a") is None
    assert await store.agents.list(tenant_id=b["id"]) == ([], 0)
    assert await store.agents.update(agent_id, {"name": "stolen"}, tenant_id=b["id"]) is None
    assert await store.agents.delete(agent_id, tenant_id=b["id"]) is False
    assert (await store.agents.get(agent_id, tenant_id=a["id"]))["name"] == "a"
    # The tenants table scopes on its own id.
    assert await store.tenants.get(a["id"], tenant_id=b["id"]) is None
    assert await store.tenants.get(a["id"], tenant_id=a["id"]) is not None


async def test_special_queries(store):
    t = await store.tenants.insert(tenant_row())
    ids = await fill_tenant(store, t["id"])
    number = await store.phone_numbers.get(ids["phone_numbers"], tenant_id=t["id"])
    assert await store.number_by_e164(number["e164"]) == number
    assert await store.number_by_e164("+10000000000") is None
    assert await store.count_numbers_for_agent(t["id"], ids["agents"]) == 1
    refs = sorted(await store.secret_refs_for_tenant(t["id"]))
    assert refs == sorted([f"tenant/{t['id']}/credential/twilio", f"tenant/{t['id']}/webhook/x"])
    key = await store.api_keys.get(ids["api_keys"], tenant_id=t["id"])
    found = await store.api_key_by_hash(key["key_hash"])
    assert found["id"] == key["id"] and found["tenant_status"] == "active"


# SQLite specifics


@pytest_asyncio.fixture
async def sqlite_store(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/voicectl.db")
    await db.connect()
    await migrations.migrate(db)
    try:
        yield Store(db)
    finally:
        await db.close()


async def test_sqlite_wal_and_foreign_keys(sqlite_store):
    store = sqlite_store
    assert (await store.db.fetchval("PRAGMA journal_mode")).lower() == "wal"
    assert await store.db.fetchval("PRAGMA foreign_keys") == 1
    # Reader connections too.
    results = await asyncio.gather(*(store.db.fetchall("SELECT 1 AS one") for _ in range(8)))
    assert all(r == [{"one": 1}] for r in results)
    rows = await store.db._on_writer(lambda conn: conn.execute("PRAGMA foreign_keys").fetchone()[0])
    assert rows == 1


async def test_sqlite_reads_are_not_blocked_by_a_write_transaction(sqlite_store):
    store = sqlite_store
    existing = await store.tenants.insert(tenant_row())
    pending = tenant_row()
    async with store.atomic() as tx:
        await tx.tenants.insert(pending)
        # A read outside the transaction finishes while the writer holds its lock,
        # and does not see the uncommitted row.
        rows = await asyncio.wait_for(store.tenants.list(tenant_id=ALL_TENANTS), timeout=2)
        assert [r["id"] for r in rows[0]] == [existing["id"]]
        assert await asyncio.wait_for(store.tenants.get(existing["id"], tenant_id=ALL_TENANTS), timeout=2)
    assert await store.tenants.get(pending["id"], tenant_id=ALL_TENANTS) is not None
