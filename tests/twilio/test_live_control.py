"""Live call control through the API on a real Twilio-protocol call: say a line (now or after the
agent), pause and resume the agent, transfer and hang up; other tenants, ended calls and bad input."""

from __future__ import annotations

import asyncio

import pytest

from runtime.api.appkeys import TRACKER
from runtime.telephony.scripted_caller import agent_quiet
from tests.twilio.support import ACCOUNT_SID, NUMBER


async def _connected_call(world):
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    streaming = asyncio.create_task(leg.stream([b"\xff" * 160] * 1500))  # line silence in real time
    await leg.first_media.wait()
    assert await agent_quiet(leg, 0.4, 0.0, 10.0) is not None  # the greeting played out
    row = await world.call_by_sid(call_sid)
    return call_sid, leg, streaming, row["id"]


async def _agent_lines(world, call_id: str) -> list[str]:
    rows, _ = await world.api.control.store.transcripts.list(tenant_id=world.tenant_id,
                                                             equals={"call_id": call_id, "role": "agent"})
    return [r["text"] for r in rows]


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite"])  # speech end to end: the store paths of this flow run on both below
async def test_say_speaks_a_line_as_the_agents_own_and_hangup_ends_the_call(world) -> None:
    call_sid, leg, streaming, call_id = await _connected_call(world)
    try:
        before = len(leg.result.received_pcm)
        status, body, _ = await world.api.call("POST", f"/api/v1/calls/{call_id}/say", world.key,
                                               json={"text": "Your order is ready for pickup."})
        assert status == 202 and body == {"id": call_id, "queued": True, "interrupt": False}, body

        async def said() -> bool:
            return "Your order is ready for pickup." in await _agent_lines(world, call_id)
        await _until(said)
        assert len(leg.result.received_pcm) - before > 8000  # half a second of speech reached the caller
        status, body, _ = await world.api.call("POST", f"/api/v1/calls/{call_id}/hangup", world.key,
                                               json={"reason": "order_done"})
        assert status == 200 and body["status"] == "ended" and body["end_reason"] == "order_done", body
        await leg.wait_closed()
        row = await world.final_call(call_sid)
        assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "order_done", "agent")
        assert world.rest.requests[-1]["form"] == {"Status": "completed"}
        # Over: 409 call_ended, whoever ended it (a repeated hang-up too).
        for path, payload in (("hangup", {}), ("say", {"text": "hi"}), ("transfer", {"to": "+15550109000"})):
            status, body, _ = await world.api.call("POST", f"/api/v1/calls/{call_id}/{path}", world.key, json=payload)
            assert status == 409 and body["error"] == "call_ended", (path, body)
        status, body, _ = await world.api.call("PATCH", f"/api/v1/calls/{call_id}", world.key, json={"ai": "paused"})
        assert status == 409 and body["error"] == "call_ended"
    finally:
        streaming.cancel()


@pytest.mark.parametrize("backend", ["sqlite"])  # speech end to end: the store paths of this flow run on both below
async def test_a_paused_agent_stays_silent_until_resumed(world) -> None:
    call_sid, leg, streaming, call_id = await _connected_call(world)
    try:
        status, body, _ = await world.api.call("PATCH", f"/api/v1/calls/{call_id}", world.key, json={"ai": "paused"})
        assert status == 200 and body == {"id": call_id, "status": "connected", "ai": "paused"}, body
        # A typed caller turn would be answered; paused, it is kept and not answered.
        conversation = world.api.app[TRACKER].get(call_id).conversation
        conversation.feed_text("What are your opening hours?")
        await asyncio.sleep(1.0)
        assert conversation.reply is None and await _agent_lines(world, call_id) == ["Hello, front desk."]
        rows, _ = await world.api.control.store.transcripts.list(tenant_id=world.tenant_id,
                                                                 equals={"call_id": call_id, "role": "caller"})
        assert [r["text"] for r in rows] == ["What are your opening hours?"]
        # The integrator speaks while the agent is paused; then resumes it, and it answers again.
        status, _, _ = await world.api.call("POST", f"/api/v1/calls/{call_id}/say", world.key,
                                            json={"text": "One moment please.", "interrupt": True})
        assert status == 202

        async def said() -> bool:
            return "One moment please." in await _agent_lines(world, call_id)
        await _until(said)
        status, body, _ = await world.api.call("PATCH", f"/api/v1/calls/{call_id}", world.key, json={"ai": "on"})
        assert status == 200 and body["ai"] == "on"
        conversation.feed_text("Thanks, goodbye.")

        async def answered() -> bool:
            return len(await _agent_lines(world, call_id)) >= 3
        await _until(answered)
    finally:
        streaming.cancel()
        await leg.stop(ACCOUNT_SID, call_sid)
        await leg.wait_closed()


