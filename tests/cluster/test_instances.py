"""Instances on one Postgres: leases, crash of an instance (instance_lost, once), admission across instances."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runtime.api.appkeys import TRACKER
from runtime.calls.routing import RouteRejected
from runtime.calls.tracker import CallTracker
from runtime.cluster.instances import INSTANCE_LEASE, InstanceLease
from runtime.events.bus import EventBus
from runtime.ids import iso
from runtime.store.postgres import PostgresDatabase
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS
from tests.calls.support import events_of, insert_call, provision
from tests.cluster.support import ClusterNames, open_call, start_instances, stop_instances

# A short lease where a test waits for one to run out; the others keep the default (10 s), so that a
# heartbeat delayed on a busy machine never passes for a lost instance.
LEASE_S = 2.0


async def _instances(live) -> dict[str, dict]:
    rows, _ = await live.control.store.instances.list(tenant_id=ALL_TENANTS, limit=100)
    return {row["id"]: row for row in rows}


def _crash(live) -> None:
    """The instance forgets its calls, as a killed process would: its app's later cleanup (the
    test's) then has nothing left to drain."""
    live.app[TRACKER].live.clear()


async def _stop_renewing(live) -> None:
    await live.app[INSTANCE_LEASE].stop(deregister=False)


async def _kill(live) -> None:
    """Stop renewing, forget the calls, and leave the row at the app's cleanup: what ``kill -9`` leaves."""
    await _stop_renewing(live)
    _crash(live)

    async def leave_the_row(**_: object) -> None:
        return None

    live.app[INSTANCE_LEASE].stop = leave_the_row


async def test_each_instance_renews_its_lease_with_what_it_carries_and_leaves_on_a_clean_stop(
        cluster_names: ClusterNames, tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 2, server={"lease_s": LEASE_S})
    try:
        live1, live2 = started[0][0], started[1][0]
        world = await provision(live1.control, max_concurrent_calls=5)
        call = await open_call(live2, world)
        first = await _instances(live1)
        assert set(first) == {"i1", "i2"}
        await asyncio.sleep(LEASE_S / 3 + 0.5)
        later = await _instances(live1)
        for one in ("i1", "i2"):
            assert later[one]["heartbeat_at"] > first[one]["heartbeat_at"]
            assert later[one]["expires_at"] > later[one]["heartbeat_at"] and later[one]["accepting"] is True
            assert later[one]["lease_s"] == LEASE_S and later[one]["reaped_by"] is None
            assert later[one]["load"] >= 0
        assert later["i2"]["live_calls"] == 1 and later["i1"]["live_calls"] == 0
        row = await live1.control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
        assert row["instance_id"] == "i2"
        await call.end("hangup", hangup_by="caller")
        await stop_instances([started.pop()])
        assert set(await _instances(live1)) == {"i1"}
    finally:
        await stop_instances(started)


async def test_calls_of_a_lost_instance_end_instance_lost_once_within_lease_plus_2s(
        cluster_names: ClusterNames, tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 3, server={"lease_s": LEASE_S})
    try:
        (live1, _), (live2, _), (live3, _) = started
        world = await provision(live1.control, max_concurrent_calls=10)
        lost = [await open_call(live2, world) for _ in range(3)]
        await lost[0].connect()
        kept = [await open_call(live1, world), await open_call(live3, world)]
        await _stop_renewing(live2)
        _crash(live2)
        crashed_at = time.monotonic()
        store = live1.control.store
        while True:
            rows = [await store.voice_calls.get(c.id, tenant_id=world.tenant_id) for c in lost]
            if all(r["status"] == "failed" for r in rows):
                break
            assert time.monotonic() - crashed_at < LEASE_S + 2, [r["status"] for r in rows]
            await asyncio.sleep(0.05)
        assert {r["end_reason"] for r in rows} == {"instance_lost"}
        # Both survivors keep reaping (and a third reaper joins in at once): still one failure per call.
        await asyncio.gather(live1.app[INSTANCE_LEASE].reap(), live3.app[INSTANCE_LEASE].reap(),
                             live1.app[INSTANCE_LEASE].reap())
        await asyncio.sleep(2 * LEASE_S)
        for call, state in zip(lost, ("connected", "ringing", "ringing"), strict=True):
            events = await events_of(live1.control, world.tenant_id, call.id)
            failed = [e for e in events if e["topic"] == "voice.call.failed"]
            changed = [e for e in events if e["topic"] == "call.state_changed" and e["payload"]["to_state"] == "failed"]
            assert len(failed) == 1 and len(changed) == 1, events
            assert failed[0]["payload"]["reason"] == "instance_lost"
            assert changed[0]["payload"] == {"from_state": state, "to_state": "failed", "reason": "instance_lost"}
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        for call in kept:  # the survivors' own calls go on
            row = await store.voice_calls.get(call.id, tenant_id=world.tenant_id)
            assert row["status"] == "ringing" and call.live
        instances = await _instances(live1)
        assert instances["i2"]["reaped_by"] in ("i1", "i3")
        assert live1.app[INSTANCE_LEASE].reaped_calls + live3.app[INSTANCE_LEASE].reaped_calls == len(lost)
        for call in kept:
            await call.end("hangup", hangup_by="caller")
    finally:
        await stop_instances(started)


