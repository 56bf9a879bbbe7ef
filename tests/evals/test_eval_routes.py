"""The evaluation and rollout routes with bad input (every one a clear JSON error, never a 500),
who may do what, and the pin that lets a synthetic call reach a version: unusable when wrong,
reused, unsigned or expired (both backends)."""

from __future__ import annotations

from runtime.api.appkeys import TRACKER
from runtime.api.evaluations import EVAL_JOBS
from runtime.control import eval_pins
from runtime.evals.suites import SuiteService
from runtime.ids import new_id, now_iso
from runtime.telephony.twilio.caller import TwilioCaller, new_sid

SUITE = "name: s\nscenarios: [{name: one, turns: [{say: hello}]}]\n"


async def agent_with_draft(api):
    tenant_id, key = await api.tenant_with_key(new_id("t"))
    status, agent, _ = await api.call("POST", "/api/v1/agents", key, json={"name": "desk", "system_prompt": "p"})
    assert status == 201
    status, _, _ = await api.call("PATCH", f"/api/v1/agents/{agent['id']}", key, json={"greeting": "two"})
    assert status == 200
    return tenant_id, key, agent["id"]


async def test_suites_are_listed_and_shown_to_their_tenant(api):
    tenant_id, key, _ = await agent_with_draft(api)
    suite, created = await SuiteService(api.control.store).add(tenant_id, SUITE)
    again, created_again = await SuiteService(api.control.store).add(tenant_id, SUITE)
    assert created and not created_again and again.id == suite.id
    status, page, _ = await api.call("GET", "/api/v1/eval-suites", key)
    assert status == 200 and [s["id"] for s in page["items"]] == [suite.id] and "source" not in page["items"][0]
    status, shown, _ = await api.call("GET", f"/api/v1/eval-suites/{suite.id}", key)
    assert status == 200 and shown["source"] == SUITE and shown["sha256"] == suite.sha256
    for path, code in (("/api/v1/eval-suites/sui_nope", 404), ("/api/v1/eval-suites?limit=0", 400),
                       ("/api/v1/eval-suites?offset=x", 400)):
        status, body, _ = await api.call("GET", path, key)
        assert status == code and body["error"] in ("not_found", "bad_request"), (path, body)


EVALUATION_BAD_INPUT = [
    ({}, 422, "exactly one of suite_id and suite"),
    ({"suite": SUITE, "suite_id": "sui_x"}, 422, "exactly one of suite_id and suite"),
    ({"suite_id": "sui_nope"}, 404, "suite sui_nope not found"),
    ({"suite": "name: s\nscenarios: 3\n"}, 422, "line 2: scenarios: 3 is not of type 'array'"),
    ({"suite": "name: s\nscenarios: [{name: w, turns: [{wav: a.wav}]}]\n"}, 422, "a.wav: the WAV file was not found"),
    ({"suite": SUITE, "version": 9}, 404, "has no version 9"),
    ({"suite": SUITE, "calls": 1000}, 422, "evaluations.max_calls"),
    ({"suite": SUITE, "concurrency": 50}, 422, "concurrency is 1 to"),
    ({"suite": SUITE, "calls": 0}, 422, "calls"),
    ({"suite": SUITE, "colour": "red"}, 422, "colour"),
    ({"suite": 12}, 422, "suite"),
]


async def test_starting_an_evaluation_with_bad_input(api):
    tenant_id, key, agent_id = await agent_with_draft(api)
    for body, status, words in EVALUATION_BAD_INPUT:
        got, answer, _ = await api.call("POST", f"/api/v1/agents/{agent_id}/evaluations", key, json=body)
        assert got == status, (body, answer)
        assert words in answer["message"] or words in str(answer.get("details")), (body, answer)
    listed, page, _ = await api.call("GET", f"/api/v1/agents/{agent_id}/evaluations", key)
    assert listed == 200 and page["items"] == [], "nothing was started"
    assert api.app[EVAL_JOBS].running(tenant_id) == 0, "a refused request leaves no run slot taken"


