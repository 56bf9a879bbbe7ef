"""POST /api/v1/calls on both backends: bad input gets a clear error and stores nothing, the
toll-fraud bounds (prefixes, the daily cap, concurrency, the start pace), calls that are not
answered (busy, no answer, Twilio refusing, canceled), and callbacks that are not Twilio's."""

from __future__ import annotations

import asyncio
import json

from runtime.config import RateLimit, Settings
from tests.api.support import start_live_api, stop_live_api, with_overrides
from tests.twilio.calls_peer import Callee
from tests.twilio.outbound_support import CALLEE, events, final, outbound_agent, place, states, until
from tests.twilio.support import ACCOUNT_SID, NUMBER, start_world, stop_world


async def _outbound_rows(world) -> list[dict]:
    rows, _ = await world.api.control.store.voice_calls.list(tenant_id=world.tenant_id,
                                                            equals={"direction": "outbound"}, limit=100)
    return rows


async def test_bad_requests_are_clear_errors_and_store_nothing(world) -> None:
    agent_id = await outbound_agent(world)
    other_tenant, other_key = await world.api.tenant_with_key("other")
    other_agent = await world.api.front_desk(other_tenant, other_key, "+15550107999", "twilio",
                                             {"account_sid": "AC" + "2" * 32}, "other-token")
    cases = [
        ({"to": "not a number"}, 422, "validation_error", "to"),
        ({"from": "+15550100000"}, 422, "validation_error", "from"),  # nobody's number
        ({"from": "+15550107999"}, 422, "validation_error", "from"),  # another tenant's number
        ({"to": "+442071838750"}, 422, "destination_not_allowed", "to"),  # not a +1 number like the tenant's
        ({"agent_id": "agt_nope"}, 404, "not_found", "agent_id"),
        ({"agent_id": other_agent}, 404, "not_found", "agent_id"),
        ({"machine_detection": "voicemail"}, 422, "validation_error", "machine_detection"),  # no voicemail_message
        ({"machine_detection": "maybe"}, 422, "validation_error", "machine_detection"),
        ({"timeout_s": 0}, 422, "validation_error", "timeout_s"),
        ({"timeout_s": 601}, 422, "validation_error", "timeout_s"),
        ({"variables": {"bad name": "x"}}, 422, "validation_error", "variables"),
        ({"variables": {"nested": {"a": 1}}}, 422, "validation_error", "variables"),
        ({"variables": {"long": "x" * 501}}, 422, "validation_error", "variables"),
        ({"variables": {f"v{n}": n for n in range(51)}}, 422, "validation_error", "variables"),
        ({"surprise": True}, 422, "validation_error", "surprise"),
    ]
    for body, status, error, field in cases:
        data = await place(world, expect=status, **body)
        assert data["error"] == error and field in str(data["details"]), (body, data)
    # The number's own agent has no voicemail_message; agent_id's has one, and no credential: 409.
    status, _, _ = await world.api.call("DELETE", "/api/v1/credentials/twilio", world.api.admin_key,
                                        tenant_id=world.tenant_id)
    assert status == 204
    data = await place(world, expect=409, agent_id=agent_id, machine_detection="voicemail")
    assert data["error"] == "conflict" and data["details"] == {"provider": "twilio"}
    assert await _outbound_rows(world) == [] and world.rest.calls.created == []


async def test_prefixes_default_to_the_country_codes_of_the_tenants_numbers(world) -> None:
    world.rest.calls.callees["+4930123456"] = Callee("busy")
    data = await place(world, expect=422, to="+4930123456")
    assert data["details"] == {"field": "to", "allowed_prefixes": ["+1"]}
    status, tenant, _ = await world.api.call("PATCH", f"/api/v1/tenants/{world.tenant_id}", world.api.admin_key,
                                             json={"outbound_allowed_prefixes": ["+49 30", "+1555"]})
    assert status == 200 and tenant["outbound_allowed_prefixes"] == ["+4930", "+1555"]
    made = await place(world, to="+4930123456")
    assert (await final(world, made["id"]))["end_reason"] == "busy"
    data = await place(world, expect=422, to="+14155550100")  # +1 but not +1555
    assert data["details"]["allowed_prefixes"] == ["+4930", "+1555"]
    status, tenant, _ = await world.api.call("PATCH", f"/api/v1/tenants/{world.tenant_id}", world.api.admin_key,
                                             json={"outbound_allowed_prefixes": None})
    assert status == 200 and tenant["outbound_allowed_prefixes"] is None
    await place(world, expect=422, to="+4930123456")
    status, body, _ = await world.api.call("PATCH", f"/api/v1/tenants/{world.tenant_id}", world.api.admin_key,
                                           json={"outbound_allowed_prefixes": ["49"]})
    assert status == 422 and "dialling prefix" in body["message"]


