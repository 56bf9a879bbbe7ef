"""The HTTP API against a real server on a loopback port, on both backends."""

from __future__ import annotations

from tests.api.support import start_live_api, stop_live_api, with_overrides


def assert_error(body, error: str | None = None) -> None:
    assert set(body) == {"error", "message", "details"}, body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], dict)
    if error:
        assert body["error"] == error, body


async def test_seed_routes_keep_their_shapes(api):
    status, tenant, _ = await api.call("POST", "/api/v1/tenants", api.admin_key, json={"name": "acme"})
    assert status == 201 and tenant["id"].startswith("ten_") and tenant["name"] == "acme"

    status, key, _ = await api.call("POST", "/api/v1/auth/api-keys", api.admin_key,
                                    json={"tenant_id": tenant["id"], "scope": "runtime"})
    assert status == 201 and key["key"].startswith("vk_rt_") and key["id"]
    runtime_key = key["key"]

    status, agent, _ = await api.call("POST", "/api/v1/agents", runtime_key,
                                      json={"name": "front desk", "system_prompt": "Be brief.", "greeting": "Hi!"})
    assert status == 201 and agent["id"].startswith("agt_")
    assert agent["active_version"] == 1 and agent["config"]["greeting"] == "Hi!"

    status, page, _ = await api.call("GET", "/api/v1/agents", runtime_key)
    assert status == 200 and set(page) == {"items", "total", "limit", "offset"}
    assert [a["id"] for a in page["items"]] == [agent["id"]] and page["total"] == 1

    status, got, _ = await api.call("GET", f"/api/v1/agents/{agent['id']}", runtime_key)
    assert status == 200 and got["name"] == "front desk"
    status, patched, _ = await api.call("PATCH", f"/api/v1/agents/{agent['id']}", runtime_key,
                                        json={"greeting": "Hello there"})
    assert status == 200 and patched["latest_version"] == 2 and patched["active_version"] == 1
    assert patched["config"]["greeting"] == "Hi!"  # the draft is not live until promoted

    # Promotion is a control-plane change: admin only.
    status, body, _ = await api.call("POST", f"/api/v1/agents/{agent['id']}/promote", runtime_key, json={})
    assert status == 403
    assert_error(body, "forbidden")
    status, promoted, _ = await api.call("POST", f"/api/v1/agents/{agent['id']}/promote", api.admin_key,
                                         tenant_id=tenant["id"], json={})
    assert status == 200 and promoted["active_version"] == 2 and promoted["config"]["greeting"] == "Hello there"

    status, versions, _ = await api.call("GET", f"/api/v1/agents/{agent['id']}/versions", runtime_key)
    assert [(v["version"], v["status"]) for v in versions["items"]] == [(1, "retired"), (2, "active")]

    status, _, _ = await api.call("DELETE", f"/api/v1/agents/{agent['id']}", runtime_key)
    assert status == 204
    status, body, _ = await api.call("GET", f"/api/v1/agents/{agent['id']}", runtime_key)
    assert status == 404
    assert_error(body, "not_found")


async def test_api_key_rules(api):
    tenant_id, runtime_key = await api.tenant_with_key("keys")
    # tenant_id required for runtime keys, absent for admin keys.
    status, body, _ = await api.call("POST", "/api/v1/auth/api-keys", api.admin_key, json={"scope": "runtime"})
    assert status == 422
    assert_error(body, "validation_error")
    status, body, _ = await api.call("POST", "/api/v1/auth/api-keys", api.admin_key,
                                     json={"scope": "admin", "tenant_id": tenant_id})
    assert status == 422
    status, admin2, _ = await api.call("POST", "/api/v1/auth/api-keys", api.admin_key, json={"scope": "admin"})
    assert status == 201 and admin2["key"].startswith("vk_admin_") and admin2["tenant_id"] is None
    # Runtime keys cannot mint keys.
    status, body, _ = await api.call("POST", "/api/v1/auth/api-keys", runtime_key,
                                     json={"scope": "runtime", "tenant_id": tenant_id})
    assert status == 403
    assert_error(body, "forbidden")
    # Lists never show the key or its hash.
    status, page, _ = await api.call("GET", "/api/v1/auth/api-keys", api.admin_key)
    assert status == 200
    for item in page["items"]:
        assert "key" not in item and "key_hash" not in item
        assert item["prefix"] and len(item["last4"]) == 4
    # Revoke takes effect at once.
    status, page, _ = await api.call("GET", "/api/v1/auth/api-keys", runtime_key)
    (own,) = page["items"]
    status, revoked, _ = await api.call("DELETE", f"/api/v1/auth/api-keys/{own['id']}", api.admin_key)
    assert status == 200 and revoked["revoked_at"]
    status, body, _ = await api.call("GET", "/api/v1/agents", runtime_key)
    assert status == 401
    assert_error(body, "unauthorized")


