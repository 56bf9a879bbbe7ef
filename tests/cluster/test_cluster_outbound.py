"""Outbound Twilio calls across instances: a call placed through instance 1 runs when every Twilio
request about it (progress, the answer, detection, the media) reaches instance 2, as behind a load
balancer; and a tenant's daily outbound cap holds when calls are placed through both at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

from runtime.api.appkeys import METRICS
from runtime.telephony.services import services
from tests.cluster.support import ClusterNames, start_instances, stop_instances
from tests.twilio.calls_peer import Callee
from tests.twilio.support import ACCOUNT_SID, AUTH_TOKEN, RestPeer

NUMBER = "+15550107200"
CALLEE = "+15550123999"
PUBLIC_URL = "https://voice.cluster.test"  # every instance's, as behind one load balancer


@pytest_asyncio.fixture
async def placed(cluster_names: ClusterNames, tmp_path: Path):
    """Two instances behind one public URL, the Twilio peer their REST API, a tenant whose number's
    agent greets ``{{name}}`` once it knows a human answered."""
    rest = RestPeer()
    await rest.start()
    started = await start_instances(cluster_names, tmp_path, 2,
                                    server={"public_url": PUBLIC_URL, "shutdown_grace_s": 0.5},
                                    telephony={"twilio": {"api_base_url": rest.url}})
    one = started[0][0]
    tenant_id, key = await one.tenant_with_key("cluster-outbound")
    await one.front_desk(tenant_id, key, NUMBER, "twilio", {"account_sid": ACCOUNT_SID}, AUTH_TOKEN,
                         greeting="Hi {{name}}, this is the front desk.",
                         voicemail_message="Hi {{name}}, please call us back.")
    try:
        yield [live for live, _ in started], rest, tenant_id, key
    finally:
        await stop_instances(started)
        await rest.stop()


async def _until(predicate, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _forwarded(live, op: str = "twilio.outbound_callback") -> float:
    value = live.app[METRICS].registry.get_sample_value(
        "voicectl_forwarded_call_ops_total", {"op": op, "outcome": "answered"})
    return value or 0.0


@pytest.mark.parametrize("detection", ["after_media", "before_media"])
async def test_a_call_placed_on_one_instance_runs_when_twilio_reaches_only_the_other(placed, detection: str) -> None:
    (one, two), rest, tenant_id, key = placed
    rest.calls.front = lambda url: two.base_url  # the load balancer sends everything to instance 2
    # before_media: the media opens after Twilio's "human" result, which instance 2 forwards to
    # instance 1 (the call still lives there); instance 2 then takes the call over with that result.
    rest.calls.callees[CALLEE] = Callee("human", hang_up=False,
                                        stream_delay_s=2.0 if detection == "before_media" else 0.0)
    status, made, _ = await one.call("POST", "/api/v1/calls", key, json={
        "to": CALLEE, "from": NUMBER, "variables": {"name": "Ada"}, "machine_detection": "voicemail"})
    assert status == 201, made
    call_id = made["id"]
    store = one.control.store

    async def row() -> dict:
        return await store.voice_calls.get(call_id, tenant_id=tenant_id)

    async def runs_on_two() -> bool:
        return (await row())["status"] == "connected" and services(two.app).tracker.get(call_id) is not None
    await _until(runs_on_two)
    assert (await row())["instance_id"] == "i2"  # its media, and so its lease, is instance 2's
    assert _forwarded(two) >= 3  # initiated, ringing and the answer went to instance 1, which held the call

    async def greeted() -> bool:
        lines, _ = await store.transcripts.list(tenant_id=tenant_id, equals={"call_id": call_id}, limit=50)
        return any(r["role"] == "agent" for r in lines)
    await _until(greeted)  # held until Twilio said "human", then rendered with the call's variables
    lines, _ = await store.transcripts.list(tenant_id=tenant_id, equals={"call_id": call_id}, limit=50)
    assert [r["text"] for r in lines if r["role"] == "agent"][0] == "Hi Ada, this is the front desk."
    assert services(one.app).tracker.get(call_id) is None  # forgotten where it was placed

    status, body, _ = await one.call("POST", f"/api/v1/calls/{call_id}/hangup", key, json={})
    assert status in (200, 202), body  # reaches instance 2, which asks Twilio to end the call

    async def over() -> bool:
        return (await row())["status"] in ("ended", "failed")
    await _until(over)
    final = await row()
    assert (final["status"], final["hangup_by"]) == ("ended", "agent"), final
    sid = final["provider_call_id"]
    assert {"call": sid, "form": {"Status": "completed"}} in [
        {"call": r["call"], "form": r["form"]} for r in rest.requests]
    events, _ = await store.call_events.list(tenant_id=tenant_id, equals={"call_id": call_id}, limit=200)
    events.sort(key=lambda e: e["seq"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # one sequence across both
    changes = [e["payload"] for e in events if e["topic"] == "call.state_changed"]
    assert [changes[0]["from_state"], *(c["to_state"] for c in changes)] == [
        "queued", "dialing", "ringing", "connected", "ended"]
    detected = [e["payload"]["answered_by"] for e in events if e["topic"] == "call.machine_detected"]
    assert detected == ["human"]  # once, wherever it arrived


async def test_a_tenants_last_outbound_call_of_the_day_is_placed_once_across_instances(placed) -> None:
    (one, two), rest, tenant_id, key = placed
    status, body, _ = await one.call("PATCH", f"/api/v1/tenants/{tenant_id}", one.admin_key,
                                     json={"max_outbound_per_day": 1})
    assert status == 200, body
    rest.calls.callees[CALLEE] = Callee("busy")
    answers = await asyncio.gather(*(live.call("POST", "/api/v1/calls", key, json={"to": CALLEE, "from": NUMBER})
                                     for live in (one, two, one, two)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [201, 429, 429, 429], answers
    assert all(body["details"]["limit"] == 1 for status, body, _ in answers if status == 429), answers
    rows, _ = await one.control.store.voice_calls.list(tenant_id=tenant_id, equals={"direction": "outbound"},
                                                       limit=10)
    assert len(rows) == 1, rows  # a refused one stores nothing
