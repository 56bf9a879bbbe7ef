"""A real call over the Twilio protocol on instance process 2, steered through instance process 1: the
line said through 1 is spoken on the call (the caller hears it, the transcript has it), a speaking
session made through 1 speaks on the socket of 1, and the hang-up through 1 ends the call on 2."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from runtime.telephony.twilio.caller import TwilioCaller
from tests.cluster.processes import ProcessCluster, provision
from tests.cluster.support import ClusterNames
from tests.twilio.support import RestPeer


async def _agent_lines(http: aiohttp.ClientSession, url: str, key: str, call_id: str) -> list[str]:
    async with http.get(f"{url}/api/v1/calls/{call_id}/transcripts?limit=200",
                        headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200
        return [t["text"] for t in (await resp.json())["items"] if t["role"] == "agent"]


async def _until_said(http: aiohttp.ClientSession, url: str, key: str, call_id: str, line: str) -> None:
    for _ in range(200):
        if line in await _agent_lines(http, url, key, call_id):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{line!r} never said: {await _agent_lines(http, url, key, call_id)}")


async def test_a_call_on_process_2_is_steered_through_process_1(cluster_names: ClusterNames, tmp_path: Path) -> None:
    world = await provision(cluster_names, tmp_path)
    rest = RestPeer(account_sid=world.account_sid, token=world.auth_token)  # Twilio's REST API, on loopback
    await rest.start()
    cluster = await ProcessCluster(cluster_names, tmp_path).start(2, telephony={"twilio": {"api_base_url": rest.url}})
    one, two = cluster.instances
    headers = {"Authorization": f"Bearer {world.key}"}
    streaming: asyncio.Task[Any] | None = None
    try:
        async with aiohttp.ClientSession() as http, TwilioCaller(two.url, world.account_sid,
                                                                 world.auth_token) as caller:
            call_sid, answer = await caller.dial(world.number)
            leg = await caller.open_stream(call_sid, answer)
            streaming = asyncio.create_task(leg.stream([b"\xff" * 160] * 3000))  # line silence in real time
            await asyncio.wait_for(leg.first_media.wait(), 10)
            async with http.get(f"{one.url}/api/v1/calls?status=live", headers=headers) as resp:
                (call,) = (await resp.json())["items"]
            call_id = call["id"]
            await _until_said(http, one.url, world.key, call_id, "Hello, front desk.")

            heard_before = len(leg.result.received_pcm)
            async with http.post(f"{one.url}/api/v1/calls/{call_id}/say", headers=headers,
                                 json={"text": "Your order is ready."}) as resp:
                assert resp.status == 202, await resp.text()
            await _until_said(http, one.url, world.key, call_id, "Your order is ready.")
            assert len(leg.result.received_pcm) > heard_before  # it reached the caller on instance 2's stream

            async with http.post(f"{one.url}/api/v1/speakings", headers=headers,
                                 json={"reference_id": call_id}) as resp:
                speaking = await resp.json()
                assert resp.status == 201, speaking
            async with http.ws_connect(f"{one.url}/api/v1/events/ws?token={world.key}") as ws:
                await ws.send_json({"type": "say", "speaking_id": speaking["id"], "text": "Anything else?",
                                    "ref": "a"})
                assert await ws.receive_json(timeout=10) == {"type": "ack", "ref": "a"}
            await _until_said(http, one.url, world.key, call_id, "Anything else?")

            async with http.post(f"{one.url}/api/v1/calls/{call_id}/hangup", headers=headers,
                                 json={"reason": "order_done"}) as resp:
                body = await resp.json()
                assert resp.status == 200 and body["status"] == "ended", body
            await leg.wait_closed()
            async with http.get(f"{one.url}/api/v1/calls/{call_id}", headers=headers) as resp:
                row = await resp.json()
            assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "order_done", "agent"), row
            assert [(r["call"], r["form"]) for r in rest.requests] == [(call_sid, {"Status": "completed"})]
            async with http.post(f"{one.url}/api/v1/calls/{call_id}/say", headers=headers,
                                 json={"text": "Too late."}) as resp:
                assert resp.status == 409 and (await resp.json())["error"] == "call_ended"
    finally:
        if streaming is not None:
            streaming.cancel()
        cluster.stop()
        await rest.stop()
