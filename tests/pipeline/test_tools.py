"""Tools: built-ins, the booking pack on the real store (both backends), tenant HTTP tools against a
local aiohttp server, and CallToolBox's rows and events; last, the demo call end to end with the
rules brain."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from peers.loopback import LOOPBACK_ALLOW
from runtime.control.schemas import TOOL_NAME, AgentConfig
from runtime.control.schemas import HttpTool as HttpToolConfig
from runtime.egress.policy import EgressPolicy
from runtime.events.delivery import SIGNATURE_HEADER, verify
from runtime.events.models import Payload, ToolCalled
from runtime.ids import new_id, now_iso
from runtime.providers.base import LlmRequest, Message, TextDelta, ToolCall, ToolCallRequest
from runtime.providers.llm.rules import DEMO_BOOKING_RULES, RulesBrain
from runtime.store.store import WriteBatch
from runtime.tools.arguments import check_arguments
from runtime.tools.base import ToolContext, ToolResult
from runtime.tools.booking import BookingPack, BookingPolicy
from runtime.tools.builtin import EndCall, LogNote, TransferToHuman
from runtime.tools.http import HttpTool
from runtime.tools.toolbox import CallToolBox
from tests.calls.support import engine, events_of, insert_call, provision

NOON = datetime(2030, 6, 4, 12, 0, tzinfo=UTC)  # a Tuesday, in the future for the store's rows
DAY = "2030-06-04"
CALLER = "+15550000001"
ALL_BUILTINS = ["end_call", "transfer_to_human", "log_note", "check_availability", "create_booking",
                "create_order"]


def ctx_for(tenant_id: str, call_id: str, **kw: Any) -> ToolContext:
    return ToolContext(tenant_id=tenant_id, call_id=call_id, caller=CALLER, **kw)


@dataclass
class Recorder:
    """A fake session emit: commits the row batch as CallSession.emit does, keeps the payloads."""

    payloads: list[Payload] = field(default_factory=list)

    async def __call__(self, payload: Payload, batch: WriteBatch | None = None) -> None:
        if batch is not None:
            await batch.commit()
        self.payloads.append(payload)


# Built-ins


async def test_call_control_builtins():
    ctx = ToolContext("ten_1", "call_1")
    ended = await EndCall().run({}, ctx)
    assert ended.end_call and ended.status == "ok"
    nobody = await TransferToHuman().run({}, ctx)
    assert nobody.status == "error" and nobody.transfer_to is None and "escalation" in nobody.content["error"]
    ctx.escalation_target = "+15550109999"
    moved = await TransferToHuman().run({}, ctx)
    assert moved.transfer_to == "+15550109999" and moved.status == "ok"
    note = await LogNote().run({"note": "  call back after 6  ", "category": "callback"}, ctx)
    assert note.content == {"saved": True, "note": "call back after 6", "category": "callback"}


@pytest.mark.parametrize(("args", "expected", "problems"), [
    ({"date": "2030-06-04", "time": "19:00", "party_size": 2}, {"date": "2030-06-04", "time": "19:00",
                                                                "party_size": 2}, []),
    ({"date": "2030-06-04", "time": "19:00", "party_size": "2"}, None, []),  # coerced
    ({"date": "2030-06-04", "time": "19:00", "party_size": 2.0}, None, []),
    ({"date": "2030-06-04", "time": "19:00"}, None, ["party_size is required"]),
    ({"date": "2030-06-04", "time": "19:00", "party_size": "two"}, None, ["party_size must be integer"]),
    ({"date": "2030-06-04", "time": None, "party_size": True}, None,
     ["party_size must be integer", "time is required"]),
    ({"date": "2030-06-04", "time": "19:00", "party_size": 2, "name": None}, None, []),  # null optional dropped
])
def test_argument_check(args, expected, problems):
    schema = BookingPack(store=None).tools()["create_booking"].spec.parameters  # type: ignore[arg-type]
    checked, found = check_arguments(schema, args)
    assert found == problems
    if expected is not None:
        assert checked == expected
    if not problems:
        assert checked["party_size"] == 2 and "name" not in checked


def test_nested_argument_check():
    schema = BookingPack(store=None).tools()["create_order"].spec.parameters  # type: ignore[arg-type]
    _, found = check_arguments(schema, {"items": [{"qty": 2}, {"name": "tiramisu", "qty": "x"}]})
    assert found == ["items[0].name is required", "items[1].qty must be integer"]
    enum = {"type": "object", "properties": {"size": {"type": "string", "enum": ["s", "m"]}},
            "additionalProperties": False}
    assert check_arguments(enum, {"size": "xl", "extra": 1})[1] == ["size must be one of ['s', 'm']",
                                                                   "extra is not an argument of this tool"]


def test_builtin_specs_are_usable_by_a_model():
    pack = BookingPack(store=None)  # type: ignore[arg-type]
    specs = [t.spec for t in (EndCall(), TransferToHuman(), LogNote(), *pack.tools().values())]
    assert [s.name for s in specs] == ALL_BUILTINS
    for spec in specs:
        assert TOOL_NAME.match(spec.name) and len(spec.description) > 40
        assert spec.parameters["type"] == "object"
        assert set(spec.parameters.get("required", [])) <= set(spec.parameters["properties"])


# The booking pack on the store


@pytest_asyncio.fixture
async def two_tenants(control):
    a = await provision(control, name="acme", e164="+15550100001")
    b = await provision(control, name="other", e164="+15550100002")
    return a, await insert_call(control, a.tenant_id), b, await insert_call(control, b.tenant_id)


def pack_for(control, **policy: Any) -> BookingPack:
    return BookingPack(control.store, "UTC", BookingPolicy(**policy), clock=lambda: NOON)


async def test_availability_decreases_and_fills(control, two_tenants):
    a, call_a, _, _ = two_tenants
    tools = pack_for(control, tables_per_slot=2).tools()
    ctx = ctx_for(a.tenant_id, call_a)
    args = {"date": DAY, "time": "19:00", "party_size": 2}

    first = await tools["check_availability"].run(args, ctx)
    assert first.content == {"date": DAY, "time": "19:00", "party_size": 2, "available": True, "tables_left": 2,
                             "alternatives": []}
    booked = await tools["create_booking"].run({**args, "name": "Anna"}, ctx)
    assert booked.status == "ok" and len(booked.content["reference"]) == 6
    assert booked.content["name"] == "Anna"
    assert (await tools["check_availability"].run({**args, "time": "19:15"}, ctx)).content["tables_left"] == 1
    unnamed = await tools["create_booking"].run(args, ctx)
    assert unnamed.content["name"] == CALLER  # no name: kept under the caller's number

    full = await tools["check_availability"].run(args, ctx)
    assert full.content["available"] is False and full.content["reason"] == "full"
    assert full.content["alternatives"] == ["18:00", "18:30", "19:30"]  # nearest first, earlier on ties
    refused = await tools["create_booking"].run(args, ctx)
    assert refused.status == "error" and refused.content["reason"] == "full"

    rows, _ = await control.store.bookings.list(tenant_id=a.tenant_id, limit=10)
    assert sorted((r["slot"], r["table_no"], r["name"], r["phone"], r["call_id"]) for r in rows) == [
        ("19:00", 1, "Anna", CALLER, call_a), ("19:00", 2, None, CALLER, call_a)]


async def test_tenants_do_not_share_tables(control, two_tenants):
    a, call_a, b, call_b = two_tenants
    tools = pack_for(control, tables_per_slot=1).tools()
    args = {"date": DAY, "time": "20:00", "party_size": 4}
    booked = await tools["create_booking"].run(args, ctx_for(a.tenant_id, call_a))
    assert booked.status == "ok"
    assert (await tools["check_availability"].run(args, ctx_for(a.tenant_id, call_a))).content["available"] is False
    other = await tools["check_availability"].run(args, ctx_for(b.tenant_id, call_b))
    assert other.content["available"] is True and other.content["tables_left"] == 1
    assert await control.store.bookings.get(booked.content["booking_id"], tenant_id=b.tenant_id) is None
    assert (await tools["create_booking"].run(args, ctx_for(b.tenant_id, call_b))).status == "ok"
    for tenant in (a.tenant_id, b.tenant_id):
        rows, total = await control.store.bookings.list(tenant_id=tenant)
        assert total == 1 and rows[0]["tenant_id"] == tenant


async def test_concurrent_bookings_never_overbook(control, two_tenants):
    a, call_a, _, _ = two_tenants
    tools = pack_for(control, tables_per_slot=3).tools()
    ctx = ctx_for(a.tenant_id, call_a)
    results = await asyncio.gather(*(tools["create_booking"].run({"date": DAY, "time": "21:00", "party_size": 2},
                                                                  ctx) for _ in range(6)))
    assert sorted(r.status for r in results) == ["error"] * 3 + ["ok"] * 3
    rows, total = await control.store.bookings.list(tenant_id=a.tenant_id)
    assert total == 3 and sorted(r["table_no"] for r in rows) == [1, 2, 3]


@pytest.mark.parametrize(("args", "reason"), [
    ({"date": DAY, "time": "16:00", "party_size": 2}, "closed"),
    ({"date": DAY, "time": "23:00", "party_size": 2}, "closed"),
    ({"date": DAY, "time": "19:00", "party_size": 12}, "party_too_large"),
    ({"date": "2030-06-03", "time": "19:00", "party_size": 2}, "past"),
])
async def test_unavailable_reasons(control, two_tenants, args, reason):
    a, call_a, _, _ = two_tenants
    result = await pack_for(control).tools()["check_availability"].run(args, ctx_for(a.tenant_id, call_a))
    assert result.content["available"] is False and result.content["reason"] == reason


async def test_bad_dates_and_times_are_errors(control, two_tenants):
    a, call_a, _, _ = two_tenants
    check = pack_for(control).tools()["check_availability"]
    bad = await check.run({"date": "tomorrow", "time": "19:00", "party_size": 2}, ctx_for(a.tenant_id, call_a))
    assert bad.status == "error" and "YYYY" not in bad.content["error"] and "2025-06-01" in bad.content["error"]
    bad = await check.run({"date": DAY, "time": "7pm", "party_size": 2}, ctx_for(a.tenant_id, call_a))
    assert bad.status == "error" and "19:30" in bad.content["error"]


async def test_create_order(control, two_tenants):
    a, call_a, b, _ = two_tenants
    order = pack_for(control).tools()["create_order"]
    ctx = ctx_for(a.tenant_id, call_a)
    placed = await order.run({"items": [{"name": "Margheritas", "qty": 2}, {"name": "lemonade"}],
                              "pickup_time": "18:30", "name": "Bo"}, ctx)
    assert placed.status == "ok"
    assert placed.content["items"] == [{"name": "margherita", "qty": 2}, {"name": "lemonade", "qty": 1}]
    assert placed.content["total"] == "25.50" and placed.content["pickup_time"] == "18:30"
    row = await control.store.orders.get(placed.content["order_id"], tenant_id=a.tenant_id)
    assert row["total_cents"] == 2550 and row["items"] == placed.content["items"] and row["phone"] == CALLER
    assert await control.store.orders.get(placed.content["order_id"], tenant_id=b.tenant_id) is None
    unknown = await order.run({"items": [{"name": "sushi", "qty": 1}]}, ctx)
    assert unknown.status == "error" and "margherita" in unknown.content["menu"]
    too_many = await order.run({"items": [{"name": "tiramisu", "qty": 50}]}, ctx)
    assert too_many.status == "error"


# CallToolBox


async def test_toolbox_stores_rows_and_emits_events(control, two_tenants):
    a, call_a, _, _ = two_tenants
    emit = Recorder()
    box = CallToolBox.for_call(AgentConfig(system_prompt="x", tools=ALL_BUILTINS), store=control.store, emit=emit, clock=lambda: NOON)
    assert [s.name for s in box.specs()] == ALL_BUILTINS
    ctx = ctx_for(a.tenant_id, call_a)

    note = await box.call(ToolCall("t1", "log_note", {"note": "wants a high chair"}), ctx)
    missing = await box.call(ToolCall("t2", "check_availability", {"date": DAY}), ctx)
    unknown = await box.call(ToolCall("t3", "launch_rocket", {}), ctx)
    assert note.status == "ok" and missing.status == "error" and unknown.status == "error"
    assert "time is required" in missing.content["error"] and "launch_rocket" in unknown.content["error"]

    rows, _ = await control.store.tool_calls.list(tenant_id=a.tenant_id, equals={"call_id": call_a})
    by_name = {r["name"]: r for r in rows}
    assert by_name["log_note"]["result"] == {"saved": True, "note": "wants a high chair"}
    assert by_name["log_note"]["arguments"] == {"note": "wants a high chair"}
    assert by_name["check_availability"]["status"] == "error"
    assert by_name["launch_rocket"]["status"] == "error"
    assert all(r["latency_ms"] is not None and r["latency_ms"] >= 0 for r in rows)
    assert [(p.name, p.status) for p in emit.payloads] == [
        ("log_note", "ok"), ("check_availability", "error"), ("launch_rocket", "error")]
    assert all(isinstance(p, ToolCalled) for p in emit.payloads)


@dataclass
class Slow:
    delay: float
    spec: Any = field(default_factory=lambda: EndCall().spec)
    timeout_s: float = 0.05

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        await asyncio.sleep(self.delay)
        return ToolResult({"ok": True})


class Broken:
    spec = LogNote().spec
    timeout_s = 1.0

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        raise RuntimeError("database on fire")


async def test_toolbox_turns_timeouts_and_crashes_into_results(control, two_tenants, caplog):
    a, call_a, _, _ = two_tenants
    emit = Recorder()
    box = CallToolBox({"end_call": Slow(1.0), "log_note": Broken()}, store=control.store, emit=emit)
    ctx = ctx_for(a.tenant_id, call_a)
    slow = await box.call(ToolCall("t1", "end_call", {}), ctx)
    assert slow.status == "timeout" and not slow.end_call and slow.latency_ms < 1000
    with caplog.at_level(logging.ERROR, logger="voicectl.tools"):
        broken = await box.call(ToolCall("t2", "log_note", {"note": "x"}), ctx)
    assert broken.status == "error" and "fire" not in json.dumps(broken.content)
    assert any("tool failed" in r.message for r in caplog.records)
    assert [p.status for p in emit.payloads] == ["timeout", "error"]


async def test_toolbox_never_raises_when_recording_fails(control, two_tenants):
    a, _, _, _ = two_tenants

    async def failing_emit(payload: Payload, batch: WriteBatch | None = None) -> None:
        raise RuntimeError("bus down")

    box = CallToolBox.for_call(AgentConfig(system_prompt="x", tools=["end_call"]), store=control.store, emit=failing_emit)
    result = await box.call(ToolCall("t1", "end_call", {}), ctx_for(a.tenant_id, "call_missing"))
    assert result.end_call


async def test_toolbox_with_a_real_session(control):
    world = await provision(control, tools=["transfer_to_human"], escalation_target="+15550109999",
                            dtmf_tools={"0": "transfer_to_human"})
    session = await engine(control).open_call(to_number=world.e164, from_number=CALLER, provider="twilio")
    box = CallToolBox.for_call(session.route.config, store=control.store, emit=session.emit)
    assert box.dtmf_tool("0") == "transfer_to_human" and box.dtmf_tool("1") is None
    ctx = ctx_for(world.tenant_id, session.id, escalation_target=session.route.config.escalation_target)
    result = await box.call(ToolCall("t1", "transfer_to_human", {"reason": "asked"}), ctx)
    assert result.transfer_to == "+15550109999"
    events = [e for e in await events_of(control, world.tenant_id, session.id) if e["topic"] == "tool.called"]
    assert len(events) == 1
    assert events[0]["payload"]["name"] == "transfer_to_human" and events[0]["payload"]["status"] == "ok"
    rows, _ = await control.store.tool_calls.list(tenant_id=world.tenant_id, equals={"call_id": session.id})
    assert [r["name"] for r in rows] == ["transfer_to_human"]
    await session.end("hangup")


# HTTP tools


@dataclass
class Endpoint:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)


SECRET = "whsec_tools_test"
LOOPBACK = EgressPolicy.from_entries(LOOPBACK_ALLOW)  # the endpoint below listens on loopback


@pytest_asyncio.fixture
async def endpoint():
    received: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        received.append({"path": request.path, "body": orjson.loads(body), "headers": dict(request.headers),
                         "signed": verify(SECRET, request.headers.get(SIGNATURE_HEADER), body)})
        name = request.match_info["name"]
        if name == "ok":
            return web.json_response({"open": True, "echo": orjson.loads(body)["arguments"]})
        if name == "slow":
            await asyncio.sleep(2)
            return web.json_response({})
        if name == "fail":
            return web.json_response({"message": "db down"}, status=500)
        if name == "html":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if name == "list":
            return web.json_response([1, 2])
        if name == "big":
            return web.json_response({"blob": "x" * 100_000})
        return web.Response(status=404)

    app = web.Application()
    app.router.add_post("/tools/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Endpoint(f"http://127.0.0.1:{port}/tools", received)
    finally:
        await runner.cleanup()


def http_tool(endpoint: Endpoint, name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "description": f"the {name} tool", "url": f"{endpoint.url}/{name}",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            **kw}


async def fixed_secret(tenant_id: str) -> str | None:
    return SECRET


async def test_http_tool_posts_signed_json(endpoint):
    tool = HttpTool.from_config(HttpToolConfig(**http_tool(endpoint, "ok")), signing_secret=fixed_secret,
                                egress=LOOPBACK)
    result = await tool.run({"city": "Rome"}, ToolContext("ten_1", "call_1"))
    assert result.status == "ok" and result.content == {"open": True, "echo": {"city": "Rome"}}
    (got,) = endpoint.received
    assert got["body"] == {"tool": "ok", "arguments": {"city": "Rome"}, "call_id": "call_1", "tenant_id": "ten_1"}
    assert got["signed"] and got["headers"]["Content-Type"] == "application/json"


async def test_http_tool_unsigned_without_a_secret(endpoint):
    async def none(tenant_id: str) -> str | None:
        return None

    for lookup in (None, none):
        result = await HttpTool.from_config(HttpToolConfig(**http_tool(endpoint, "ok")), signing_secret=lookup,
                                            egress=LOOPBACK).run({"city": "Oslo"}, ToolContext("ten_1", "call_1"))
        assert result.status == "ok"
    assert [SIGNATURE_HEADER in r["headers"] for r in endpoint.received] == [False, False]


async def test_http_tool_refuses_to_go_unsigned_when_the_secret_is_unreadable(endpoint):
    async def broken(tenant_id: str) -> str | None:
        raise OSError("keyring locked")

    result = await HttpTool.from_config(HttpToolConfig(**http_tool(endpoint, "ok")), signing_secret=broken).run(
        {"city": "Oslo"}, ToolContext("ten_1", "call_1"))
    assert result.status == "error" and not endpoint.received


@pytest.mark.parametrize(("name", "status", "words"), [
    ("slow", "timeout", "did not answer within 0.3 s"),
    ("fail", "error", "HTTP 500"),
    ("html", "error", "not JSON"),
    ("big", "error", "more than"),
    ("missing", "error", "HTTP 404"),
])
async def test_http_tool_failures_are_results(endpoint, name, status, words):
    tool = HttpTool.from_config(HttpToolConfig(**http_tool(endpoint, name, timeout_s=0.3)), egress=LOOPBACK)
    result = await tool.run({"city": "Rome"}, ToolContext("ten_1", "call_1"))
    assert result.status == status and words in result.content["error"]


async def test_http_tool_non_object_json_and_unreachable(endpoint):
    listed = await HttpTool.from_config(HttpToolConfig(**http_tool(endpoint, "list")), egress=LOOPBACK).run(
        {"city": "x"}, ToolContext("t", "c"))
    assert listed.content == {"result": [1, 2]}
    gone = await HttpTool("gone", "d", {}, "http://127.0.0.1:9/", egress=LOOPBACK).run({}, ToolContext("t", "c"))
    assert gone.status == "error" and "could not be reached" in gone.content["error"]


async def test_http_tools_in_the_toolbox_with_the_tools_credential(control, endpoint):
    """Missing required arguments never reach the endpoint; the `tools` credential signs."""
    world = await provision(control, http_tools=[http_tool(endpoint, "ok")])
    call_id = await insert_call(control, world.tenant_id)
    ref = f"tenant/{world.tenant_id}/credential/tools"
    await control.credentials.secrets.set(ref, SECRET)
    now = now_iso()
    await control.store.credentials.insert({"id": new_id("crd"), "tenant_id": world.tenant_id, "provider": "tools",
                                            "fields": {}, "secret_ref": ref, "created_at": now, "updated_at": now})
    route = await control.store.agent_versions.find(tenant_id=world.tenant_id, agent_id=world.agent_id)
    emit = Recorder()
    box = CallToolBox.for_call(AgentConfig.from_stored(route["config"]), store=control.store, emit=emit,
                               signing_secret=lambda t: control.credentials.secret(t, "tools"), egress=control.egress)
    assert [s.name for s in box.specs()] == ["ok"]
    ctx = ctx_for(world.tenant_id, call_id)
    missing = await box.call(ToolCall("t1", "ok", {}), ctx)
    assert missing.status == "error" and "city is required" in missing.content["error"]
    assert not endpoint.received
    done = await box.call(ToolCall("t2", "ok", {"city": "Rome"}), ctx)
    assert done.status == "ok" and endpoint.received[0]["signed"]
    rows, _ = await control.store.tool_calls.list(tenant_id=world.tenant_id, equals={"call_id": call_id})
    assert sorted(r["status"] for r in rows) == ["error", "ok"]


# The demo call: rules brain + toolbox + store, the way the pipeline drives them


async def test_demo_booking_call_end_to_end(control):
    world = await provision(control, tools=ALL_BUILTINS, rules=DEMO_BOOKING_RULES,
                            escalation_target="+15550109999", dtmf_tools={"0": "transfer_to_human"})
    session = await engine(control).open_call(to_number=world.e164, from_number=CALLER, provider="twilio")
    config = session.route.config
    brain = RulesBrain(config.rules, timezone="UTC", clock=lambda: NOON)
    box = CallToolBox.for_call(config, store=control.store, emit=session.emit, clock=lambda: NOON)
    ctx = ToolContext(world.tenant_id, session.id, world.agent_id, CALLER, config.escalation_target)
    history: list[Message] = []
    effects: list[ToolResult] = []

    async def turn(text: str) -> str:
        history.append(Message("user", text))
        spoken = []
        for _ in range(4):
            events = [e async for e in brain.stream(LlmRequest(config.system_prompt, tuple(history), box.specs()))]
            said = "".join(e.text for e in events if isinstance(e, TextDelta))
            calls = tuple(e.call for e in events if isinstance(e, ToolCallRequest))
            history.append(Message("assistant", said, tool_calls=calls))
            spoken.append(said)
            if not calls:
                break
            for call in calls:
                result = await box.call(call, ctx)
                effects.append(result)
                history.append(Message("tool", json.dumps(result.content), tool_call_id=call.id, name=call.name))
        return " ".join(s for s in spoken if s)

    assert await turn("I'd like to book a table for two at seven") == \
        "Let me check. I have a table for two at 7 PM today. Shall I book it?"
    confirmed = await turn("yes please")
    (booking,), _ = await control.store.bookings.list(tenant_id=world.tenant_id)
    assert confirmed == (f"You're all set: a table for two at 7 PM today. Your reference is "
                         f"{' '.join(booking['reference'])}. Is there anything else I can help with?")
    assert (booking["day"], booking["time"], booking["party_size"], booking["phone"], booking["call_id"]) == (
        DAY, "19:00", 2, CALLER, session.id)
    assert await turn("No thanks, goodbye.") == "Thanks for calling Trattoria Demo. Goodbye!"
    assert effects[-1].end_call

    rows, _ = await control.store.tool_calls.list(tenant_id=world.tenant_id, equals={"call_id": session.id})
    assert [r["name"] for r in rows] == ["check_availability", "create_booking", "end_call"]
    topics = [e["payload"]["name"] for e in await events_of(control, world.tenant_id, session.id)
              if e["topic"] == "tool.called"]
    assert topics == ["check_availability", "create_booking", "end_call"]
    await session.end("agent_hangup", hangup_by="agent")


async def test_retention_purging_a_call_keeps_its_booking(control, two_tenants):
    a, call_a, _, _ = two_tenants
    booked = await pack_for(control).tools()["create_booking"].run({"date": DAY, "time": "19:00", "party_size": 2},
                                                                   ctx_for(a.tenant_id, call_a))
    async with control.store.atomic() as tx:
        deleted = await tx.delete_calls(a.tenant_id, [call_a])
    assert deleted["voice_calls"] == 1
    row = await control.store.bookings.get(booked.content["booking_id"], tenant_id=a.tenant_id)
    assert row is not None and row["call_id"] is None
