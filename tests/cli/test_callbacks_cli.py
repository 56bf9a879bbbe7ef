"""The CLI's callback queue, bookings, orders and a call's tool calls: what each command prints,
and a readable message with the right exit code for bad input."""

from __future__ import annotations

from typing import Any

from runtime.ids import new_id, now_iso
from tests.cli.test_cli import Cli, cli, ready  # noqa: F401 - the fixtures

__all__ = ["cli", "ready"]


def _tenant_id(ready: Cli) -> str:
    return ready.json("tenant", "show", "acme")["id"]


def _task(ready: Cli, tenant_id: str, number: str, **extra: Any) -> dict:
    async def make(plane: Any) -> dict:
        return (await plane.callbacks.create(tenant_id, number=number, reason="about the party", source="tool",
                                             **extra))[0]

    return ready.plane(make)


def _call_with_records(ready: Cli, tenant_id: str) -> dict[str, str]:
    ids = {"call": new_id("call"), "booking": new_id("bkg"), "order": new_id("ord")}

    async def make(plane: Any) -> None:
        store, now = plane.store, now_iso()
        await store.voice_calls.insert({
            "id": ids["call"], "tenant_id": tenant_id, "agent_id": None, "agent_version": None, "number_id": None,
            "provider": "twilio", "provider_call_id": None, "direction": "inbound", "from_number": "+15550000001",
            "to_number": "+15551230001", "status": "ended", "end_reason": "agent_ended", "hangup_by": "agent",
            "started_at": now, "connected_at": now, "ended_at": now, "duration_ms": 42000,
            "summary": {"text": "Inbound call, 42 s; outcome booked.", "outcome": "booked", "intent": "book"},
            "latency": {}, "metadata": {}, "trace_id": "tr", "created_at": now, "updated_at": now,
            "outcome": "booked", "llm_provider": "rules"})
        await store.tool_calls.insert({
            "id": new_id("tc"), "tenant_id": tenant_id, "call_id": ids["call"], "name": "create_booking",
            "arguments": {"party_size": 2}, "result": {"reference": "ABC234"}, "status": "ok", "latency_ms": 3,
            "created_at": now})
        await store.bookings.insert({
            "id": ids["booking"], "tenant_id": tenant_id, "call_id": ids["call"], "reference": "ABC234",
            "day": "2030-06-01", "time": "19:30", "slot": "19:30", "table_no": 1, "party_size": 2, "name": "Ada",
            "phone": "+15550000001", "status": "confirmed", "created_at": now})
        await store.orders.insert({
            "id": ids["order"], "tenant_id": tenant_id, "call_id": ids["call"], "reference": "ORD234",
            "items": [{"name": "tiramisu", "qty": 2}], "total_cents": 1300, "currency": "USD", "pickup_time": None,
            "name": None, "phone": "+15550000001", "status": "placed", "created_at": now})

    ready.plane(make)
    return ids


def test_tenant_callback_settings(ready: Cli) -> None:
    tenant = ready.json("tenant", "update", "acme", "--callback-sla-minutes", "30", "--callback-auto-dial")
    assert (tenant["callback_sla_minutes"], tenant["callback_auto_dial"]) == (30, True)
    tenant = ready.json("tenant", "update", "acme", "--no-callback-auto-dial")
    assert (tenant["callback_sla_minutes"], tenant["callback_auto_dial"]) == (30, False)
    made = ready.json("tenant", "create", "quick", "--callback-sla-minutes", "5")
    assert made["callback_sla_minutes"] == 5
    error = ready("tenant", "update", "acme", "--callback-sla-minutes", "0", code=2).stderr
    assert "callback_sla_minutes" in error and "Traceback" not in error