async def test_auth_errors(api):
    status, body, _ = await api.call("GET", "/api/v1/agents")
    assert status == 401
    assert_error(body, "unauthorized")
    status, body, _ = await api.call("GET", "/api/v1/agents", "vk_rt_" + "x" * 40)
    assert status == 401
    status, body, _ = await api.call("GET", "/api/v1/agents", headers={"Authorization": "Basic abc"})
    assert status == 401
    # Admin keys must name the tenant for tenant-scoped routes.
    status, body, _ = await api.call("GET", "/api/v1/agents", api.admin_key)
    assert status == 400
    assert_error(body, "bad_request")
    assert body["details"] == {"header": "X-Tenant-ID"}
    status, body, _ = await api.call("GET", "/api/v1/agents", api.admin_key, tenant_id="ten_missing")
    assert status == 404
    # A disabled tenant's runtime keys stop working.
    tenant_id, runtime_key = await api.tenant_with_key("disabled")
    status, _, _ = await api.call("PATCH", f"/api/v1/tenants/{tenant_id}", api.admin_key, json={"status": "disabled"})
    assert status == 200
    status, body, _ = await api.call("GET", "/api/v1/agents", runtime_key)
    assert status == 403
    assert_error(body, "forbidden")


async def test_error_statuses_have_the_documented_shape(api):
    tenant_id, key = await api.tenant_with_key("errors")
    checks = [
        # 400 malformed JSON
        (await api.call("POST", "/api/v1/agents", key, data=b"{nope",
                        headers={"Content-Type": "application/json"}), 400),
        # 400 bad pagination
        (await api.call("GET", "/api/v1/agents?limit=0", key), 400),
        (await api.call("GET", "/api/v1/agents?limit=abc", key), 400),
        # 404 unknown route, unknown id
        (await api.call("GET", "/api/v1/nothing-here", key), 404),
        (await api.call("GET", "/api/v1/numbers/num_missing", key), 404),
        # 405
        (await api.call("PUT", "/api/v1/agents", key, json={}), 405),
        # 413 body over server.max_body_bytes
        (await api.call("POST", "/api/v1/agents", key, data=b"{" + b" " * 2_000_000 + b"}",
                        headers={"Content-Type": "application/json"}), 413),
        # 415
        (await api.call("POST", "/api/v1/agents", key, data=b"name=x",
                        headers={"Content-Type": "application/x-www-form-urlencoded"}), 415),
        # 422
        (await api.call("POST", "/api/v1/agents", key, json={"name": ""}), 422),
        (await api.call("POST", "/api/v1/agents", key, json=[1, 2]), 400),
    ]
    for (status, body, resp), expected in checks:
        assert status == expected, (expected, body)
        assert_error(body)
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers.get("X-Request-ID")


async def test_conflicts_and_number_validation(api):
    tenant_a, _ = await api.tenant_with_key("a")
    tenant_b, _ = await api.tenant_with_key("b")
    status, body, _ = await api.call("POST", "/api/v1/tenants", api.admin_key, json={"name": "a"})
    assert status == 409
    assert_error(body, "conflict")
    agents = {}
    for tenant in (tenant_a, tenant_b):
        status, agent, _ = await api.call("POST", "/api/v1/agents", api.admin_key, tenant_id=tenant,
                                          json={"name": "desk", "system_prompt": "x"})
        assert status == 201
        agents[tenant] = agent["id"]
    status, number, _ = await api.call("POST", "/api/v1/numbers", api.admin_key, tenant_id=tenant_a,
                                       json={"e164": "+1 (555) 010-0001", "provider": "twilio",
                                             "agent_id": agents[tenant_a]})
    assert status == 201 and number["e164"] == "+15550100001"
    # Unique across tenants, without saying who holds it.
    status, body, _ = await api.call("POST", "/api/v1/numbers", api.admin_key, tenant_id=tenant_b,
                                     json={"e164": "+15550100001", "provider": "twilio", "agent_id": agents[tenant_b]})
    assert status == 409 and tenant_a not in body["message"] and tenant_a not in str(body["details"])
    status, body, _ = await api.call("POST", "/api/v1/numbers", api.admin_key, tenant_id=tenant_b,
                                     json={"e164": "555-0100", "provider": "twilio", "agent_id": agents[tenant_b]})
    assert status == 422 and "E.164" in body["message"]
    # An agent of another tenant is not a valid target.
    status, body, _ = await api.call("POST", "/api/v1/numbers", api.admin_key, tenant_id=tenant_b,
                                     json={"e164": "+15550100002", "provider": "twilio", "agent_id": agents[tenant_a]})
    assert status == 422
    # An agent that still answers a number cannot be deleted.
    status, body, _ = await api.call("DELETE", f"/api/v1/agents/{agents[tenant_a]}", api.admin_key,
                                     tenant_id=tenant_a)
    assert status == 409


