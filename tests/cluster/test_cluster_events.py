"""Events across instances: a subscriber on one instance hears every instance's events, over NATS."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner

from runtime.api.appkeys import BUS, METRICS, SETTINGS
from runtime.cluster.interest import bounded
from runtime.control.plane import ControlPlane
from runtime.control.schemas import TenantCreate, WebhookCreate
from runtime.events.bus import EventBus
from runtime.events.models import DtmfReceived, Event, TranscriptCreated
from runtime.ids import now_iso
from tests.api.support import high_limits, start_live_api, stop_live_api
from tests.cluster.support import (
    ClusterNames,
    NatsProxy,
    instance_settings,
    share_master_key,
    start_instances,
    stop_instances,
)
from tests.events.test_events_bus import _call
from tests.events.test_webhook_delivery import Receiver
from voicectl.cli import app as cli


async def _socket(live, key: str, topics: list[str], call_id: str | None = None) -> aiohttp.ClientWebSocketResponse:
    ws = await live.http.ws_connect(live.base_url + "/api/v1/events/ws", headers={"Authorization": f"Bearer {key}"})
    await ws.send_json({"type": "subscribe", "topics": topics, "call_id": call_id})
    reply = await ws.receive_json(timeout=3)
    assert reply["type"] == "subscribed", reply
    return ws


async def _events(ws, count: int, timeout: float = 5.0) -> list[dict]:
    out = []
    while len(out) < count:
        msg = await ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        body = msg.json()
        assert body["type"] == "event", body
        out.append(body["event"])
    return out


async def _silent(ws, wait: float = 0.5) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=wait)


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _dtmf(tenant_id: str, call_id: str, seq: int) -> Event:
    return Event.of(DtmfReceived(digit=str(seq % 10)), tenant_id=tenant_id, call_id=call_id, seq=seq, trace_id="tr")


async def test_a_subscriber_hears_every_instances_events_in_order_once(cluster_names: ClusterNames,
                                                                       tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 3)
    (one, _), (_, _), (three, _) = started
    try:
        tenant, key = await one.tenant_with_key("acme")
        other, other_key = await one.tenant_with_key("globex")
        remote_call, local_call = await _call(one.control, tenant), await _call(one.control, tenant)
        ws = await _socket(one, key, ["dtmf.*", "transcript.*"])
        other_ws = await _socket(one, other_key, ["*"])
        try:
            made = [_dtmf(tenant, remote_call, seq) for seq in range(1, 41)]
            for event in made[:20]:
                await three.app[BUS].publish(event)
            await three.app[BUS].publish_all(made[20:])  # one transaction, fanned out in order
            got = await _events(ws, 40)
            assert [e["id"] for e in got] == [e.id for e in made]  # per-call order, no duplicates
            assert got[0] == made[0].to_dict()
            # Its own instance's events: once (at commit here; the copy NATS brings back is skipped).
            local = _dtmf(tenant, local_call, 1)
            await one.app[BUS].publish(local)
            assert [e["id"] for e in await _events(ws, 1)] == [local.id]
            await _silent(ws)
            await _silent(other_ws, 0.1)  # another tenant hears none of it
            theirs = Event.of(TranscriptCreated(role="caller", text="hi"), tenant_id=other, call_id=None, seq=1,
                              trace_id="tr")
            await three.app[BUS].publish(theirs)
            assert [e["id"] for e in await _events(other_ws, 1)] == [theirs.id]
            await _silent(ws, 0.2)
        finally:
            await ws.close()
            await other_ws.close()
    finally:
        await stop_instances(started)


async def test_listened_on_one_instance_follows_a_socket_on_another(cluster_names: ClusterNames,
                                                                    tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 3)
    (one, _), (_, _), (three, _) = started
    try:
        tenant, key = await one.tenant_with_key("acme")
        call_id = await _call(one.control, tenant)
        bus = three.app[BUS]
        assert not bus.listened(tenant, "transcript.interim", call_id)
        ws = await _socket(one, key, ["transcript.*"], call_id=call_id)
        await _until(lambda: bus.listened(tenant, "transcript.interim", call_id))
        assert not bus.listened(tenant, "transcript.interim", "call_other")
        assert not bus.listened(tenant, "speech.started", call_id)
        assert not bus.listened("ten_other", "transcript.interim", call_id)
        await ws.close()
        await _until(lambda: not bus.listened(tenant, "transcript.interim", call_id))
    finally:
        await stop_instances(started)


async def test_an_instance_started_later_learns_the_others_interest(cluster_names: ClusterNames,
                                                                    tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 1)
    (one, _), = started
    late = None
    try:
        tenant, key = await one.tenant_with_key("acme")
        ws = await _socket(one, key, ["transcript.interim"])
        settings = instance_settings(cluster_names, tmp_path / "i2", "i2", limits=high_limits())
        settings.master_key_path.write_bytes(one.app[SETTINGS].master_key_path.read_bytes())  # the cluster's key
        settings.master_key_path.chmod(0o600)
        late = await start_live_api(settings)
        await _until(lambda: late[0].app[BUS].listened(tenant, "transcript.interim", "call_any"))  # asked at start
        await ws.close()
    finally:
        if late is not None:
            await stop_live_api(*late)
        await stop_instances(started)


def test_interest_is_bounded_and_only_widens() -> None:
    entries = {("ten_a", ("transcript.*",), f"call_{n}") for n in range(50)} | {("ten_b", ("dtmf.*",), None)}
    assert len(bounded(entries, 100)) == 51
    assert bounded(entries, 10) == [("ten_a", ("transcript.*",), None), ("ten_b", ("dtmf.*",), None)]
    many = {(f"ten_{n}", ("x.*",), None) for n in range(20)}
    assert all(topics == ("*",) and call is None for _, topics, call in bounded(many, 5))
    assert len(bounded(many, 5)) == 5


async def test_nats_lost_closes_sockets_1013_while_events_and_webhooks_go_on(cluster_names: ClusterNames,
                                                                             tmp_path: Path) -> None:
    proxy = await NatsProxy().start()
    settings = instance_settings(cluster_names, tmp_path / "i1", "i1", nats_url=proxy.url, limits=high_limits(),
                                 events={"webhooks": {"backoff_cap_s": 0.05, "timeout_s": 2.0}})
    peer_settings = instance_settings(cluster_names, tmp_path / "i2", "i2", limits=high_limits())
    share_master_key(settings, peer_settings)
    live, runner = await start_live_api(settings)
    peer, peer_runner = await start_live_api(peer_settings)  # keeps its NATS
    receiver = await Receiver().start()
    try:
        tenant, key = await live.tenant_with_key("acme")
        status, hook, _ = await live.call("POST", "/api/v1/webhooks", key, json={"url": receiver.url + "/hook",
                                                                                "events": ["dtmf.*"]})
        assert status == 201, hook
        call_id = await _call(live.control, tenant)
        ws = await _socket(live, key, ["*"])
        proxy.cut()
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013, msg
        # New sockets are refused (503, JSON) while NATS is away.
        status, body, resp = await live.call("GET", "/api/v1/events/ws", key)
        assert status == 503 and body["error"] == "unavailable" and resp.headers["Retry-After"] == "1", body
        tail = await asyncio.to_thread(CliRunner().invoke, cli, ["events", "tail", "--url", live.base_url,
                                                                 "--key", key])
        assert tail.exit_code == 8 and "HTTP 503" in tail.output and "NATS" in tail.output, tail.output
        # Calls go on: events are committed and webhooks delivered.
        made = [_dtmf(tenant, call_id, seq) for seq in range(1, 4)]
        for event in made:
            await live.app[BUS].publish(event)
        # Not queued for NATS meanwhile (nothing piles up): counted as dropped for the other instances.
        dropped = live.app[METRICS].registry.get_sample_value("voicectl_cluster_events_dropped_total",
                                                             {"reason": "nats_lost"})
        assert dropped == 3 and live.app[BUS].relay._queue.empty()
        status, page, _ = await live.call("GET", f"/api/v1/calls/{call_id}/events", key)
        assert status == 200 and [e["id"] for e in page["items"]] == [e.id for e in made], page
        await _until(lambda: len(receiver.requests) == 3, timeout=10)
        assert sorted(r["headers"]["X-Voicectl-Event-Id"] for r in receiver.requests) == sorted(e.id for e in made)
        proxy.restore()
        for _ in range(100):
            status, _, _ = await live.call("GET", "/readyz")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        ws = await _socket(live, key, ["*"])
        try:
            after = [_dtmf(tenant, call_id, 4), _dtmf(tenant, await _call(live.control, tenant), 1)]
            await live.app[BUS].publish(after[0])
            await peer.app[BUS].publish(after[1])  # reaches i1 through NATS again
            assert [e["id"] for e in await _events(ws, 2)] == [e.id for e in after]
        finally:
            await ws.close()
    finally:
        await stop_live_api(peer, peer_runner)
        await receiver.stop()
        await stop_live_api(live, runner)
        await proxy.stop()


async def test_two_instances_claim_each_webhook_delivery_once(cluster_names: ClusterNames, tmp_path: Path) -> None:
    """The outbox stays in Postgres: instances claim due rows with SKIP LOCKED, never the same one twice."""
    settings = [instance_settings(cluster_names, tmp_path / f"s{n}", f"s{n}") for n in (1, 2)]
    share_master_key(*settings)
    first = await ControlPlane.open(settings[0])
    second = await ControlPlane.open(settings[1])
    try:
        tenant = (await first.tenants.create(TenantCreate(name="acme"))).id
        await first.webhooks.create(tenant, WebhookCreate(url="http://127.0.0.1:9/hook", events=["*"]))
        bus = EventBus(first.store)  # no delivery worker: the rows stay pending for the claims below
        call_id = await _call(first, tenant)
        await bus.publish_all([_dtmf(tenant, call_id, seq) for seq in range(1, 201)])

        a: list[str] = []
        b: list[str] = []

        async def claims(control, got: list[str]) -> None:
            # A claim that meets the other's locked rows takes fewer (SKIP LOCKED): claim until all are taken.
            for _ in range(400):
                if len(a) + len(b) >= 200:
                    return
                got += [row["id"] for row in await control.store.claim_deliveries(now_iso(), 7, per_tenant=7)]

        await asyncio.gather(claims(first, a), claims(second, b))
        assert len(a) + len(b) == 200 and len(set(a) | set(b)) == 200, (len(a), len(b), len(set(a) | set(b)))
        assert a and b  # both took part
    finally:
        await second.close()
        await first.close()



async def test_the_stream_keeps_each_event_once_under_its_subject(cluster_names: ClusterNames,
                                                                  tmp_path: Path) -> None:
    import nats

    client = await nats.connect(cluster_names.nats_url)
    js = client.jetstream()
    # A stream left by an older run with other settings is brought to these.
    await js.add_stream(name=cluster_names.stream, subjects=[f"{cluster_names.subject_prefix}.ev.>"], max_age=60)
    nats_section = {"url": cluster_names.nats_url, "stream": cluster_names.stream,
                    "subject_prefix": cluster_names.subject_prefix, "max_age_s": 600}
    started = await start_instances(cluster_names, tmp_path, 2, events={"nats": nats_section})
    (one, _), (two, _) = started
    try:
        info = await js.stream_info(cluster_names.stream)
        assert info.config.max_age == 600 and info.config.duplicate_window == 120, info.config
        assert info.config.subjects == [f"{cluster_names.subject_prefix}.ev.>"]
        tenant, _ = await one.tenant_with_key("acme")
        call_id = await _call(one.control, tenant)
        made = [_dtmf(tenant, call_id, seq) for seq in (1, 2)]
        await one.app[BUS].publish(made[0])
        await two.app[BUS].publish(made[1])
        two.app[BUS].relay.send([made[0]])  # sent again (by any instance): stored once
        subject = f"{cluster_names.subject_prefix}.ev.{tenant}.dtmf.received"
        await _until_async(lambda: _stored(js, cluster_names.stream, 2))
        stored = [await js.get_msg(cluster_names.stream, seq) for seq in (1, 2)]
        assert [m.subject for m in stored] == [subject, subject]
        assert [m.headers["Nats-Msg-Id"] for m in stored] == [e.id for e in made]
        assert [m.headers["Voicectl-Instance"] for m in stored] == ["i1", "i2"]
        await asyncio.sleep(0.2)
        assert (await js.stream_info(cluster_names.stream)).state.messages == 2
    finally:
        await stop_instances(started)
        await client.close()


async def _stored(js, stream: str, count: int) -> bool:
    return (await js.stream_info(stream)).state.messages >= count


async def _until_async(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_instances_creating_the_stream_at_once_both_start(cluster_names: ClusterNames, tmp_path: Path) -> None:
    from runtime.cluster.event_relay import ensure_stream
    from runtime.cluster.link import ClusterLink

    links = [ClusterLink(instance_settings(cluster_names, tmp_path / f"i{n}", f"i{n}").events.nats, f"i{n}")
             for n in range(4)]
    for link in links:
        await link.connect()
    try:
        await asyncio.gather(*(ensure_stream(link, 900) for link in links))
        info = await links[0].jetstream.stream_info(cluster_names.stream)
        assert info.config.max_age == 900
    finally:
        for link in links:
            await link.close()


async def test_a_stream_that_cannot_be_made_is_a_clear_config_error(cluster_names: ClusterNames,
                                                                     tmp_path: Path) -> None:
    import nats

    from runtime.cluster.event_relay import ensure_stream
    from runtime.cluster.link import ClusterLink
    from runtime.config import ConfigError

    client = await nats.connect(cluster_names.nats_url)
    squatter = f"{cluster_names.stream}_other"
    # Another stream already takes the events' subjects.
    await client.jetstream().add_stream(name=squatter, subjects=[f"{cluster_names.subject_prefix}.>"])
    link = ClusterLink(instance_settings(cluster_names, tmp_path / "i1", "i1").events.nats, "i1")
    await link.connect()
    try:
        with pytest.raises(ConfigError, match="events.nats.subject_prefix"):
            await ensure_stream(link, 600)
    finally:
        await link.close()
        await client.jetstream().delete_stream(squatter)
        await client.close()
