"""Helpers of the outbound-call tests: an agent with variables in its greeting and a voicemail
message, placing a call through the API, and reading back what the runtime stored."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.audio import Audio
from tests.twilio.support import NUMBER, TwilioWorld

CALLEE = "+15550123456"
GREETING = "Hi {{name}}, this is the front desk."
VOICEMAIL = "Hi {{name}}, your table for {{party}} is ready. Please call us back."


async def outbound_agent(world: TwilioWorld, **settings: Any) -> str:
    status, made, _ = await world.api.call("POST", "/api/v1/agents", world.key, json={
        "name": "caller-outer", "system_prompt": "You call {{name}} about a booking.", "greeting": GREETING,
        "voicemail_message": VOICEMAIL, **settings})
    assert status == 201, made
    return made["id"]


async def place(world: TwilioWorld, expect: int = 201, key: str | None = None, tenant_id: str | None = None,
                **body: Any) -> Any:
    payload = {"to": CALLEE, "from": NUMBER, **body}
    status, data, _ = await world.api.call("POST", "/api/v1/calls", key or world.key, tenant_id=tenant_id,
                                           json=payload)
    assert status == expect, (status, data)
    return data


async def final(world: TwilioWorld, call_id: str, timeout: float = 20.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = await world.api.control.store.voice_calls.get(call_id, tenant_id=world.tenant_id)
        if row is not None and row["status"] in ("ended", "failed"):
            return row
        assert asyncio.get_running_loop().time() < deadline, row
        await asyncio.sleep(0.02)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def events(world: TwilioWorld, call_id: str) -> list[dict]:
    rows, _ = await world.api.control.store.call_events.list(tenant_id=world.tenant_id,
                                                            equals={"call_id": call_id}, limit=500)
    return rows


async def states(world: TwilioWorld, call_id: str) -> list[str]:
    """The call's states in order, from its call.state_changed events."""
    changes = [e["payload"] for e in await events(world, call_id) if e["topic"] == "call.state_changed"]
    return [changes[0]["from_state"], *(c["to_state"] for c in changes)] if changes else []


async def transcript(world: TwilioWorld, call_id: str) -> list[tuple[str, str]]:
    rows, _ = await world.api.control.store.transcripts.list(tenant_id=world.tenant_id,
                                                            equals={"call_id": call_id}, limit=200)
    return [(r["role"], r["text"]) for r in rows]


_SPEECH: dict[str, Audio] = {}


async def speech(text: str) -> Audio:
    """``text`` spoken by the local TTS (made once per text and test session)."""
    if text not in _SPEECH:
        from runtime.providers.tts.local import PiperTTS

        chunks = [c async for c in PiperTTS().synthesize(text)]
        _SPEECH[text] = Audio(b"".join(c.pcm for c in chunks), chunks[0].rate)
    return _SPEECH[text]
