"""/api/v1/callbacks, /api/v1/calls/{id}/tool-calls, /api/v1/bookings and /api/v1/orders over a
live server on both backends: what they answer, and a clear error for every kind of bad input."""

from __future__ import annotations

from runtime.ids import new_id, now_iso
from tests.calls.support import insert_call


async def _task(api, tenant_id: str, number: str = "+15550109000", **extra) -> dict:
    task, _ = await api.control.callbacks.create(tenant_id, number=number, reason="call me", source="tool", **extra)
    return task


async def test_tenant_callback_settings_are_bounded(api) -> None:
    tenant_id, _ = await api.tenant_with_key("acme")
    status, tenant, _ = await api.call("GET", f"/api/v1/tenants/{tenant_id}", api.admin_key)
    assert (tenant["callback_sla_minutes"], tenant["callback_auto_dial"]) == (240, False)
    status, tenant, _ = await api.call("PATCH", f"/api/v1/tenants/{tenant_id}", api.admin_key,
                                       json={"callback_sla_minutes": 15, "callback_auto_dial": True})
    assert status == 200 and (tenant["callback_sla_minutes"], tenant["callback_auto_dial"]) == (15, True)
    for body in ({"callback_sla_minutes": 0}, {"callback_sla_minutes": 43201}, {"callback_sla_minutes": "soon"},
                 {"callback_auto_dial": "maybe"}, {"callback_sla_minutes": None}):
        status, error, _ = await api.call("PATCH", f"/api/v1/tenants/{tenant_id}", api.admin_key, json=body)
        assert status == 422 and error["error"] == "validation_error", (body, error)


async def test_the_queue_through_the_api_and_its_errors(api) -> None:
    tenant_id, key = await api.tenant_with_key("acme")
    other_id, other_key = await api.tenant_with_key("other")
    first = await _task(api, tenant_id)
    second = await _task(api, tenant_id, "+15550109001")
    status, page, _ = await api.call("GET", "/api/v1/callbacks", key)
    assert status == 200 and [t["id"] for t in page["items"]] == [first["id"], second["id"]] and page["total"] == 2
    assert page["items"][0]["overdue"] is False and page["items"][0]["number"] == "+15550109000"
    status, page, _ = await api.call("GET", "/api/v1/callbacks", api.admin_key, tenant_id=tenant_id,
                                     params={"status": "active", "limit": "1"})
    assert status == 200 and len(page["items"]) == 1 and page["total"] == 2
    assert (await api.call("GET", "/api/v1/callbacks", other_key))[1]["total"] == 0
    for query, word in (({"status": "finished"}, "status"), ({"limit": "0"}, "limit"), ({"offset": "x"}, "limit")):
        status, error, _ = await api.call("GET", "/api/v1/callbacks", key, params=query)
        assert status == 400 and word in error["message"], (query, error)
    status, shown, _ = await api.call("GET", f"/api/v1/callbacks/{first['id']}", key)
    assert status == 200 and shown["reason"] == "call me"
    assert (await api.call("GET", f"/api/v1/callbacks/{first['id']}", other_key))[0] == 404
    assert (await api.call("GET", "/api/v1/callbacks/cb_nope", key))[0] == 404

    path = f"/api/v1/callbacks/{first['id']}"
    bad_bodies = [
        ("assign", {}, "assignee"), ("assign", {"assignee": ""}, "assignee"), ("assign", {"assignee": "x" * 101},
                                                                                 "assignee"),
        ("assign", {"assignee": "Ada", "notes": "n" * 2001}, "notes"), ("assign", {"assignee": "Ada", "x": 1}, "x"),
        ("complete", {"disposition": ""}, "disposition"), ("complete", {"disposition": "d" * 101}, "disposition"),
        ("cancel", {"notes": 5}, "notes"),
        ("place", {"from": "nowhere"}, "from"), ("place", {"machine_detection": "maybe"}, "machine_detection"),
        ("place", {"timeout_s": 0}, "timeout_s"), ("place", {"timeout_s": 601}, "timeout_s"),
        ("place", {"agent_id": 5}, "agent_id"),
    ]
    for action, body, field in bad_bodies:
        status, error, _ = await api.call("POST", f"{path}/{action}", key, json=body)
        assert status == 422 and field in str(error["details"]), (action, body, error)
    status, error, _ = await api.call("POST", f"{path}/assign", key, data=b"{not json",
                                      headers={"Content-Type": "application/json"})
    assert status == 400 and error["error"] == "bad_request"
    status, assigned, _ = await api.call("POST", f"{path}/assign", key, json={"assignee": "Ada", "notes": "mine"})
    assert status == 200 and assigned["assignee"] == "Ada"
    assert (await api.call("POST", f"{path}/assign", other_key, json={"assignee": "Eve"}))[0] == 404
    # Placing needs a number that can dial out: none here, so 422, and the task waits as before.
    status, error, _ = await api.call("POST", f"{path}/place", key, json={})
    assert status == 422 and "twilio or livekit number" in error["message"], error
    assert (await api.call("GET", path, key))[1]["status"] == "open"
    status, done, _ = await api.call("POST", f"{path}/complete", key, json={"disposition": "reached"})
    assert status == 200 and (done["status"], done["disposition"]) == ("done", "reached")
    for action, body in (("complete", {}), ("cancel", {}), ("assign", {"assignee": "Bo"}), ("place", {})):
        status, error, _ = await api.call("POST", f"{path}/{action}", key, json=body)
        assert status == 409 and error["error"] == "callback_closed" and error["details"]["status"] == "done"
    status, canceled, _ = await api.call("POST", f"/api/v1/callbacks/{second['id']}/cancel", api.admin_key,
                                         tenant_id=tenant_id, json={"notes": "wrong number"})
    assert status == 200 and canceled["status"] == "canceled"
    topics, _ = await api.control.store.call_events.list(tenant_id=tenant_id, equals={"topic": "callback.completed"})
    assert len(topics) == 2


