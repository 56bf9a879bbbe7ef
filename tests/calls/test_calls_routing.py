"""Routing (both backends): number -> tenant -> agent -> version, rejections, limits, hours, /readyz."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import pytest

from runtime.api.appkeys import SETTINGS, TRACKER
from runtime.calls.routing import CallRoute, RouteRejected, route_call, within_hours
from runtime.calls.tracker import DuplicateCall
from runtime.control.schemas import AgentConfig, AgentUpdate, NumberUpdate, OperatingHours, TenantUpdate
from runtime.store.tables import ALL_TENANTS
from tests.api.support import start_live_api, stop_live_api, with_overrides
from tests.calls.support import engine, events_of, provision

MONDAY_NOON = datetime(2024, 1, 8, 12, 0, tzinfo=UTC)
HOURS = {"schedule": {"mon": ["09:00-17:00"], "sun": ["20:00-23:00"]}}


async def _rejected(tracker, e164: str) -> RouteRejected:
    with pytest.raises(RouteRejected) as info:
        await tracker.open_call(to_number=e164, from_number="+15550000001", provider="twilio")
    return info.value


async def _failed_rows(control, tenant_id: str) -> list[dict]:
    rows, _ = await control.store.voice_calls.list(tenant_id=tenant_id, equals={"status": "failed"})
    return rows


async def test_unknown_number_is_rejected_and_nothing_is_stored(control):
    tracker = engine(control)
    rejected = await _rejected(tracker, "+15559999999")
    assert rejected.reason == "unknown_number" and rejected.tenant_id is None
    rows, _ = await control.store.voice_calls.list(tenant_id=ALL_TENANTS)
    assert rows == [] and tracker.live == {}


@pytest.mark.parametrize("case", ["tenant_disabled", "no_active_version"])
async def test_rejection_with_a_known_tenant_keeps_a_failed_row_and_event(control, case):
    world = await provision(control)
    if case == "tenant_disabled":
        await control.tenants.update(world.tenant_id, TenantUpdate(status="disabled"))
    else:
        await control.store.agents.update(world.agent_id, {"active_version": None}, tenant_id=world.tenant_id)
    tracker = engine(control)
    rejected = await _rejected(tracker, world.e164)
    assert rejected.reason == case and rejected.tenant_id == world.tenant_id
    [row] = await _failed_rows(control, world.tenant_id)
    assert row["end_reason"] == case and row["to_number"] == world.e164
    events = await events_of(control, world.tenant_id, row["id"])
    assert [e["topic"] for e in events] == ["voice.call.started", "call.state_changed", "voice.call.failed"]
    assert events[-1]["payload"]["reason"] == case
    assert tracker.live == {}


async def test_active_and_pinned_versions(control):
    world = await provision(control)
    await control.agents.update(world.tenant_id, world.agent_id, AgentUpdate(system_prompt="v2 prompt"))
    await control.agents.promote(world.tenant_id, world.agent_id, 2)
    route = await route_call(control.store, world.e164, MONDAY_NOON)
    assert (route.version, route.system_prompt, route.agent_id) == (2, "v2 prompt", world.agent_id)
    await control.numbers.update(world.tenant_id, world.number_id, NumberUpdate(pinned_version=1))
    route = await route_call(control.store, world.e164, MONDAY_NOON)
    assert (route.version, route.system_prompt) == (1, "day prompt")
    # A pinned version that does not exist is a rejection, not a crash.
    await control.store.phone_numbers.update(world.number_id, {"pinned_version": 9}, tenant_id=world.tenant_id)
    with pytest.raises(RouteRejected) as info:
        await route_call(control.store, world.e164, MONDAY_NOON)
    assert info.value.reason == "no_active_version"


async def test_tenant_call_limit(control):
    world = await provision(control, max_concurrent_calls=1)
    other = await provision(control, name="other", e164="+15550100002")
    tracker = engine(control)
    first = await tracker.open_call(to_number=world.e164, from_number=None, provider="twilio")
    rejected = await _rejected(tracker, world.e164)
    assert rejected.reason == "tenant_call_limit"
    [row] = await _failed_rows(control, world.tenant_id)
    assert row["end_reason"] == "tenant_call_limit"
    # Another tenant is not affected; ending the first call frees the slot.
    await tracker.open_call(to_number=other.e164, from_number=None, provider="twilio")
    await first.end("hangup", hangup_by="caller")
    again = await tracker.open_call(to_number=world.e164, from_number=None, provider="twilio")
    assert again.live and tracker.live_for(world.tenant_id) == 1


async def test_a_refused_call_is_stored_failed_in_one_commit(control):
    """Its row, voice.call.started and its failure commit together: no one ever sees the row live
    (on a shared database it would count against the tenant's limit elsewhere)."""
    world = await provision(control, max_concurrent_calls=1)
    tracker = engine(control)
    first = await tracker.open_call(to_number=world.e164, from_number=None, provider="twilio",
                                    provider_call_id="CA1")
    commits: list[list[str]] = []
    real = tracker.bus.committed
    tracker.bus.committed = lambda events, queued: (commits.append([e.topic for e in events]),
                                                    real(events, queued))[1]
    assert (await _rejected(tracker, world.e164)).reason == "tenant_call_limit"
    assert commits == [["voice.call.started", "call.state_changed", "voice.call.failed"]]
    # A refused call whose provider call id has a call already: nothing is stored for it.
    with pytest.raises(DuplicateCall):
        await tracker.open_call(to_number=world.e164, from_number=None, provider="twilio", provider_call_id="CA1")
    del tracker.bus.committed
    assert len(await _failed_rows(control, world.tenant_id)) == 1
    assert (await control.store.voice_calls.get(first.id, tenant_id=world.tenant_id))["status"] == "ringing"
    await first.end("hangup", hangup_by="caller")


async def test_box_limit_rejects_busy(control):
    world = await provision(control)
    tracker = engine(control, max_calls=1)
    call = await tracker.open_call(to_number=world.e164, from_number=None, provider="twilio")
    assert tracker.at_capacity
    assert (await _rejected(tracker, world.e164)).reason == "busy"
    await call.end("hangup")
    assert not tracker.at_capacity


async def test_readyz_reports_capacity_and_draining(settings):
    api, runner = await start_live_api(with_overrides(settings, limits={"max_calls": 1}))
    try:
        world = await provision(api.control)
        status, body, _ = await api.call("GET", "/readyz")
        assert status == 200 and body["checks"]["calls"] == "0 of 1"
        instance_id = f"{socket.gethostname()}:{api.app[SETTINGS].server.port}"  # no server.instance_id set
        assert body["instance_id"] == instance_id
        status, text, _ = await api.call("GET", "/metrics")
        assert status == 200 and f'voicectl_instance_info{{instance_id="{instance_id}"}} 1.0' in text
        tracker = api.app[TRACKER]
        call = await tracker.open_call(to_number=world.e164, from_number=None, provider="twilio")
        status, body, _ = await api.call("GET", "/readyz")
        assert status == 503 and body["ready"] is False and "max_calls" in body["checks"]["calls"]
        await call.end("hangup", hangup_by="caller")
        status, _, _ = await api.call("GET", "/readyz")
        assert status == 200
        tracker.accepting = False  # what drain() does first
        status, body, _ = await api.call("GET", "/readyz")
        assert status == 503 and body["checks"]["calls"] == "draining"
    finally:
        await stop_live_api(api, runner)


# Operating hours


@pytest.mark.parametrize(("when", "tz", "expected"), [
    (datetime(2024, 1, 8, 14, 0, tzinfo=UTC), "America/New_York", True),    # Mon 09:00 EST: opens
    (datetime(2024, 1, 8, 13, 59, tzinfo=UTC), "America/New_York", False),  # Mon 08:59 EST
    (datetime(2024, 1, 8, 22, 0, tzinfo=UTC), "America/New_York", False),   # Mon 17:00 EST: end is exclusive
    (datetime(2024, 1, 8, 21, 59, tzinfo=UTC), "America/New_York", True),   # Mon 16:59 EST
    (datetime(2024, 7, 8, 13, 0, tzinfo=UTC), "America/New_York", True),    # Mon 09:00 EDT (summer time)
    (datetime(2024, 1, 9, 14, 0, tzinfo=UTC), "America/New_York", False),   # Tuesday: closed
    (datetime(2024, 1, 8, 2, 0, tzinfo=UTC), "America/New_York", True),     # Mon UTC = Sun 21:00 local
    (datetime(2024, 1, 7, 23, 30, tzinfo=UTC), "Asia/Tokyo", False),        # Sun UTC = Mon 08:30 JST
    (datetime(2024, 1, 8, 0, 0, tzinfo=UTC), "Asia/Tokyo", True),           # Mon 09:00 JST
    (datetime(2024, 1, 8, 9, 0, tzinfo=UTC), "Asia/Tokyo", False),          # Mon 18:00 JST
    (datetime(2024, 1, 8, 12, 0, tzinfo=UTC), "UTC", True),
])
def test_within_hours_in_the_tenant_time_zone(when, tz, expected):
    assert within_hours(OperatingHours.model_validate(HOURS), tz, when) is expected


def test_no_schedule_is_always_open():
    assert within_hours(None, "UTC", MONDAY_NOON)
    assert within_hours(OperatingHours(schedule={}), "Asia/Tokyo", MONDAY_NOON) is False  # every day closed


async def test_after_hours_greeting_and_prompt(control):
    world = await provision(control, timezone="America/New_York", hours=HOURS,
                            after_hours={"mode": "greeting", "greeting": "we are closed",
                                         "system_prompt": "night prompt"})
    day = await route_call(control.store, world.e164, datetime(2024, 1, 8, 15, 0, tzinfo=UTC))
    assert (day.after_hours, day.greeting, day.system_prompt, day.transfer_now) == (
        False, "hello", "day prompt", False)
    night = await route_call(control.store, world.e164, datetime(2024, 1, 9, 3, 0, tzinfo=UTC))  # Mon 22:00
    assert (night.after_hours, night.greeting, night.system_prompt, night.transfer_now) == (
        True, "we are closed", "night prompt", False)
    tracker = engine(control)
    call = await tracker.open_call(to_number=world.e164, from_number=None, provider="twilio",
                                   now=datetime(2024, 1, 9, 3, 0, tzinfo=UTC))
    row = await control.store.voice_calls.get(call.id, tenant_id=world.tenant_id)
    assert row["metadata"] == {"after_hours": True}


async def test_after_hours_transfer_mode(control):
    world = await provision(control, hours=HOURS, escalation_target="+15550109999",
                            after_hours={"mode": "transfer"})
    night = await route_call(control.store, world.e164, datetime(2024, 1, 9, 3, 0, tzinfo=UTC))
    assert night.transfer_now and night.config.escalation_target == "+15550109999"
    assert night.greeting == "hello" and night.system_prompt == "day prompt"  # no after-hours overrides
    day = await route_call(control.store, world.e164, MONDAY_NOON)
    assert not day.transfer_now
    # Transfer mode without a target: nowhere to go, so the call is taken.
    no_target = CallRoute(night.tenant, night.number, night.agent_id, 1,
                          night.config.model_copy(update={"escalation_target": None}), True)
    assert not no_target.transfer_now


def test_max_duration_is_the_shorter_of_tenant_and_version():
    def route(tenant_s, version_s):
        return CallRoute({"id": "t", "max_call_duration_s": tenant_s}, {"id": "n"}, "a", 1,
                         AgentConfig(max_duration_s=version_s, system_prompt="p"), False)

    assert route(1800, 600).max_duration_s == 600
    assert route(600, 1800).max_duration_s == 600
    assert route(1800, None).max_duration_s == 1800
