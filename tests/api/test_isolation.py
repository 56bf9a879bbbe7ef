"""Tenant isolation over every route of the live router.

A runtime key of tenant A tries every route with tenant B's ids (and B's id in
X-Tenant-ID); B's rows and secrets must be unchanged and nothing of B may
appear in any response. The OpenAPI document must list exactly the router's routes.
"""

from __future__ import annotations

import re

from runtime.api.appkeys import ROUTES, SETTINGS
from runtime.evals.suites import SuiteService
from runtime.ids import new_id, now_iso
from runtime.store.store import ALL_SPECS, Table

PARAM = re.compile(r"{(\w+)}")

SAMPLE_BODIES = {
    "TenantCreate": {"name": "created-by-a"},
    "TenantUpdate": {"name": "renamed-by-a", "status": "disabled"},
    "ApiKeyCreate": {"scope": "runtime", "tenant_id": "<tenant_b>"},
    "AgentCreate": {"name": "agent-of-a", "system_prompt": "p"},
    "AgentUpdate": {"greeting": "changed by a", "name": "renamed-by-a"},
    "PromoteRequest": {"version": 1},
    "VoiceProfileCreate": {"name": "profile-of-a"},
    "VoiceProfileUpdate": {"name": "renamed-by-a"},
    "NumberCreate": {"e164": "+15559990000", "provider": "twilio", "agent_id": "<agent_id>"},
    "NumberUpdate": {"label": "changed by a"},
    "CredentialSet": {"fields": {"account_sid": "ACowned"}, "secret": "stolen"},
    "WebhookCreate": {"url": "https://a.example.test/hook"},
    "WebhookUpdate": {"url": "https://a.example.test/hijack"},
    "WebhookRedeliver": {"failed": True},
    # Calls to B's agent or number: A's key must not reach them.
    "BrowserTokenRequest": {"agent_id": "<agent_id>"},
    "TokenRequest": {"number": "+15550109999", "spawn_agent": True},
    "DispatchRequest": {"room": "b-room", "number": "+15550109999"},
    # Live control of B's call, and sessions on it.
    "HangupRequest": {"reason": "hung_up_by_a"},
    "TransferRequest": {"to": "+15550100000"},
    "SayRequest": {"text": "words of a"},
    "CallUpdate": {"ai": "paused"},
    "TranscribeCreate": {"reference_id": "<call_id>"},
    "SpeakingCreate": {"reference_id": "<call_id>"},
    "SayText": {"text": "words of a"},
    "PlaceCall": {"to": "+15550100001", "from": "+15550109999", "agent_id": "<agent_id>"},
    # B's callback queue.
    "CallbackAssign": {"assignee": "a's agent", "notes": "taken by a"},
    "CallbackComplete": {"disposition": "closed_by_a"},
    "CallbackCancel": {"notes": "canceled by a"},
    "CallbackPlace": {"from": "+15550109999", "agent_id": "<agent_id>"},
    # B's agent evaluated or rolled out by A.
    "EvaluationRequest": {"suite": "name: a\nscenarios: [{name: x, turns: []}]\n"},
    "RolloutStart": {"version": 2, "percent": 50},
}
# Sessions that exist only on a live call (none here): their ids are reached by no one.
LIVE_ONLY = ("transcribe_id", "speaking_id")


