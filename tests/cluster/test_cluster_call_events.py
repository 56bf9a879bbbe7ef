"""A real call on one instance process, heard by an event subscriber on another (instances as processes)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from runtime.events.topics import matches
from runtime.telephony.twilio.caller import TwilioCaller
from tests.cluster.processes import ProcessCluster, provision
from tests.cluster.support import ClusterNames

TOPICS = ["voice.call.*", "call.*", "dtmf.*", "transcript.created"]


async def test_a_call_on_instance_3_is_heard_in_order_on_instance_1(cluster_names: ClusterNames,
                                                                   tmp_path: Path) -> None:
    world = await provision(cluster_names, tmp_path)
    cluster = await ProcessCluster(cluster_names, tmp_path).start(3)
    one, _, three = cluster.instances
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{one.url}/api/v1/events/ws", headers={"Authorization": f"Bearer {world.key}"})
            await ws.send_json({"type": "subscribe", "topics": TOPICS})
            assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
            async with TwilioCaller(three.url, world.account_sid, world.auth_token) as caller:
                result = await caller.call(world.number, seconds=1.0, dtmf=["4", "2"])
            heard: list[dict] = []
            while not heard or heard[-1]["topic"] not in ("voice.call.completed", "voice.call.failed"):
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                body = msg.json()
                assert body["type"] == "event", body
                heard.append(body["event"])
            await ws.close()
            call_id = heard[0]["call_id"]
            async with http.get(f"{three.url}/api/v1/calls/{call_id}/events?limit=200",
                                headers={"Authorization": f"Bearer {world.key}"}) as resp:
                stored = (await resp.json())["items"]
        assert result.received_s > 0  # the caller heard the agent: the call really ran on instance 3
        assert all(e["call_id"] == call_id for e in heard)
        wanted = [e for e in stored if matches(e["topic"], TOPICS)]
        # Every stored event of those topics, once, in per-call order.
        assert [e["id"] for e in heard] == [e["id"] for e in wanted]
        assert [e["seq"] for e in heard] == sorted(e["seq"] for e in heard)
        assert heard[0]["topic"] == "voice.call.started" and heard[-1]["topic"] == "voice.call.completed"
        assert [e["data"]["digit"] for e in heard if e["topic"] == "dtmf.received"] == ["4", "2"]
    finally:
        cluster.stop()