async def test_survivors_reaping_at_the_same_moment_fail_each_call_once(cluster_names: ClusterNames,
                                                                       tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 1, server={"lease_s": 30.0})
    (live1, _), = started
    await live1.app[INSTANCE_LEASE].stop(deregister=False)  # the race below is between the two survivors alone
    databases = [PostgresDatabase(cluster_names.schema_url) for _ in range(2)]
    try:
        world = await provision(live1.control, max_concurrent_calls=100)
        store = live1.control.store
        past = datetime.now(UTC) - timedelta(seconds=60)
        await store.register_instance({
            "id": "gone", "host": "h", "port": 1, "pid": 1, "version": "0", "started_at": iso(past),
            "heartbeat_at": iso(past), "expires_at": iso(past + timedelta(seconds=10)), "lease_s": 10.0,
            "reaped_by": None, "reaped_at": None})
        calls = [await insert_call(live1.control, world.tenant_id, status="connected", instance_id="gone")
                 for _ in range(20)]
        survivors = []
        for n, db in enumerate(databases):  # each with its own connections, as two processes
            await db.connect()
            peer_store = Store(db)
            tracker = CallTracker(peer_store, EventBus(peer_store), max_calls=10, instance_id=f"s{n}")
            survivors.append(InstanceLease(peer_store, tracker, f"s{n}", lease_s=30.0))
        failed = await asyncio.gather(*(lease.reap() for _ in range(3) for lease in survivors))
        assert sum(failed) == len(calls)
        for call_id in calls:
            events = await events_of(live1.control, world.tenant_id, call_id)
            assert [e["topic"] for e in events] == ["call.state_changed", "voice.call.failed"], events
            row = await store.voice_calls.get(call_id, tenant_id=world.tenant_id)
            assert (row["status"], row["end_reason"]) == ("failed", "instance_lost")
        assert (await _instances(live1))["gone"]["reaped_by"] in ("s0", "s1")
    finally:
        for db in databases:
            await db.close()
        await stop_instances(started)


class _Bridge:
    """Stands for a call's media bridge: records the hang-ups asked of it."""

    def __init__(self) -> None:
        self.hangups: list[str] = []

    async def hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    async def transfer(self, target: str) -> None:
        raise AssertionError("no transfer expected")