async def _provision_b(api) -> dict[str, str]:
    tenant_b, key_b = await api.tenant_with_key("tenant-b")
    ids = {"tenant_id": tenant_b, "provider": "twilio", "version": "1"}
    _, agent, _ = await api.call("POST", "/api/v1/agents", key_b, json={"name": "b-agent", "system_prompt": "b"})
    ids["agent_id"] = agent["id"]
    _, profile, _ = await api.call("POST", "/api/v1/voice-profiles", key_b, json={"name": "b-voice"})
    ids["profile_id"] = profile["id"]
    _, number, _ = await api.call("POST", "/api/v1/numbers", api.admin_key, tenant_id=tenant_b,
                                  json={"e164": "+15550109999", "provider": "twilio", "agent_id": agent["id"]})
    ids["number_id"] = number["id"]
    # A stored suite, an evaluation and a rollout of B's agent (at version 2), before B has a webhook
    # (their events would be delivered while the test runs).
    store, now = api.control.store, now_iso()
    suite, _ = await SuiteService(store).add(tenant_b, "name: b-suite\nscenarios: [{name: x, turns: []}]\n")
    ids["suite_id"] = suite.id
    ids["evaluation_id"] = new_id("evl")
    await store.evaluations.insert({
        "id": ids["evaluation_id"], "tenant_id": tenant_b, "agent_id": agent["id"], "agent_version": 1,
        "status": "done", "score": 1.0, "rubric": {}, "created_at": now, "suite_id": suite.id, "results": []})
    status, _, _ = await api.call("PATCH", f"/api/v1/agents/{agent['id']}", key_b, json={"greeting": "v2"})
    assert status == 200
    status, _, _ = await api.call("PUT", f"/api/v1/agents/{agent['id']}/rollout", api.admin_key, tenant_id=tenant_b,
                                  json={"version": 2, "percent": 10})
    assert status == 200
    status, _, _ = await api.call("PUT", "/api/v1/credentials/twilio", api.admin_key, tenant_id=tenant_b,
                                  json={"fields": {"account_sid": "ACbbbb"}, "secret": "b-secret-token"})
    assert status == 200
    _, hook, _ = await api.call("POST", "/api/v1/webhooks", key_b, json={"url": "https://b.example.test/h"})
    ids["webhook_id"] = hook["id"]
    _, keys, _ = await api.call("GET", "/api/v1/auth/api-keys", key_b)
    ids["key_id"] = keys["items"][0]["id"]
    # A call with a transcript and an event, as the runtime plane will write them.
    call_id, now = new_id("call"), now_iso()
    store = api.control.store
    await store.voice_calls.insert({
        "id": call_id, "tenant_id": tenant_b, "agent_id": agent["id"], "agent_version": 1, "number_id": number["id"],
        "provider": "twilio", "provider_call_id": "CAb", "direction": "inbound", "from_number": "+15550000001",
        "to_number": "+15550109999", "status": "ended", "end_reason": "hangup", "hangup_by": "caller",
        "started_at": now, "connected_at": now, "ended_at": now, "duration_ms": 1000, "summary": {},
        "latency": {}, "metadata": {}, "trace_id": "tr", "created_at": now, "updated_at": now,
    })
    await store.transcripts.insert({
        "id": new_id("trn"), "tenant_id": tenant_b, "call_id": call_id, "seq": 1, "role": "caller",
        "text": "b's private words", "start_ms": 0, "end_ms": 900, "interrupted": False, "created_at": now,
    })
    await store.call_events.insert({
        "id": new_id("evt"), "tenant_id": tenant_b, "call_id": call_id, "seq": 1, "topic": "voice.call.completed",
        "payload": {}, "trace_id": "tr", "created_at": now,
    })
    ids["call_id"] = call_id
    ids["dispatch_id"], ids["egress_id"] = "AD_of_b", "EG_of_b"  # LiveKit's own ids, not rows of ours
    ids["transcribe_id"], ids["speaking_id"] = "trs_of_b", "spk_of_b"
    # A recording of that call, with its file (the audio route streams it to B and the admin).
    recording_id, uri = new_id("rec"), f"{tenant_b}/{call_id}/mixed.wav"
    path = api.app[SETTINGS].recording_dir / uri
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF-placeholder-audio")
    await store.recordings.insert({
        "id": recording_id, "tenant_id": tenant_b, "call_id": call_id, "kind": "mixed", "storage": "local",
        "uri": uri, "format": "wav", "duration_ms": 1000, "size_bytes": path.stat().st_size, "created_at": now,
    })
    ids["recording_id"] = recording_id
    # A callback task, a booking and an order of that call, as its tools make them.
    ids["callback_id"], ids["booking_id"], ids["order_id"] = new_id("cb"), new_id("bkg"), new_id("ord")
    await store.callback_tasks.insert({
        "id": ids["callback_id"], "tenant_id": tenant_b, "call_id": call_id, "number": "+15550000001",
        "reason": "b's private callback", "status": "open", "due_at": "2099-01-01T00:00:00.000000Z", "disposition": None, "notes": None,
        "created_at": now, "updated_at": now, "agent_id": agent["id"], "source": "tool", "scheduled_at": None,
        "attempts": 0, "assignee": None, "last_call_id": None, "overdue_at": None, "completed_at": None,
    })
    await store.bookings.insert({
        "id": ids["booking_id"], "tenant_id": tenant_b, "call_id": call_id, "reference": "BBBBBB", "day": "2030-01-01",
        "time": "19:00", "slot": "19:00", "table_no": 1, "party_size": 2, "name": "b", "phone": "+15550000001",
        "status": "confirmed", "created_at": now,
    })
    await store.orders.insert({
        "id": ids["order_id"], "tenant_id": tenant_b, "call_id": call_id, "reference": "OOOOOO",
        "items": [{"name": "tiramisu", "qty": 1}], "total_cents": 650, "currency": "USD", "pickup_time": None,
        "name": "b", "phone": "+15550000001", "status": "placed", "created_at": now,
    })
    return ids