async def test_credentials_are_write_only(api):
    tenant_id, key = await api.tenant_with_key("creds")
    secret = "twilio-auth-token-do-not-print-123"
    status, cred, resp = await api.call("PUT", "/api/v1/credentials/twilio", api.admin_key, tenant_id=tenant_id,
                                        json={"fields": {"account_sid": "AC123"}, "secret": secret})
    assert status == 200 and cred["secret_set"] is True and cred["fields"] == {"account_sid": "AC123"}
    for path in ("/api/v1/credentials", "/api/v1/credentials/twilio"):
        status, body, resp = await api.call("GET", path, key)
        assert status == 200 and secret not in str(body)
    status, body, _ = await api.call("PUT", "/api/v1/credentials/twilio", key,
                                     json={"fields": {"account_sid": "AC9"}, "secret": "x"})
    assert status == 403
    status, body, _ = await api.call("PUT", "/api/v1/credentials/twilio", api.admin_key, tenant_id=tenant_id,
                                     json={"fields": {}, "secret": "x"})
    assert status == 422 and "account_sid" in body["message"]
    status, body, _ = await api.call("PUT", "/api/v1/credentials/nosuch", api.admin_key, tenant_id=tenant_id,
                                     json={"fields": {}})
    assert status == 404
    assert await api.control.credentials.secret(tenant_id, "twilio") == secret


async def test_webhook_signing_secret_shown_once(api):
    tenant_id, key = await api.tenant_with_key("hooks")
    status, hook, _ = await api.call("POST", "/api/v1/webhooks", key,
                                     json={"url": "https://example.test/hook", "events": ["voice.call.*"]})
    assert status == 201 and hook["signing_secret"].startswith("whsec_")
    status, got, _ = await api.call("GET", f"/api/v1/webhooks/{hook['id']}", key)
    assert "signing_secret" not in got and "secret_ref" not in got
    status, body, _ = await api.call("POST", "/api/v1/webhooks", key,
                                     json={"url": "https://example.test/hook", "events": ["voice.cal.*"]})
    assert status == 422 and body["details"]["unknown"] == ["voice.cal.*"]


async def test_request_id_and_ops_endpoints(api):
    status, body, resp = await api.call("GET", "/healthz", headers={"X-Request-ID": "abc-123"})
    assert status == 200 and body == {"status": "ok"} and resp.headers["X-Request-ID"] == "abc-123"
    status, body, resp = await api.call("GET", "/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert resp.headers["X-Request-ID"] != "bad id with spaces"
    status, body, _ = await api.call("GET", "/readyz")
    assert status == 200 and body["ready"] is True
    status, text, resp = await api.call("GET", "/metrics")
    assert status == 200 and "voicectl_http_requests_total" in text
    status, doc, _ = await api.call("GET", "/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")


async def test_readyz_reports_a_missing_database(api):
    await api.control.store.db.close()
    status, body, _ = await api.call("GET", "/readyz")
    assert status == 503 and body["ready"] is False and body["checks"]["database"] == "unreachable"


async def test_pagination(api):
    tenant_id, key = await api.tenant_with_key("pages")
    for i in range(7):
        status, _, _ = await api.call("POST", "/api/v1/voice-profiles", key, json={"name": f"v{i}"})
        assert status == 201
    status, page, _ = await api.call("GET", "/api/v1/voice-profiles?limit=3&offset=0", key)
    assert page["total"] == 7 and page["limit"] == 3 and len(page["items"]) == 3
    status, last, _ = await api.call("GET", "/api/v1/voice-profiles?limit=3&offset=6", key)
    assert last["total"] == 7 and len(last["items"]) == 1
    seen = {i["id"] for i in page["items"]} | {i["id"] for i in last["items"]}
    assert len(seen) == 4


async def test_rate_limits(settings):
    tight = {"rate_limits": {"runtime": {"read": {"limit": 3, "window_s": 3600},
                                         "write": {"limit": 2, "window_s": 3600}}}}
    live, runner = await start_live_api(with_overrides(settings, limits=tight))
    try:
        tenant_id, key = await live.tenant_with_key("limited")
        remaining = []
        for _ in range(3):
            status, _, resp = await live.call("GET", "/api/v1/agents", key)
            assert status == 200
            assert resp.headers["X-RateLimit-Limit"] == "3"
            remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
            assert int(resp.headers["X-RateLimit-Reset"]) > 0
        assert remaining == [2, 1, 0]
        status, body, resp = await live.call("GET", "/api/v1/agents", key)
        assert status == 429
        assert_error(body, "rate_limited")
        assert 0 < int(resp.headers["Retry-After"]) <= 3600
        assert resp.headers["X-RateLimit-Remaining"] == "0"
        # Writes are a separate class; errors inside the limit still carry the headers.
        status, body, resp = await live.call("POST", "/api/v1/agents", key, json={"name": ""})
        assert status == 422 and resp.headers["X-RateLimit-Limit"] == "2"
        # Another key of the same tenant has its own budget; admin keys are unlimited by default.
        status, _, resp = await live.call("GET", "/api/v1/agents", live.admin_key, tenant_id=tenant_id)
        assert status == 200 and "X-RateLimit-Limit" not in resp.headers
    finally:
        await stop_live_api(live, runner)