async def test_the_daily_cap_and_the_tenants_concurrency_limit(world) -> None:
    status, _, _ = await world.api.call("PATCH", f"/api/v1/tenants/{world.tenant_id}", world.api.admin_key,
                                        json={"max_outbound_per_day": 2, "max_concurrent_calls": 1})
    assert status == 200
    world.rest.calls.callees[CALLEE] = Callee("no-answer")
    first = await place(world, timeout_s=30)  # rings on
    data = await place(world, expect=429)
    assert data["error"] == "tenant_call_limit" and data["details"] == {"limit": 1}
    status, body, _ = await world.api.call("POST", f"/api/v1/calls/{first['id']}/hangup", world.key, json={})
    assert status == 200 and (body["status"], body["end_reason"]) == ("failed", "canceled"), body
    await place(world, expect=201, to="+15550123457")
    data = await place(world, expect=429)  # two placed today: none left, whatever became of them
    assert data["error"] == "daily_outbound_limit" and data["details"] == {"limit": 2, "placed": 2}
    assert len(await _outbound_rows(world)) == 2
    # An admin key names the tenant with X-Tenant-ID: the same tenant, the same cap.
    data = await place(world, expect=429, key=world.api.admin_key, tenant_id=world.tenant_id)
    assert data["error"] == "daily_outbound_limit"


async def test_calls_not_answered_fail_with_their_reason(world) -> None:
    world.rest.calls.callees["+15550123401"] = Callee("busy")
    world.rest.calls.callees["+15550123402"] = Callee("no-answer")
    world.rest.calls.callees["+15550123403"] = Callee("failed")
    busy = await place(world, to="+15550123401")
    no_answer = await place(world, to="+15550123402", timeout_s=1)
    failed = await place(world, to="+15550123403")
    for made, reason, message in ((busy, "busy", "Twilio: busy (SIP 486)"),
                                  (no_answer, "no_answer", "Twilio: no-answer (SIP 487)"),
                                  (failed, "carrier_error", "Twilio: failed (SIP 404)")):
        row = await final(world, made["id"], 10)
        assert (row["status"], row["end_reason"], row["connected_at"]) == ("failed", reason, None), row
        assert await states(world, made["id"]) == ["queued", "dialing", "ringing", "failed"]
        topics = [e["topic"] for e in await events(world, made["id"])]
        assert topics[0] == "voice.call.started" and topics[-1] == "voice.call.failed"
        assert [e["payload"] for e in await events(world, made["id"])][-1] == {"reason": reason, "message": message}
    assert [c.form["Timeout"] for c in world.rest.calls.created] == ["30", "1", "30"]
    # Twilio refusing Calls.create: failed at once, with Twilio's code and message.
    world.rest.calls.fail_create = (400, {"code": 21215, "message": "Geo Permission configuration is not permitting call"})
    refused = await place(world, to="+15550123404")
    row = await final(world, refused["id"])
    assert (row["status"], row["end_reason"]) == ("failed", "carrier_error")
    assert await states(world, refused["id"]) == ["queued", "failed"]
    failed_event = (await events(world, refused["id"]))[-1]["payload"]
    assert failed_event["message"] == "Twilio refused the call: 21215 Geo Permission configuration is not permitting call"