async def test_a_calls_tool_calls_and_the_booking_packs_records(api) -> None:
    tenant_id, key = await api.tenant_with_key("acme")
    _, other_key = await api.tenant_with_key("other")
    call_id = await insert_call(api.control, tenant_id)
    store, now = api.control.store, now_iso()
    for n, name in enumerate(("check_availability", "create_booking", "end_call")):
        await store.tool_calls.insert({
            "id": f"tc_{n}", "tenant_id": tenant_id, "call_id": call_id, "name": name, "arguments": {"n": n},
            "result": {"ok": True}, "status": "ok", "latency_ms": n, "created_at": now})
    status, page, _ = await api.call("GET", f"/api/v1/calls/{call_id}/tool-calls", key, params={"limit": "2"})
    assert status == 200 and [t["name"] for t in page["items"]] == ["check_availability", "create_booking"]
    assert page["total"] == 3 and page["items"][0]["arguments"] == {"n": 0}
    assert (await api.call("GET", f"/api/v1/calls/{call_id}/tool-calls", other_key))[0] == 404
    assert (await api.call("GET", f"/api/v1/calls/{call_id}/tool-calls", key, params={"limit": "201"}))[0] == 400
    booking_id, order_id = new_id("bkg"), new_id("ord")
    await store.bookings.insert({
        "id": booking_id, "tenant_id": tenant_id, "call_id": call_id, "reference": "ABC234", "day": "2030-06-01",
        "time": "19:30", "slot": "19:30", "table_no": 1, "party_size": 2, "name": "Ada", "phone": "+15550109000",
        "status": "confirmed", "created_at": now})
    await store.orders.insert({
        "id": order_id, "tenant_id": tenant_id, "call_id": call_id, "reference": "ORD234",
        "items": [{"name": "margherita", "qty": 2}], "total_cents": 2200, "currency": "USD", "pickup_time": "18:00",
        "name": None, "phone": "+15550109000", "status": "placed", "created_at": now})
    status, page, _ = await api.call("GET", "/api/v1/bookings", key, params={"day": "2030-06-01"})
    assert status == 200 and [b["reference"] for b in page["items"]] == ["ABC234"]
    assert (await api.call("GET", "/api/v1/bookings", key, params={"day": "2030-06-02"}))[1]["total"] == 0
    assert (await api.call("GET", "/api/v1/bookings", key, params={"call_id": call_id}))[1]["total"] == 1
    status, error, _ = await api.call("GET", "/api/v1/bookings", key, params={"day": "tomorrow"})
    assert status == 400 and "day" in error["message"]
    status, booking, _ = await api.call("GET", f"/api/v1/bookings/{booking_id}", key)
    assert status == 200 and booking["party_size"] == 2
    status, page, _ = await api.call("GET", "/api/v1/orders", key)
    assert status == 200 and page["items"][0]["items"] == [{"name": "margherita", "qty": 2}]
    status, order, _ = await api.call("GET", f"/api/v1/orders/{order_id}", key)
    assert status == 200 and order["total_cents"] == 2200
    for path in (f"/api/v1/bookings/{booking_id}", f"/api/v1/orders/{order_id}"):
        assert (await api.call("GET", path, other_key))[0] == 404
    assert (await api.call("GET", "/api/v1/orders", other_key))[1]["total"] == 0
    assert (await api.call("GET", "/api/v1/orders/ord_nope", key))[0] == 404
