"""A small "bring your own brain" backend for voicectl, using only the documented API.

It listens on the events WebSocket; when a call of an agent whose version has
``llm: {provider: external}`` connects, it opens a speaking session on it; for every final caller
utterance (``transcript.created``, direction ``in``) it decides a reply and sends it with the
socket's ``say`` command; when the caller interrupts, the runtime flushes the session itself.

    python examples/external_brain.py --url http://127.0.0.1:8080 --key "$VOICECTL_API_KEY" \\
        [--llm-url http://127.0.0.1:11434/v1 --model llama3.2]

Without ``--llm-url`` the policy echoes the caller; with it, any OpenAI-compatible chat completions
server answers (the conversation so far is sent each turn).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger("external_brain")

Policy = Callable[[str, list[dict[str, str]]], Awaitable[str]]


async def echo_policy(text: str, history: list[dict[str, str]]) -> str:
    return f"You said: {text}"


def openai_policy(http: aiohttp.ClientSession, base_url: str, model: str, api_key: str | None) -> Policy:
    async def reply(text: str, history: list[dict[str, str]]) -> str:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        body = {"model": model, "messages": [{"role": "system", "content": "You are a brief, friendly phone agent."},
                                             *history]}
        async with http.post(base_url.rstrip("/") + "/chat/completions", json=body, headers=headers) as resp:
            resp.raise_for_status()
            data = await resp.json()
        return data["choices"][0]["message"]["content"].strip()
    return reply


@dataclass
class Call:
    speaking_id: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)


@dataclass
class ExternalBrain:
    url: str
    key: str
    policy: Policy = echo_policy
    calls: dict[str, Call] = field(default_factory=dict)
    replies_sent: int = 0

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def run(self, http: aiohttp.ClientSession, ready: asyncio.Event | None = None) -> None:
        ws_url = "ws" + self.url.rstrip("/")[4:] + "/api/v1/events/ws"
        async with http.ws_connect(ws_url, headers=self._headers, heartbeat=20) as ws:
            await ws.send_json({"type": "subscribe", "topics": ["call.connected", "transcript.created",
                                                                 "voice.call.*"]})
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                if data["type"] == "subscribed" and ready is not None:
                    ready.set()
                elif data["type"] == "event":
                    await self._event(http, ws, data["event"])
                elif data["type"] == "error":
                    log.warning("runtime: %s", data)

    async def _event(self, http: aiohttp.ClientSession, ws: Any, event: dict[str, Any]) -> None:
        call_id, topic, payload = event["call_id"], event["topic"], event["data"]
        if topic == "call.connected":
            async with http.post(self.url + "/api/v1/speakings", headers=self._headers,
                                 json={"reference_type": "call", "reference_id": call_id}) as resp:
                if resp.status == 201:
                    self.calls[call_id] = Call((await resp.json())["id"])
        elif topic == "transcript.created" and payload.get("direction") == "in":
            call = self.calls.get(call_id)
            if call is None or call.speaking_id is None:
                return
            call.history.append({"role": "user", "content": payload["text"]})
            reply = await self.policy(payload["text"], call.history)
            call.history.append({"role": "assistant", "content": reply})
            await ws.send_json({"type": "say", "speaking_id": call.speaking_id, "text": reply,
                                "ref": f"{call_id}:{len(call.history)}"})
            self.replies_sent += 1
        elif topic in ("voice.call.completed", "voice.call.failed"):
            self.calls.pop(call_id, None)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--key", default=os.environ.get("VOICECTL_API_KEY"))
    parser.add_argument("--llm-url", help="an OpenAI-compatible server (default: echo the caller)")
    parser.add_argument("--model", default="llama3.2")
    args = parser.parse_args()
    if not args.key:
        parser.error("pass --key or set VOICECTL_API_KEY to the tenant's runtime key")
    logging.basicConfig(level=logging.INFO)
    async with aiohttp.ClientSession() as http:
        policy = openai_policy(http, args.llm_url, args.model, os.environ.get("OPENAI_API_KEY")) \
            if args.llm_url else echo_policy
        await ExternalBrain(args.url.rstrip("/"), args.key, policy).run(http)


if __name__ == "__main__":
    asyncio.run(main())
