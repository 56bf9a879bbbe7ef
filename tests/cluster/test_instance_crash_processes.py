"""``kill -9`` of instance process 2 mid-call: its call ends ``instance_lost`` within lease + 2 s, once,
and the calls on processes 1 and 3 go on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from runtime.store.postgres import PostgresDatabase
from runtime.store.store import Store
from runtime.telephony.twilio.caller import TwilioCaller
from tests.cluster.processes import ProcessCluster, provision
from tests.cluster.support import ClusterNames

LEASE_S = 2.0


async def _call_of(store: Store, tenant_id: str, call_sid: str) -> dict:
    for _ in range(200):
        row = await store.voice_calls.find(tenant_id=tenant_id, provider_call_id=call_sid)
        if row is not None and row["status"] == "connected":
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_sid} never connected: {row}")


async def test_kill_9_of_an_instance_fails_its_call_instance_lost_and_the_others_go_on(
        cluster_names: ClusterNames, tmp_path: Path) -> None:
    world = await provision(cluster_names, tmp_path)
    cluster = await ProcessCluster(cluster_names, tmp_path).start(3, server={"lease_s": LEASE_S})
    db = PostgresDatabase(cluster_names.schema_url)
    await db.connect()
    store = Store(db)
    callers: list[TwilioCaller] = []
    streams: list[asyncio.Task[Any]] = []
    try:
        legs, rows = [], []
        for instance in cluster.instances:
            caller = TwilioCaller(instance.url, world.account_sid, world.auth_token)
            await caller.__aenter__()
            callers.append(caller)
            call_sid, answer = await caller.dial(world.number)
            leg = await caller.open_stream(call_sid, answer)
            streams.append(asyncio.create_task(leg.stream([b"\xff" * 160] * 3000)))  # line silence, 60 s
            await asyncio.wait_for(leg.first_media.wait(), 10)
            legs.append(leg)
            rows.append(await _call_of(store, world.tenant_id, call_sid))
        assert [r["instance_id"] for r in rows] == ["i1", "i2", "i3"]

        cluster.instances[1].kill()
        killed_at = time.monotonic()
        lost = rows[1]
        while True:
            row = await store.voice_calls.get(lost["id"], tenant_id=world.tenant_id)
            if row["status"] == "failed":
                break
            assert time.monotonic() - killed_at < LEASE_S + 2, row
            await asyncio.sleep(0.05)
        assert row["end_reason"] == "instance_lost"
        await asyncio.sleep(1.5)  # both survivors have looked again meanwhile
        events, _ = await store.call_events.list(tenant_id=world.tenant_id, equals={"call_id": lost["id"]},
                                                 limit=200)
        topics = [e["topic"] for e in events]
        assert topics.count("voice.call.failed") == 1 and "voice.call.completed" not in topics, topics
        instance, = await store.db.fetchall("SELECT reaped_by FROM instances WHERE id = 'i2'")
        assert instance["reaped_by"] in ("i1", "i3")
        for kept, leg in ((rows[0], legs[0]), (rows[2], legs[2])):
            row = await store.voice_calls.get(kept["id"], tenant_id=world.tenant_id)
            assert row["status"] == "connected" and not leg.closed.is_set(), row
    finally:
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        for caller in callers:
            await caller.__aexit__(None, None, None)
        await db.close()
        cluster.stop()