async def test_a_call_hung_up_before_the_answer_is_canceled_and_one_still_queued_never_dialled(world) -> None:
    world.rest.calls.callees[CALLEE] = Callee("no-answer")
    ringing = await place(world, timeout_s=30)
    queued = await place(world, timeout_s=30)  # the tenant starts one call per second: this one waits

    async def is_ringing() -> bool:
        return (await world.call_by_sid(world.rest.calls.created[0].sid) or {}).get("status") == "ringing" \
            if world.rest.calls.created else False
    await until(is_ringing)
    status, body, _ = await world.api.call("POST", f"/api/v1/calls/{queued['id']}/hangup", world.key, json={})
    assert status == 200 and body["status"] == "failed" and body["end_reason"] == "canceled", body
    status, body, _ = await world.api.call("POST", f"/api/v1/calls/{ringing['id']}/hangup", world.key,
                                           json={"reason": "changed_my_mind"})
    assert status == 200 and body["end_reason"] == "canceled", body
    row = await final(world, ringing["id"])
    assert (row["status"], row["end_reason"]) == ("failed", "canceled")
    assert await states(world, queued["id"]) == ["queued", "failed"]
    call = world.rest.calls.created[0]
    assert world.rest.requests[-1] == {**world.rest.requests[-1], "call": call.sid, "form": {"Status": "canceled"}}
    await asyncio.wait_for(call.done.wait(), 5)
    assert call.posts[-1]["params"]["CallStatus"] == "canceled" and call.posts[-1]["status"] == 204
    await asyncio.sleep(1.2)  # the queued call's slot has passed: it was never handed to Twilio
    assert len(world.rest.calls.created) == 1
    # Hanging up again: 409 call_ended, as for any call.
    status, body, _ = await world.api.call("POST", f"/api/v1/calls/{ringing['id']}/hangup", world.key, json={})
    assert status == 409 and body["error"] == "call_ended"


async def test_calls_start_at_the_tenants_pace_and_count_as_live(world) -> None:
    world.rest.calls.callees[CALLEE] = Callee("no-answer")
    made = [await place(world, timeout_s=30) for _ in range(2)]
    status, page, _ = await world.api.call("GET", "/api/v1/calls?status=live&direction=outbound", world.key)
    assert status == 200 and {c["id"] for c in page["items"]} == {m["id"] for m in made}
    assert {c["status"] for c in page["items"]} <= {"queued", "dialing", "ringing"}

    async def all_created() -> bool:
        return len(world.rest.calls.create_times) == 2
    await until(all_created)
    times = world.rest.calls.create_times
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(gap >= 0.95 for gap in gaps), gaps  # limits.max_outbound_cps_per_tenant: 1
    for m in made:
        await world.api.call("POST", f"/api/v1/calls/{m['id']}/hangup", world.key, json={})


async def test_callbacks_that_twilio_did_not_sign_for_the_call_are_refused(world) -> None:
    agent_id = await outbound_agent(world)
    world.rest.calls.callees[CALLEE] = Callee("no-answer")
    made = await place(world, agent_id=agent_id, machine_detection="detect", timeout_s=30)

    async def dialled() -> bool:
        return bool(world.rest.calls.created) and bool(world.rest.calls.created[0].posts)
    await until(dialled)
    call = world.rest.calls.created[0]
    caller, forger = world.caller(), world.caller(token="not-the-token")
    params = {"CallSid": call.sid, "AccountSid": ACCOUNT_SID, "AnsweredBy": "machine_end_beep",
              "MachineDetectionDuration": "900"}
    amd = call.form["AsyncAmdStatusCallback"]
    assert (await forger.post_url(amd, params))[0] == 403
    other = amd.replace(made["id"], "call_unknown")
    assert (await caller.post_url(other, params))[0] == 403  # no such call: no tenant to verify with
    voice = call.form["Url"]
    bad_ref = voice.rsplit("=", 1)[0] + "=" + "0" * 32
    assert (await caller.post_url(bad_ref, caller.outbound_voice_params(call.sid, NUMBER, CALLEE)))[0] == 403
    assert (await forger.post_url(voice, caller.outbound_voice_params(call.sid, NUMBER, CALLEE)))[0] == 403
    # Signed, but for another CallSid: the reference answers its own call only.
    status, text = await caller.post_url(voice, caller.outbound_voice_params("CA" + "9" * 32, NUMBER, CALLEE))
    assert status == 200 and "<Hangup />" in text
    # Signed, but not a callback's shape (far more fields than Twilio sends): a clear 400.
    status, text = await caller.post_url(amd, {**params, **{f"X{n}": "1" for n in range(200)}})
    assert status == 400 and "invalid fields" in text, text
    assert [e["topic"] for e in await events(world, made["id"])].count("call.machine_detected") == 0
    await world.api.call("POST", f"/api/v1/calls/{made['id']}/hangup", world.key, json={})