async def test_evaluation_routes_for_unknown_things(api):
    _, key, agent_id = await agent_with_draft(api)
    for method, path in (("POST", "/api/v1/agents/agt_nope/evaluations"),
                         ("GET", "/api/v1/agents/agt_nope/evaluations"),
                         ("GET", f"/api/v1/agents/{agent_id}/evaluations/evl_nope"),
                         ("GET", "/api/v1/agents/agt_nope/rollout"),
                         ("GET", f"/api/v1/agents/{agent_id}/rollout")):
        status, body, _ = await api.call(method, path, key, json={"suite": SUITE} if method == "POST" else None)
        assert status == 404 and body["error"] == "not_found", (path, body)
    status, body, _ = await api.call("GET", f"/api/v1/agents/{agent_id}/evaluations?limit=500", key)
    assert status == 400


ROLLOUT_BAD_INPUT = [
    ({"version": 2}, 422, "percent"),
    ({"version": 2, "percent": 0}, 422, "percent"),
    ({"version": 2, "percent": 101}, 422, "percent"),
    ({"version": 1, "percent": 10}, 422, "version"),
    ({"version": 9, "percent": 10}, 404, "has no version 9"),
    ({"version": 2, "percent": 10, "stop": {"max_failure_rate": 2}}, 422, "max_failure_rate"),
    ({"version": 2, "percent": 10, "stop": {"min_calls": 0}}, 422, "min_calls"),
    ({"version": 2, "percent": 10, "stop": {"unknown": 1}}, 422, "unknown"),
    ({"version": 2, "percent": 10, "auto_promote_after": 0}, 422, "auto_promote_after"),
    ({"version": "two", "percent": 10}, 422, "version"),
]


async def test_starting_a_rollout_with_bad_input(api):
    tenant_id, _, agent_id = await agent_with_draft(api)
    for body, status, words in ROLLOUT_BAD_INPUT:
        got, answer, _ = await api.call("PUT", f"/api/v1/agents/{agent_id}/rollout", api.admin_key,
                                        tenant_id=tenant_id, json=body)
        assert got == status and words in str(answer), (body, answer)
    status, _, _ = await api.call("GET", f"/api/v1/agents/{agent_id}/rollout", api.admin_key, tenant_id=tenant_id)
    assert status == 404, "nothing was started"


async def test_rollouts_and_gates_are_for_admin_keys_and_a_second_rollout_is_refused(api):
    tenant_id, key, agent_id = await agent_with_draft(api)
    suite, _ = await SuiteService(api.control.store).add(tenant_id, SUITE)
    path = f"/api/v1/agents/{agent_id}/rollout"
    status, body, _ = await api.call("PUT", path, key, json={"version": 2, "percent": 10})
    assert status == 403 and body["error"] == "forbidden"
    status, body, _ = await api.call("PATCH", f"/api/v1/agents/{agent_id}", key,
                                     json={"rollout_required_suite_id": suite.id})
    assert status == 403 and "admin keys" in body["message"]
    status, body, _ = await api.call("PATCH", f"/api/v1/agents/{agent_id}", api.admin_key, tenant_id=tenant_id,
                                     json={"rollout_required_suite_id": "sui_nope"})
    assert status == 422 and "no suite sui_nope" in body["message"]
    status, body, _ = await api.call("PATCH", f"/api/v1/tenants/{tenant_id}", api.admin_key,
                                     json={"rollout_min_eval_score": 0.5})
    assert status == 422 and "needs both" in body["message"]
    status, body, _ = await api.call("PATCH", f"/api/v1/tenants/{tenant_id}", api.admin_key,
                                     json={"rollout_required_suite_id": suite.id, "rollout_min_eval_score": 1.5})
    assert status == 422
    status, body, _ = await api.call("PUT", path, api.admin_key, tenant_id=tenant_id, json={"version": 2, "percent": 10})
    assert status == 200 and body["status"] == "running" and body["started_by"].startswith("key ")
    assert body["arms"]["candidate"]["calls"] == 0 and body["arms"]["base"]["version"] == 1
    status, body, _ = await api.call("PUT", path, api.admin_key, tenant_id=tenant_id, json={"version": 2, "percent": 20})
    assert status == 409 and "already has a running rollout" in body["message"]
    status, body, _ = await api.call("GET", path, key)
    assert status == 200 and body["percent"] == 10
    status, body, _ = await api.call("DELETE", path, key)
    assert status == 403
    status, body, _ = await api.call("DELETE", path, api.admin_key, tenant_id=tenant_id)
    assert status == 200 and (body["status"], body["end_reason"]) == ("stopped", "stopped")
    status, body, _ = await api.call("DELETE", path, api.admin_key, tenant_id=tenant_id)
    assert status == 404


