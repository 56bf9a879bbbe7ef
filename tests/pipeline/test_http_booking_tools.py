"""The demo's booking tools served by an external HTTP service on a local server instead of
the runtime's built-in pack: the same conversation (rules brain, conversation engine, tool
box), signed POSTs with the tenant's `tools` secret, results fed back into the reply."""

from __future__ import annotations

from typing import Any

import orjson
import pytest_asyncio
from aiohttp import web

from runtime.control.schemas import AgentCreate, CredentialSet, NumberCreate, TenantCreate
from runtime.events.delivery import verify
from runtime.pipeline.text_chat import text_chat
from runtime.providers.llm.rules import DEMO_BOOKING_RULES

SECRET = "tool-signing-secret"
NUMBER = "+15550104242"


class BookingService:
    """A restaurant's own booking API: check_availability and create_booking over HTTP."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.booked: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        payload = orjson.loads(body)
        signed = verify(SECRET, request.headers.get("X-Voicectl-Signature"), body)
        self.requests.append({"tool": request.match_info["tool"], "payload": payload, "signed": signed})
        if not signed:
            return web.json_response({"error": "bad signature"}, status=401)
        args = payload["arguments"]
        if request.match_info["tool"] == "check_availability":
            return web.json_response({**args, "available": True, "alternatives": []})
        self.booked.append(args)
        return web.json_response({**args, "booking_id": "ext_1", "reference": "HTTP42"})


@pytest_asyncio.fixture
async def service():
    svc = BookingService()
    app = web.Application()
    app.router.add_post("/api/{tool}", svc.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    svc.url = f"http://127.0.0.1:{runner.addresses[0][1]}/api"  # type: ignore[attr-defined]
    try:
        yield svc
    finally:
        await runner.cleanup()


def _tool(url: str, name: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"name": name, "description": f"the restaurant's {name}", "url": f"{url}/{name}",
            "parameters": {"type": "object", "properties": properties, "required": required}}


async def test_the_booking_conversation_uses_external_http_tools(control, settings, service) -> None:
    slot = {"date": {"type": "string"}, "time": {"type": "string"}, "party_size": {"type": "integer"}}
    tenant = await control.tenants.create(TenantCreate(name="http-tools"))
    agent = await control.agents.create(tenant.id, AgentCreate(
        name="booking", system_prompt="Book tables.", greeting="Trattoria, hello!", llm={"provider": "rules"},
        tools=["end_call"], rules=DEMO_BOOKING_RULES,
        http_tools=[_tool(service.url, "check_availability", slot, ["date", "time", "party_size"]),
                    _tool(service.url, "create_booking", {**slot, "name": {"type": "string"}},
                          ["date", "time", "party_size"])],
    ))
    await control.numbers.add(tenant.id, NumberCreate(e164=NUMBER, provider="twilio", agent_id=agent.id))
    await control.credentials.set(tenant.id, "tools", CredentialSet(secret=SECRET))
    said: list[tuple[str, str]] = []
    call_id = await text_chat(control, settings, NUMBER, ["A table for three at eight please", "yes",
                                                          "no thanks, goodbye"],
                              on_utterance=lambda role, text: said.append((role, text)))
    assert [r["tool"] for r in service.requests] == ["check_availability", "create_booking"]
    assert all(r["signed"] and r["payload"]["call_id"] == call_id and r["payload"]["tenant_id"] == tenant.id
               for r in service.requests)
    assert service.booked[0]["party_size"] == 3 and service.booked[0]["time"] == "20:00"
    assert any(role == "agent" and "H T T P 4 2" in text for role, text in said), said
    rows, _ = await control.store.tool_calls.list(tenant_id=tenant.id, equals={"call_id": call_id})
    assert sorted((r["name"], r["status"]) for r in rows) == [
        ("check_availability", "ok"), ("create_booking", "ok"), ("end_call", "ok")]
    call = await control.store.voice_calls.get(call_id, tenant_id=tenant.id)
    assert call["provider"] == "chat" and call["end_reason"] == "agent_ended"
    # Nothing reached the runtime's own booking tables.
    assert (await control.store.bookings.list(tenant_id=tenant.id))[0] == []