async def test_an_instance_back_after_its_lease_was_claimed_hangs_up_what_a_survivor_failed(
        cluster_names: ClusterNames, tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 2, server={"lease_s": LEASE_S})
    try:
        (live1, _), (live2, _) = started
        world = await provision(live1.control, max_concurrent_calls=10)
        call = await open_call(live2, world)
        await call.connect()
        call.control = bridge = _Bridge()
        await _stop_renewing(live2)  # a stall longer than the lease
        store = live1.control.store
        for _ in range(100):
            row = await store.voice_calls.get(call.id, tenant_id=world.tenant_id)
            if row["status"] == "failed":
                break
            await asyncio.sleep(0.05)
        assert (row["status"], row["end_reason"]) == ("failed", "instance_lost")
        await live2.app[INSTANCE_LEASE].renew()  # it wakes up
        assert bridge.hangups == ["instance_lost"] and not call.live
        assert call.id not in live2.app[TRACKER].live
        assert await store.voice_calls.get(call.id, tenant_id=world.tenant_id) == row  # the survivor's record
        topics = [e["topic"] for e in await events_of(live1.control, world.tenant_id, call.id)]
        assert topics.count("voice.call.failed") == 1 and "voice.call.completed" not in topics
        again = (await _instances(live1))["i2"]  # registered again under a new lease
        assert again["reaped_by"] is None and again["expires_at"] > iso(datetime.now(UTC))
    finally:
        await stop_instances(started)


async def test_a_restarted_instance_fails_only_its_own_previous_calls(cluster_names: ClusterNames,
                                                                    tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 2)  # the default lease: 10 s
    try:
        (live1, _), (live2, _) = started
        world = await provision(live1.control, max_concurrent_calls=10)
        mine, theirs = await open_call(live1, world), await open_call(live2, world)
        await _kill(live1)
        await stop_instances([started.pop(0)])
        started[:0] = await start_instances(cluster_names, tmp_path, 1)  # i1 again, within its old lease
        store = live2.control.store
        row = await store.voice_calls.get(mine.id, tenant_id=world.tenant_id)
        assert row["status"] == "failed" and row["end_reason"] == "runtime_restart"
        row = await store.voice_calls.get(theirs.id, tenant_id=world.tenant_id)
        assert row["status"] == "ringing" and theirs.live
        await theirs.end("hangup", hangup_by="caller")
    finally:
        await stop_instances(started)


async def test_a_tenant_limit_holds_whichever_instance_a_call_reaches(cluster_names: ClusterNames,
                                                                     tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 3)
    try:
        lives = [live for live, _ in started]
        world = await provision(lives[0].control, max_concurrent_calls=2)
        calls = [await open_call(lives[0], world), await open_call(lives[1], world)]
        for live in lives:
            with pytest.raises(RouteRejected) as refused:
                await open_call(live, world)
            assert refused.value.reason == "tenant_call_limit"
        rows, _ = await lives[0].control.store.voice_calls.list(
            tenant_id=world.tenant_id, equals={"end_reason": "tenant_call_limit"}, limit=10)
        assert len(rows) == 3 and {r["status"] for r in rows} == {"failed"}
        for row in rows:  # refused as on one instance: a failed row with voice.call.failed
            events = await events_of(lives[0].control, world.tenant_id, row["id"])
            assert events[-1]["topic"] == "voice.call.failed"
            assert events[-1]["payload"]["reason"] == "tenant_call_limit"
        await calls[0].end("hangup", hangup_by="caller")
        calls[0] = await open_call(lives[2], world)  # a slot freed on i1 is taken on i3
        with pytest.raises(RouteRejected):
            await open_call(lives[0], world)
        for call in calls:
            await call.end("hangup", hangup_by="caller")
        # Calls arriving at all three at once: exactly the limit is admitted, never more, and no fewer
        # (a refused call's row is stored already failed, so it never holds a slot: test_admission).
        busier = await provision(lives[0].control, name="busier", e164="+15550100009", max_concurrent_calls=6)
        results = await asyncio.gather(*(open_call(lives[n % 3], busier) for n in range(36)), return_exceptions=True)
        admitted = [r for r in results if not isinstance(r, BaseException)]
        assert len(admitted) == 6, results
        assert all(isinstance(r, RouteRejected) and r.reason == "tenant_call_limit"
                   for r in results if isinstance(r, BaseException))
        for call in admitted:
            await call.end("hangup", hangup_by="caller")
    finally:
        await stop_instances(started)