async def test_promotion_through_the_api_is_gated_and_forced_with_a_reason(api):
    tenant_id, _, agent_id = await agent_with_draft(api)
    suite, _ = await SuiteService(api.control.store).add(tenant_id, SUITE)
    status, _, _ = await api.call("PATCH", f"/api/v1/tenants/{tenant_id}", api.admin_key,
                                  json={"rollout_required_suite_id": suite.id, "rollout_min_eval_score": 0.9})
    assert status == 200
    path = f"/api/v1/agents/{agent_id}/promote"
    status, body, _ = await api.call("POST", path, api.admin_key, tenant_id=tenant_id, json={"version": 2})
    assert status == 409 and body["error"] == "evaluation_required"
    assert body["details"] == {"required_suite_id": suite.id, "score": None, "threshold": 0.9, "version": 2,
                               "evaluation_id": None}
    status, body, _ = await api.call("POST", path, api.admin_key, tenant_id=tenant_id, json={"version": 2, "force": True})
    assert status == 422 and "needs a reason" in body["message"]
    status, body, _ = await api.call("POST", path, api.admin_key, tenant_id=tenant_id,
                                     json={"version": 2, "force": True, "reason": "the suite is being rewritten"})
    assert status == 200 and body["active_version"] == 2
    status, version, _ = await api.call("GET", f"/api/v1/agents/{agent_id}/versions/2", api.admin_key,
                                        tenant_id=tenant_id)
    assert (version["promote_forced"], version["promote_reason"]) == (True, "the suite is being rewritten")
    assert version["promoted_by"].startswith("key ")


async def test_a_pin_lets_one_signed_call_through_once(api):
    tenant_id, key, agent_id = await agent_with_draft(api)
    store = api.control.store
    evaluation_id = new_id("evl")
    await store.evaluations.insert({"id": evaluation_id, "tenant_id": tenant_id, "agent_id": agent_id,
                                    "agent_version": 2, "status": "running", "rubric": {}, "created_at": now_iso()})
    pin, secret = await eval_pins.mint(store, tenant_id=tenant_id, evaluation_id=evaluation_id, agent_id=agent_id,
                                       version=2, scenario="one")
    path = f"/webhooks/twilio/voice?eval={pin}&pin={secret}"

    async def dial(auth: str, url: str = path, sign: bool = True) -> tuple[int, str]:
        caller = TwilioCaller(api.base_url, "AC" + "e" * 32, auth, http=api.http)
        return await caller.post_signed(url, caller.voice_params("+15550000000", "+15550001111", new_sid("CA")),
                                        sign=sign)

    for url, auth, sign in ((f"/webhooks/twilio/voice?eval={pin}&pin=wrong", "wrong", True),  # not its secret
                            ("/webhooks/twilio/voice?eval=pin_nope&pin=x", "x", True),  # no such pin
                            (path, "another-key", True),  # not signed with the pin
                            (path, secret, False)):  # not signed at all
        status, text = await dial(auth, url, sign)
        assert status == 403 and "pin" in text or "Signature" in text, (url, status, text)
    status, text = await dial(secret)
    assert status == 200 and "<Connect><Stream" in text, text
    row = await store.eval_pins.get(pin, tenant_id=tenant_id)
    assert row["used_at"] is not None and row["call_id"]
    call = await store.voice_calls.get(row["call_id"], tenant_id=tenant_id)
    assert (call["agent_version"], call["metadata"]["evaluation_id"]) == (2, evaluation_id)
    await api.app[TRACKER].get(call["id"]).end("test_done")  # no media will come: end it now
    status, text = await dial(secret)  # the same pin again: refused
    assert status == 403
    expired, secret2 = await eval_pins.mint(store, tenant_id=tenant_id, evaluation_id=evaluation_id,
                                            agent_id=agent_id, version=2, scenario="one", ttl_s=-1)
    status, _ = await dial(secret2, f"/webhooks/twilio/voice?eval={expired}&pin={secret2}")
    assert status == 403