async def _snapshot(api, tenant_id: str) -> dict[str, list]:
    snapshot = {}
    for spec in ALL_SPECS:
        rows, _ = await Table(spec, api.control.store.db).list(tenant_id=tenant_id, limit=1000)
        snapshot[spec.name] = rows
    snapshot["secret"] = [await api.control.credentials.secret(tenant_id, "twilio")]
    return snapshot


def _body_for(route, ids: dict[str, str]):
    if route.body is None:
        return None
    body = SAMPLE_BODIES[route.body.__name__]
    placeholders = {"<tenant_b>": ids["tenant_id"], "<agent_id>": ids["agent_id"], "<call_id>": ids["call_id"]}
    return {k: placeholders.get(v, v) if isinstance(v, str) else v for k, v in body.items()}


async def test_openapi_lists_exactly_the_routes_of_the_router(api):
    served = {
        (route.method, route.resource.canonical)
        for route in api.app.router.routes()
        if route.method != "HEAD"
    }
    _, doc, _ = await api.call("GET", "/api/v1/openapi.json")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented


async def test_runtime_key_of_a_cannot_read_or_change_anything_of_b(api):
    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    ids = await _provision_b(api)
    tenant_b = ids["tenant_id"]
    before = await _snapshot(api, tenant_b)
    b_markers = {v for k, v in ids.items() if k.endswith("_id")} | {"tenant-b", "b-agent", "b-voice",
                                                                     "+15550109999", "b's private words"}
    routes = api.app[ROUTES]
    tried = 0
    for route in routes:
        if route.auth == "public":
            continue
        path = PARAM.sub(lambda m: ids[m.group(1)], route.path)
        if any(q.name == "room" for q in route.query or ()):
            path += "?room=b-room"
        status, body, _ = await api.call(route.method, path, key_a, tenant_id=tenant_b, json=_body_for(route, ids))
        tried += 1
        assert status < 500, (route.method, route.path, status, body)
        # Nothing of B in the answer beyond what A itself sent (an error may echo the id asked for).
        sent = path + str(_body_for(route, ids))
        leaked = [m for m in b_markers if m in str(body) and m not in sent]
        assert not leaked, (route.method, route.path, leaked, body)
        if PARAM.search(route.path):
            # Every route that names one of B's resources: as if it did not exist, or admin-only.
            # LiveKit routes answer 409 here (no LiveKit project for A); their room scoping by
            # tenant is tested against a Twirp peer in test_livekit_api.
            unconfigured = status == 409 and body.get("error") == "livekit_not_configured"
            assert status in (403, 404) or unconfigured, (route.method, route.path, status, body)
    assert tried >= 25
    after = await _snapshot(api, tenant_b)
    assert after == before
    # And the ids are real: B's own key and the admin key do reach them.
    for route in routes:
        if route.method == "GET" and PARAM.search(route.path) and not any(p in route.path for p in LIVE_ONLY):
            path = PARAM.sub(lambda m: ids[m.group(1)], route.path)
            status, body, _ = await api.call("GET", path, api.admin_key, tenant_id=tenant_b)
            assert status == 200, (path, status, body)


async def test_x_tenant_id_does_not_widen_a_runtime_key(api):
    tenant_a, key_a = await api.tenant_with_key("tenant-a")
    ids = await _provision_b(api)
    status, page, _ = await api.call("GET", "/api/v1/agents", key_a, tenant_id=ids["tenant_id"])
    assert status == 200 and page["total"] == 0
    status, page, _ = await api.call("GET", "/api/v1/tenants", key_a)
    assert [t["id"] for t in page["items"]] == [tenant_a]
    status, page, _ = await api.call("GET", "/api/v1/auth/api-keys", key_a)
    assert {k["tenant_id"] for k in page["items"]} == {tenant_a}