async def test_max_calls_cluster_caps_every_tenant_together(cluster_names: ClusterNames, tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 3, limits={"max_calls_cluster": 3})
    try:
        lives = [live for live, _ in started]
        first = await provision(lives[0].control, name="first", e164="+15550100001", max_concurrent_calls=10)
        second = await provision(lives[0].control, name="second", e164="+15550100002", max_concurrent_calls=10)
        calls = [await open_call(lives[0], first), await open_call(lives[1], second), await open_call(lives[2], first)]
        for live in lives:
            for world in (first, second):
                with pytest.raises(RouteRejected) as refused:
                    await open_call(live, world)
                assert refused.value.reason == "busy" and "cluster" in refused.value.message
        await calls[1].end("hangup", hangup_by="caller")
        calls[1] = await open_call(lives[0], second)
        for call in calls:
            await call.end("hangup", hangup_by="caller")
    finally:
        await stop_instances(started)


async def test_calls_of_an_instance_whose_lease_ran_out_stop_counting(cluster_names: ClusterNames,
                                                                      tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 2, server={"lease_s": LEASE_S})
    try:
        (live1, _), (live2, _) = started
        world = await provision(live1.control, max_concurrent_calls=1)
        await open_call(live2, world)
        await _stop_renewing(live2)
        _crash(live2)
        await asyncio.sleep(LEASE_S + 0.2)
        call = await open_call(live1, world)  # the lost instance's call no longer holds the tenant's slot
        await call.end("hangup", hangup_by="caller")
    finally:
        await stop_instances(started)


async def test_live_calls_of_an_instance_that_left_without_ending_them_are_failed(cluster_names: ClusterNames,
                                                                                  tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 1)
    try:
        live1 = started[0][0]
        world = await provision(live1.control, max_concurrent_calls=10)
        orphan = await insert_call(live1.control, world.tenant_id, status="connected", instance_id="vanished")
        for _ in range(60):
            row = await live1.control.store.voice_calls.get(orphan, tenant_id=world.tenant_id)
            if row["status"] == "failed":
                break
            await asyncio.sleep(0.1)
        assert (row["status"], row["end_reason"]) == ("failed", "instance_lost")
    finally:
        await stop_instances(started)


async def _running_evaluation(live, world, instance_id: str) -> str:
    """An evaluation run through the API on ``instance_id``, as far as the database knows."""
    from runtime.ids import new_id, now_iso

    row_id = new_id("evl")
    await live.control.store.evaluations.insert({
        "id": row_id, "tenant_id": world.tenant_id, "agent_id": world.agent_id, "agent_version": 1, "call_id": None,
        "status": "running", "score": None, "rubric": {}, "notes": None, "created_at": now_iso(), "suite_id": None,
        "suite_name": "s", "suite_sha256": "0" * 64, "passed": None, "results": [], "calls": 1, "concurrency": 1,
        "error": None, "started_by": "key k_1", "finished_at": None, "instance_id": instance_id})
    return row_id


async def test_evaluations_are_failed_by_their_own_restart_or_a_survivor_not_by_any_instance_starting(
        cluster_names: ClusterNames, tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 2)  # the default lease: 10 s
    try:
        (live1, _), (live2, _) = started
        world = await provision(live1.control, max_concurrent_calls=10)
        on_one, on_two = await _running_evaluation(live1, world, "i1"), await _running_evaluation(live1, world, "i2")
        await _kill(live1)
        await stop_instances([started.pop(0)])
        started[:0] = await start_instances(cluster_names, tmp_path, 1)  # i1 again, within its old lease
        store = live2.control.store
        row = await store.evaluations.get(on_one, tenant_id=world.tenant_id)
        assert row["status"] == "failed" and row["error"] == "the runtime restarted"
        assert (await store.evaluations.get(on_two, tenant_id=world.tenant_id))["status"] == "running"

        await _kill(live2)  # then its lease runs out: a survivor fails its evaluation too
        await store.db.execute("UPDATE instances SET expires_at = ? WHERE id = 'i2'",
                               (iso(datetime.now(UTC) - timedelta(seconds=1)),))
        await started[0][0].app[INSTANCE_LEASE].reap()
        row = await store.evaluations.get(on_two, tenant_id=world.tenant_id)
        assert row["status"] == "failed" and row["error"] == "the instance running it was lost", row
    finally:
        await stop_instances(started)