async def test_transfer_goes_through_the_bridge(world) -> None:
    call_sid, leg, streaming, call_id = await _connected_call(world)
    try:
        status, body, _ = await world.api.call("POST", f"/api/v1/calls/{call_id}/transfer", world.key,
                                               json={"to": "sip:desk@pbx.example.com"})
        assert status == 200 and body["status"] == "transferring", body
        assert world.rest.requests[-1]["form"]["Twiml"].endswith(
            "<Dial><Sip>sip:desk@pbx.example.com</Sip></Dial></Response>")
        await leg.stop(ACCOUNT_SID, call_sid)
        await leg.wait_closed()
        row = await world.final_call(call_sid)
        assert row["end_reason"] == "transferred"
    finally:
        streaming.cancel()


async def test_bad_requests_other_tenants_and_listing_live_calls(world) -> None:
    call_sid, leg, streaming, call_id = await _connected_call(world)
    try:
        status, page, _ = await world.api.call("GET", "/api/v1/calls?status=live&direction=inbound", world.key)
        assert status == 200 and [c["id"] for c in page["items"]] == [call_id]
        status, page, _ = await world.api.call("GET", "/api/v1/calls?status=live&direction=outbound", world.key)
        assert status == 200 and page["items"] == []
        status, body, _ = await world.api.call("GET", "/api/v1/calls?status=alive", world.key)
        assert status == 400 and body["details"] == {"query": "status"}
        for payload, field in (({"text": ""}, "text"), ({"text": "x" * 2001}, "text"), ({}, "text")):
            status, body, _ = await world.api.call("POST", f"/api/v1/calls/{call_id}/say", world.key, json=payload)
            assert status == 422 and field in str(body["details"]), body
        status, body, _ = await world.api.call("POST", f"/api/v1/calls/{call_id}/transfer", world.key,
                                               json={"to": "not a number"})
        assert status == 422, body
        status, body, _ = await world.api.call("PATCH", f"/api/v1/calls/{call_id}", world.key, json={"ai": "off"})
        assert status == 422, body
        status, body, _ = await world.api.call("POST", "/api/v1/calls/call_nope/hangup", world.key, json={})
        assert status == 404 and body["error"] == "not_found"
        # Another tenant's key: the call does not exist for it.
        _, other = await world.api.tenant_with_key("other")
        for method, path, payload in (("POST", "hangup", {}), ("POST", "say", {"text": "hi"}),
                                      ("PATCH", "", {"ai": "paused"})):
            url = f"/api/v1/calls/{call_id}" + (f"/{path}" if path else "")
            status, body, _ = await world.api.call(method, url, other, json=payload)
            assert status == 404, (path, body)
        assert (await world.call_by_sid(call_sid))["status"] == "connected"
        # A call still ringing (no media yet) cannot speak or be transferred.
        ringing_sid, _ = await world.caller().dial(NUMBER)
        ringing_id = (await world.call_by_sid(ringing_sid))["id"]
        for path, payload in (("say", {"text": "hi"}), ("transfer", {"to": "+15550109000"})):
            status, body, _ = await world.api.call("POST", f"/api/v1/calls/{ringing_id}/{path}", world.key,
                                                   json=payload)
            assert status == 409 and body["error"] == "call_not_connected", body
    finally:
        streaming.cancel()
        await leg.stop(ACCOUNT_SID, call_sid)
        await leg.wait_closed()


async def test_the_cli_drives_a_live_call_through_the_runtime(world, tmp_path, monkeypatch) -> None:
    from tests.cli.test_cli import Cli

    cli = Cli(tmp_path / "unused.yaml")  # --url given: no config is read
    call_sid, leg, streaming, call_id = await _connected_call(world)
    base = ["--url", world.api.base_url]
    try:
        monkeypatch.setenv("VOICECTL_API_KEY", world.key)
        result = await asyncio.to_thread(cli, "calls", "say", call_id, "Hello from the CLI.", *base)
        assert result.stdout == f"queued on {call_id}\n"
        result = await asyncio.to_thread(cli, "calls", "pause", call_id, *base, "--json")
        assert '"ai": "paused"' in result.stdout
        await asyncio.to_thread(cli, "calls", "resume", call_id, *base)
        # An admin key names the tenant with --tenant.
        monkeypatch.delenv("VOICECTL_API_KEY")
        admin = ["--key", world.api.admin_key, "--tenant", world.tenant_id]
        await asyncio.to_thread(cli, "calls", "hangup", call_id, "--reason", "cli_done", *base, *admin)
        row = await world.final_call(call_sid)
        assert (row["end_reason"], row["hangup_by"]) == ("cli_done", "agent")
        result = await asyncio.to_thread(cli, "calls", "hangup", call_id, *base, *admin, code=4)
        assert "has ended" in result.stderr
        await asyncio.to_thread(cli, "calls", "say", "call_nope", "x", *base, *admin, code=3)
        await asyncio.to_thread(cli, "calls", "say", call_id, "x", "--url", "http://127.0.0.1:9", *admin, code=8)
        result = await asyncio.to_thread(cli, "calls", "pause", call_id, *base, code=2)
        assert "VOICECTL_API_KEY" in result.stderr
    finally:
        streaming.cancel()
