"""Retention purge (both backends): rows past each tenant's retention_days go, with their files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from runtime.calls.retention import FIRST_RUN_DELAY_S, JOB_ID, PURGE_INTERVAL_S, RETENTION, purge_expired
from runtime.ids import new_id
from tests.api.support import start_live_api, stop_live_api
from tests.calls.support import insert_call, provision

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def _iso(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def _call_with_children(control, tenant_id: str, rec_dir, *, days_ago: float, status: str = "ended") -> str:
    store, when = control.store, _iso(days_ago)
    call_id = await insert_call(control, tenant_id, status=status, created_at=when)
    await store.transcripts.insert({"id": new_id("trn"), "tenant_id": tenant_id, "call_id": call_id, "seq": 1,
                                    "role": "caller", "text": "hi", "start_ms": 0, "end_ms": 10,
                                    "interrupted": False, "created_at": when})
    await store.call_events.insert({"id": new_id("evt"), "tenant_id": tenant_id, "call_id": call_id, "seq": 1,
                                    "topic": "voice.call.completed", "payload": {}, "trace_id": "tr",
                                    "created_at": when})
    await store.tool_calls.insert({"id": new_id("tc"), "tenant_id": tenant_id, "call_id": call_id,
                                   "name": "log_note", "arguments": {}, "result": {}, "status": "ok",
                                   "latency_ms": 3, "created_at": when})
    for kind in ("mixed", "caller"):
        path = rec_dir / tenant_id / call_id / f"{kind}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")
        await store.recordings.insert({"id": new_id("rec"), "tenant_id": tenant_id, "call_id": call_id,
                                       "kind": kind, "storage": "local", "uri": f"{tenant_id}/{call_id}/{kind}.wav",
                                       "format": "wav", "duration_ms": 1, "size_bytes": 4, "created_at": when})
    return call_id


async def _count(control, table: str, tenant_id: str, call_id: str) -> int:
    table_ = getattr(control.store, table)
    column = "id" if table == "voice_calls" else "call_id"
    _, total = await table_.list(tenant_id=tenant_id, equals={column: call_id})
    return total


async def test_purge_expired_per_tenant_retention(control, tmp_path):
    rec = tmp_path / "rec"
    short = await provision(control, name="short", retention_days=30)
    long = await provision(control, name="long", e164="+15550100002", retention_days=365)
    old = await _call_with_children(control, short.tenant_id, rec, days_ago=31)
    old_failed = await _call_with_children(control, short.tenant_id, rec, days_ago=400, status="failed")
    recent = await _call_with_children(control, short.tenant_id, rec, days_ago=29)
    live_old = await _call_with_children(control, short.tenant_id, rec, days_ago=60, status="connected")
    kept_long = await _call_with_children(control, long.tenant_id, rec, days_ago=200)
    gone_long = await _call_with_children(control, long.tenant_id, rec, days_ago=366)

    counts = await purge_expired(control.store, rec, NOW)
    assert counts == {"calls": 3, "transcripts": 3, "events": 3, "tool_calls": 3, "recordings": 6, "files": 6}
    for tenant, call_id in ((short, old), (short, old_failed), (long, gone_long)):
        for table in ("voice_calls", "transcripts", "call_events", "tool_calls", "recordings"):
            assert await _count(control, table, tenant.tenant_id, call_id) == 0, table
        assert not (rec / tenant.tenant_id / call_id).exists()
    for tenant, call_id in ((short, recent), (short, live_old), (long, kept_long)):
        for table in ("voice_calls", "transcripts", "call_events", "tool_calls"):
            assert await _count(control, table, tenant.tenant_id, call_id) == 1, table
        assert await _count(control, "recordings", tenant.tenant_id, call_id) == 2
        assert (rec / tenant.tenant_id / call_id / "mixed.wav").is_file()
    # Nothing more to do: a second run removes nothing.
    again = await purge_expired(control.store, rec, NOW)
    assert set(again.values()) == {0}


async def test_purge_without_files_on_disk(control, tmp_path):
    world = await provision(control, retention_days=1)
    call_id = await insert_call(control, world.tenant_id, created_at=_iso(2))
    counts = await purge_expired(control.store, tmp_path / "missing", NOW)
    assert counts["calls"] == 1 and counts["files"] == 0
    assert await _count(control, "voice_calls", world.tenant_id, call_id) == 0


async def test_the_scheduler_job_is_registered_and_stops_on_cleanup(settings):
    api, runner = await start_live_api(settings)
    job = api.app[RETENTION]
    try:
        assert job.running
        scheduled = job.scheduler.get_job(JOB_ID)
        assert scheduled is not None and scheduled.trigger.interval == timedelta(seconds=PURGE_INTERVAL_S)
        assert scheduled.next_run_time - datetime.now(UTC) <= timedelta(seconds=FIRST_RUN_DELAY_S)
        world = await provision(api.control, retention_days=1)
        call_id = await insert_call(api.control, world.tenant_id, created_at="2000-01-01T00:00:00.000000Z")
        counts = await job.run()  # what the scheduler calls
        assert counts["calls"] == 1 and job.runs == 1
        assert await _count(api.control, "voice_calls", world.tenant_id, call_id) == 0
    finally:
        await stop_live_api(api, runner)
    assert not job.running and not job.scheduler.running