async def test_the_outbound_rate_class(settings: Settings) -> None:
    assert Settings().limits.rate_limits.runtime.outbound == RateLimit(limit=60, window_s=60)
    tight = {"rate_limits": {"runtime": {"outbound": {"limit": 2, "window_s": 60}}}}
    api, runner = await start_live_api(with_overrides(settings, limits=tight))
    try:
        _, key = await api.tenant_with_key("paced")
        for _ in range(2):
            status, body, resp = await api.call("POST", "/api/v1/calls", key, json={})
            assert status == 422 and resp.headers["X-RateLimit-Limit"] == "2"
        status, body, resp = await api.call("POST", "/api/v1/calls", key, json={})
        assert status == 429 and body["details"]["route_class"] == "outbound" and "Retry-After" in resp.headers
        status, _, resp = await api.call("GET", "/api/v1/calls", key)  # other classes are not touched
        assert status == 200
    finally:
        await stop_live_api(api, runner)


async def test_the_cli_places_a_call_through_the_runtime(world, tmp_path, monkeypatch) -> None:
    from tests.cli.test_cli import Cli

    cli = Cli(tmp_path / "unused.yaml")  # --url given: no config is read
    world.rest.calls.callees[CALLEE] = Callee("busy")
    base = ["--url", world.api.base_url]
    monkeypatch.setenv("VOICECTL_API_KEY", world.key)
    result = await asyncio.to_thread(cli, "calls", "place", "--to", CALLEE, "--from", NUMBER, "--var", "name=Ada",
                                     "--var", "party=2", "--timeout", "15", *base, "--json")
    made = json.loads(result.stdout)
    assert made["status"] == "queued"
    row = await final(world, made["id"])
    assert (row["end_reason"], row["variables"]) == ("busy", {"name": "Ada", "party": "2"})
    assert world.rest.calls.created[-1].form["Timeout"] == "15"
    result = await asyncio.to_thread(cli, "calls", "place", "--to", "+442071838750", "--from", NUMBER, *base, code=2)
    assert "outbound_allowed_prefixes" in result.stderr
    await asyncio.to_thread(cli, "calls", "place", "--to", CALLEE, "--from", NUMBER, "--var", "oops", *base, code=2)
    await asyncio.to_thread(cli, "calls", "place", "--to", CALLEE, "--from", NUMBER, "--agent", "agt_nope", *base,
                            code=3)
    monkeypatch.delenv("VOICECTL_API_KEY")
    admin = ["--key", world.api.admin_key, "--tenant", world.tenant_id]
    result = await asyncio.to_thread(cli, "calls", "place", "--to", CALLEE, "--from", NUMBER, *base, *admin)
    assert result.stdout.startswith("placed call_") and result.stdout.endswith("(queued)\n")
    await asyncio.to_thread(cli, "calls", "place", "--to", CALLEE, "--from", NUMBER, "--url", "http://127.0.0.1:9",
                            *admin, code=8)


async def test_a_full_box_answers_busy(settings) -> None:
    world = await start_world(settings, max_calls=1)
    try:
        world.rest.calls.callees[CALLEE] = Callee("no-answer")
        made = await place(world, timeout_s=30)  # the box's one call, ringing
        data = await place(world, expect=503)
        assert data["error"] == "busy" and data["details"] == {"reason": "busy"}
        await world.api.call("POST", f"/api/v1/calls/{made['id']}/hangup", world.key, json={})
        await place(world, expect=201)  # the line is free again
    finally:
        await stop_world(world)