def test_the_queue_from_the_cli(ready: Cli) -> None:
    tenant_id = _tenant_id(ready)
    first = _task(ready, tenant_id, "+15550109000")
    second = _task(ready, tenant_id, "+15550109001")
    listed = ready.json("callbacks", "list", "--tenant", "acme")
    assert [t["id"] for t in listed["items"]] == [first["id"], second["id"]]
    table = ready("callbacks", "list", "--tenant", "acme").stdout
    assert first["id"] in table and "+15550109000" in table and "about the party" in table
    assert ready.json("callbacks", "show", first["id"])["number"] == "+15550109000"  # the tenant found from the id
    assigned = ready.json("callbacks", "assign", first["id"], "--to", "Ada", "--note", "before noon")
    assert assigned["assignee"] == "Ada" and "before noon" in assigned["notes"]
    assert "assigned to Ada" in ready("callbacks", "assign", first["id"], "--to", "Ada").stdout
    assert ready.json("callbacks", "list", "--tenant", "acme", "--assignee", "Ada")["total"] == 1
    done = ready.json("callbacks", "complete", first["id"], "--disposition", "reached")
    assert (done["status"], done["disposition"]) == ("done", "reached")
    assert "canceled" in ready("callbacks", "cancel", second["id"], "--note", "wrong number").stdout
    assert ready.json("callbacks", "list", "--tenant", "acme", "--status", "active")["total"] == 0
    # Bad input: a message and the exit code, never a traceback.
    assert "is done" in ready("callbacks", "complete", first["id"], code=4).stderr
    assert "is canceled" in ready("callbacks", "assign", second["id"], "--to", "Bo", code=4).stderr
    assert "no callback task with id" in ready("callbacks", "show", "cb_nope", code=3).stderr
    ready("tenant", "create", "quick")
    assert "not found" in ready("callbacks", "show", first["id"], "--tenant", "quick", code=3).stderr
    assert "status must be one of" in ready("callbacks", "list", "--tenant", "acme", "--status", "x", code=2).stderr
    third = _task(ready, tenant_id, "+15550109002")
    assert "assignee" in ready("callbacks", "assign", third["id"], "--to", "x" * 101, code=2).stderr
    assert "disposition" in ready("callbacks", "complete", third["id"], "--disposition", "", code=2).stderr
    ready("callbacks", "assign", third["id"], code=2)  # --to is required: click's usage error


def test_place_goes_through_the_running_runtime(ready: Cli, monkeypatch) -> None:
    tenant_id = _tenant_id(ready)
    task = _task(ready, tenant_id, "+15550109000")
    assert "--key" in ready("callbacks", "place", task["id"], code=2).stderr
    monkeypatch.setenv("VOICECTL_API_KEY", "vk_rt_whatever")
    error = ready("callbacks", "place", task["id"], "--url", "http://127.0.0.1:1", code=8).stderr
    assert "could not be reached" in error
    assert "--url must be an http(s) URL" in ready("callbacks", "place", task["id"], "--url", "ftp://x",
                                                   code=2).stderr


def test_bookings_orders_and_a_calls_tool_calls(ready: Cli) -> None:
    tenant_id = _tenant_id(ready)
    ids = _call_with_records(ready, tenant_id)
    assert [b["reference"] for b in ready.json("bookings", "list", "--tenant", "acme")["items"]] == ["ABC234"]
    assert ready.json("bookings", "list", "--tenant", "acme", "--day", "2030-06-02")["total"] == 0
    assert ready.json("bookings", "list", "--tenant", "acme", "--call", ids["call"])["total"] == 1
    assert "ABC234" in ready("bookings", "list", "--tenant", "acme").stdout
    assert ready.json("bookings", "show", ids["booking"])["party_size"] == 2
    assert "not a date" in ready("bookings", "list", "--tenant", "acme", "--day", "soon", code=2).stderr
    assert "no booking with id" in ready("bookings", "show", "bkg_nope", code=3).stderr
    orders = ready("orders", "list", "--tenant", "acme").stdout
    assert "ORD234" in orders and "2 tiramisu" in orders and "13.00 USD" in orders
    assert ready.json("orders", "show", ids["order"])["total_cents"] == 1300
    assert "no order with id" in ready("orders", "show", "ord_nope", code=3).stderr
    shown = ready.json("calls", "show", ids["call"])
    assert [t["name"] for t in shown["tool_calls"]] == ["create_booking"] and shown["outcome"] == "booked"
    text = ready("calls", "show", ids["call"]).stdout
    assert "tool calls" in text and "create_booking" in text and "ABC234" in text
    assert "outcome" in text and "booked" in text and "Inbound call, 42 s" in text
