"""What runs tenants' URLs goes through the egress guard: provider clients built with a tenant's
base_url (the version's or the credential's), HTTP tools, a tenant's LiveKit server and S3 endpoint;
the appliance's own URLs not."""

from __future__ import annotations

from dataclasses import replace

import pytest
from aiohttp import web

from peers import openai_server as peer
from peers.loopback import LOOPBACK_ALLOW, serve_loopback
from peers.openai_server import OpenAIServer
from runtime.config import Settings
from runtime.control.schemas import AgentConfig
from runtime.egress.policy import EgressPolicy, EgressRefused
from runtime.providers import registry
from runtime.providers.base import LlmRequest, Message, ProviderError, RetryPolicy
from runtime.providers.chains import ProviderChains
from runtime.providers.options import ChatterboxSettings, OpenAISettings
from runtime.recording.s3 import S3Client, S3Target, describe_error, is_permanent
from runtime.telephony.livekit.server import LiveKitServer, LiveKitUnavailable
from runtime.tools.base import ToolContext
from runtime.tools.http import HttpTool

STRICT = EgressPolicy()
FAST = RetryPolicy(retries=2, first_byte_timeout_s=2.0, backoff_base_s=0.01, backoff_cap_s=0.05)


def context(modality: str, name: str, settings, *, egress: EgressPolicy = STRICT, **values) -> registry.BuildContext:
    entry = registry.get(modality, name)
    defaults = {"options": entry.options(), "model": None, "base_url": None, "credential": None, "policy": FAST}
    return registry.BuildContext(entry=entry, settings=settings, egress=egress, **{**defaults, **values})


async def reply(llm) -> str | ProviderError:
    try:
        events = [e async for e in llm.stream(LlmRequest(system="s", messages=(Message("user", "hi"),)))]
    except ProviderError as exc:
        return exc
    finally:
        await llm.aclose()
    return "".join(getattr(e, "text", "") for e in events)


async def test_an_llm_at_a_tenant_url_is_refused_and_not_retried():
    async with OpenAIServer() as server:
        server.push(peer.text_reply("Hi."))
        for values in ({"base_url": server.base_url},  # the version's base_url
                       {"credential": registry.ProviderCredential({"base_url": server.base_url}, None)}):
            llm = registry.get("llm", "openai").build(context("llm", "openai", OpenAISettings(), **values))
            error = await reply(llm)
            assert isinstance(error, ProviderError) and str(error) == "openai: egress_refused"
            assert not error.retryable
        assert server.requests == []
        # The operator's URL (providers.openai.base_url) is the operator's business: not checked.
        llm = registry.get("llm", "openai").build(context("llm", "openai", OpenAISettings(base_url=server.base_url)))
        assert await reply(llm) == "Hi."
        # An allowed tenant URL connects.
        server.push(peer.text_reply("Allowed."))
        allowed = EgressPolicy.from_entries(LOOPBACK_ALLOW)
        llm = registry.get("llm", "openai").build(
            context("llm", "openai", OpenAISettings(), egress=allowed, base_url=server.base_url))
        assert await reply(llm) == "Allowed."


async def test_the_call_chains_take_the_configured_policy():
    strict = ProviderChains(Settings())
    allowing = ProviderChains(Settings(security={"egress": {"allow": ["10.0.0.0/8"]}}))
    config = AgentConfig(system_prompt="x", llm={"provider": "openai", "base_url": "http://10.1.2.3/v1"})
    assert strict.engine("llm", "openai", config.llm).egress == STRICT
    assert allowing.engine("llm", "openai", config.llm).egress == EgressPolicy.from_entries(["10.0.0.0/8"])
    assert strict.engine("llm", "openai").egress is None  # providers.openai.base_url: the operator's


async def test_a_tts_redirect_to_a_denied_address_is_refused():
    inside: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        inside.append(request.path)
        return web.Response(body=b"RIFF")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", secret)
    inner, inner_port = await serve_loopback(app)

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{inner_port}{request.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bounce)
    outer, outer_port = await serve_loopback(app)
    try:
        only_outer = EgressPolicy.from_entries([f"127.0.0.1:{outer_port}"])
        ctx = context("tts", "chatterbox", ChatterboxSettings(), egress=only_outer,
                      credential=registry.ProviderCredential({"base_url": f"http://127.0.0.1:{outer_port}"}, None),
                      policy=replace(FAST, retries=0))
        tts = registry.get("tts", "chatterbox").build(ctx)
        with pytest.raises(ProviderError) as caught:
            [chunk async for chunk in tts.synthesize("Hello there.")]
        await tts.aclose()
    finally:
        await outer.cleanup()
        await inner.cleanup()
    assert str(caught.value) == "chatterbox: egress_refused" and inside == []


async def test_an_http_tool_at_a_denied_address_never_connects():
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner, port = await serve_loopback(app)
    try:
        refused = await HttpTool("book", "d", {}, f"http://127.0.0.1:{port}/book").run({}, ToolContext("t", "c"))
        allowed = await HttpTool("book", "d", {}, f"http://127.0.0.1:{port}/book",
                                 egress=EgressPolicy.from_entries(LOOPBACK_ALLOW)).run({}, ToolContext("t", "c"))
    finally:
        await runner.cleanup()
    assert refused.status == "error" and "could not be reached" in refused.content["error"]
    assert allowed.status == "ok" and hits == ["/book"]


async def test_a_tenant_livekit_server_is_reached_through_the_guard():
    tenant = LiveKitServer("http://127.0.0.1:7880", "key", "s" * 32, "ten_1", STRICT)
    with pytest.raises(EgressRefused):
        await tenant.check_destination()  # before the real-time SDK connects
    with pytest.raises(LiveKitUnavailable) as caught:
        await tenant.list_dispatches("room")
    assert caught.value.details == {"error": "egress_refused"}
    await LiveKitServer("http://127.0.0.1:7880", "key", "s" * 32).check_destination()  # the appliance's own


async def test_a_tenant_s3_endpoint_is_reached_through_the_guard():
    target = S3Target("http://127.0.0.1:9000", "r", "calls", "AKID", "secret")
    with pytest.raises(EgressRefused) as caught:
        S3Client(egress=STRICT).client(target)
    assert describe_error(caught.value) == "egress_refused" and is_permanent(caught.value)
