"""OpenAICompatibleLLM: the real ``openai`` SDK against a local chat completions server
(peers/openai_server.py builds its chunks from ``openai.types.chat.ChatCompletionChunk``)."""

from __future__ import annotations

import json
import socket
import traceback
from dataclasses import replace

import pytest

from peers import openai_server as peer
from peers.openai_server import OpenAIServer
from runtime.pipeline.history import History
from runtime.providers.base import (
    LlmDone,
    LlmRequest,
    Message,
    ProviderError,
    RetryPolicy,
    TextDelta,
    ToolCall,
    ToolCallRequest,
    ToolSpec,
)
from runtime.providers.llm.openai import OpenAICompatibleLLM

KEY = "sk-proj-test-0123456789abcdef"
FAST = RetryPolicy(retries=2, first_byte_timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.05)
SYSTEM = "You are the booking assistant of Trattoria Demo. Keep answers short."
TOOLS = (
    ToolSpec("check_availability", "Check for a free table.", {
        "type": "object", "properties": {"time": {"type": "string"}, "party_size": {"type": "integer"}},
        "required": ["time", "party_size"]}),
    ToolSpec("end_call", "Hang up."),
)


@pytest.fixture
async def server():
    async with OpenAIServer(api_key=KEY) as s:
        yield s


def make(server: OpenAIServer, policy: RetryPolicy = FAST, key: str | None = KEY, **kw) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(key, base_url=server.base_url, policy=policy, **kw)


def ask(text: str = "Hello?", **kw) -> LlmRequest:
    return LlmRequest(system=SYSTEM, messages=(Message("user", text),), **kw)


async def collect(llm: OpenAICompatibleLLM, request: LlmRequest) -> list:
    try:
        return [event async for event in llm.stream(request)]
    finally:
        await llm.aclose()


async def failure(llm: OpenAICompatibleLLM, request: LlmRequest) -> tuple[list, ProviderError]:
    seen: list = []
    with pytest.raises(ProviderError) as caught:
        async for event in llm.stream(request):
            seen.append(event)
    await llm.aclose()
    return seen, caught.value


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def calls_of(events: list) -> list[ToolCall]:
    return [e.call for e in events if isinstance(e, ToolCallRequest)]


# Normal streaming


async def test_streams_text_deltas_then_done_with_usage(server):
    server.push(peer.text_reply("Hello! How can I help you tonight?", pieces=5))
    events = await collect(make(server), ask())

    assert len([e for e in events if isinstance(e, TextDelta)]) == 5
    assert text_of(events) == "Hello! How can I help you tonight?"
    assert events[-1] == LlmDone("end_turn", {"input_tokens": 30, "output_tokens": 8})
    [request] = server.requests
    assert request.path == "/v1/chat/completions" and request.headers["authorization"] == f"Bearer {KEY}"
    body = request.body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "llama3.2"
    assert "max_tokens" not in body and "temperature" not in body and "tools" not in body
    assert body["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello?"}]


async def test_a_local_server_needs_no_key():
    async with OpenAIServer() as server:
        server.push(peer.text_reply("Hi."))
        events = await collect(make(server, key=None), ask())
    assert text_of(events) == "Hi."
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"


async def test_request_settings_override_the_constructor(server):
    server.push(peer.text_reply("One."), peer.text_reply("Two."))
    llm = make(server, model="qwen2.5:7b", max_tokens=300, temperature=0.2)
    await collect(llm, ask())
    await collect(llm, ask(model="gpt-4.1-mini", max_tokens=64, temperature=0.7))

    first, second = (r.body for r in server.requests)
    assert (first["model"], first["max_tokens"], first["temperature"]) == ("qwen2.5:7b", 300, 0.2)
    assert (second["model"], second["max_tokens"], second["temperature"]) == ("gpt-4.1-mini", 64, 0.7)


async def test_length_stop_and_missing_usage(server):
    server.push(peer.text_reply("Cut sh", finish="length", usage=False))
    events = await collect(make(server), ask())
    assert events[-1] == LlmDone("max_tokens", {})


async def test_history_format(server):
    history = History()
    history.add(Message("assistant", "Thanks for calling Trattoria Demo."))  # the greeting opens the call
    history.add_user("hi")
    history.add(Message("assistant", "Hello! What can I", interrupted=True))  # cut off by barge-in
    history.add_user("a table for two")
    server.push(peer.text_reply("For what time?"))
    await collect(make(server), LlmRequest(system="", messages=history.snapshot()))

    assert server.requests[0].body["messages"] == [
        {"role": "user", "content": "[the call started]"},
        {"role": "assistant", "content": "Thanks for calling Trattoria Demo."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! What can I"},
        {"role": "user", "content": "a table for two"},
    ]


# Tools


async def test_tool_call_round_trip(server):
    arguments = {"time": "19:30", "party_size": 2}
    server.push(peer.tool_reply([("check_availability", arguments), ("end_call", {})], text="Let me check.",
                                ids=["call_abc", "call_def"], json_pieces=5),
                peer.text_reply("We have a table at half past seven."))
    llm = make(server)
    history = History()
    history.add_user("A table for two at half past seven, please.")

    events = [e async for e in llm.stream(LlmRequest(SYSTEM, history.snapshot(), TOOLS))]
    assert text_of(events) == "Let me check."
    calls = calls_of(events)
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("call_abc", "check_availability", arguments), ("call_def", "end_call", {})]
    assert events[-1].stop_reason == "tool_use"
    history.add(Message("assistant", "Let me check.", tool_calls=tuple(calls)))
    history.add(Message("tool", json.dumps({"available": True}), tool_call_id="call_abc", name="check_availability"))
    history.add(Message("tool", json.dumps({"status": "ok"}), tool_call_id="call_def", name="end_call"))
    events = await collect(llm, LlmRequest(SYSTEM, history.snapshot(), TOOLS))
    assert text_of(events) == "We have a table at half past seven."

    first, second = (r.body for r in server.requests)
    assert first["tools"][0] == {"type": "function", "function": {
        "name": "check_availability", "description": "Check for a free table.", "parameters": TOOLS[0].parameters}}
    assistant = second["messages"][2]
    assert assistant["role"] == "assistant" and assistant["content"] == "Let me check."
    assert [(c["id"], c["type"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in assistant["tool_calls"]] == [("call_abc", "function", "check_availability", arguments),
                                                  ("call_def", "function", "end_call", {})]
    assert second["messages"][3:] == [
        {"role": "tool", "tool_call_id": "call_abc", "content": json.dumps({"available": True})},
        {"role": "tool", "tool_call_id": "call_def", "content": json.dumps({"status": "ok"})},
    ]


async def test_calls_sharing_an_index_or_lacking_ids_are_kept_apart(server):
    # Some servers number every call 0; some send no id.
    server.push(peer.tool_reply([("check_availability", {"time": "19:00", "party_size": 4}), ("end_call", {})],
                                same_index=True, ids=["call_1", "call_2"]),
                peer.tool_reply([("end_call", {})], ids=[None], finish="stop"))
    calls = calls_of(await collect(make(server), ask(tools=TOOLS)))
    assert [(c.id, c.name) for c in calls] == [("call_1", "check_availability"), ("call_2", "end_call")]

    events = await collect(make(server), ask(tools=TOOLS))
    [call] = calls_of(events)
    assert call.name == "end_call" and call.id.startswith("call_") and len(call.id) > 8
    assert events[-1].stop_reason == "tool_use"  # "stop" after a tool call is still a tool turn


async def test_unanswered_calls_and_orphan_results_are_repaired(server):
    server.push(peer.text_reply("Sorry about that."))
    messages = (
        Message("user", "book it"),
        Message("assistant", "", tool_calls=(ToolCall("call_1", "check_availability", {}),
                                             ToolCall("call_2", "end_call", {}))),
        Message("tool", '{"status": "error"}', tool_call_id="call_1", name="check_availability"),
        Message("user", "hello?"),
        Message("tool", '{"status": "ok"}', tool_call_id="call_old", name="log_note"),
    )
    await collect(make(server), LlmRequest("", messages, TOOLS))

    sent = server.requests[0].body["messages"]
    assert [(m["role"], m.get("tool_call_id")) for m in sent] == [
        ("user", None), ("assistant", None), ("tool", "call_1"), ("tool", "call_2"), ("user", None)]
    assert "cancelled" in sent[3]["content"]
    assert sent[4]["content"] == 'hello? [tool result] {"status": "ok"}'


async def test_arguments_that_are_not_json_are_a_protocol_error(server):
    server.push(peer.tool_reply([("check_availability", {})], raw_json='{"time": "19:30", "party_'))
    seen, error = await failure(make(server), ask(tools=TOOLS))
    assert error.kind == "protocol" and not seen and len(server.requests) == 1

    server.requests.clear()
    server.push(peer.tool_reply([("check_availability", {})], raw_json='["19:30", 2]'))
    seen, error = await failure(make(server), ask(tools=TOOLS))
    assert error.kind == "protocol"


# Failures


async def test_mid_stream_disconnect_raises_after_the_text_already_streamed(server):
    reply = peer.text_reply("Our opening hours are five to eleven.", pieces=4)
    server.push(replace(reply, disconnect_after=3), peer.text_reply("never asked for"))  # role + two deltas
    seen, error = await failure(make(server), ask())
    assert text_of(seen) and text_of(seen) != "Our opening hours are five to eleven."
    assert error.kind == "unavailable" and len(server.requests) == 1


async def test_disconnect_after_the_finish_keeps_the_reply(server):
    reply = peer.text_reply("All done.", pieces=2)
    server.push(replace(reply, disconnect_after=len(reply.events) - 2))  # usage chunk and [DONE] lost
    events = await collect(make(server), ask())
    assert text_of(events) == "All done." and events[-1] == LlmDone("end_turn", {})


async def test_stream_that_ends_without_a_finish_is_an_error(server):
    reply = peer.text_reply("Half a reply.", usage=False)
    server.push(replace(reply, events=reply.events[:-2] + reply.events[-1:]))  # no finish chunk
    seen, error = await failure(make(server), ask())
    assert text_of(seen) == "Half a reply." and error.kind == "unavailable"


async def test_slow_first_byte_is_retried_then_times_out(server):
    policy = replace(FAST, retries=1, first_byte_timeout_s=0.3)
    server.push(peer.text_reply("too late", delay_s=2.0), peer.text_reply("On time."))
    events = await collect(make(server, policy), ask())
    assert text_of(events) == "On time." and len(server.requests) == 2

    server.requests.clear()
    server.push(peer.text_reply("late", delay_s=2.0), peer.text_reply("late", delay_s=2.0))
    seen, error = await failure(make(server, policy), ask())
    assert error.kind == "timeout" and not seen and len(server.requests) == 2


async def test_unauthorized_is_not_retried_and_hides_the_key(server):
    wrong = "sk-proj-wrong-key-abcdef"
    seen, error = await failure(make(server, key=wrong), ask())
    assert (error.kind, error.status, error.retryable) == ("auth", 401, False)
    assert len(server.requests) == 1 and wrong not in str(error)

    server.requests.clear()
    server.push(peer.error_reply(403, f"key {KEY} is not allowed"))
    seen, error = await failure(make(server), ask())
    assert error.kind == "auth" and KEY not in str(error) and "[redacted]" in str(error)
    assert KEY not in "".join(traceback.format_exception(error))


async def test_rate_limit_honours_retry_after_ms(server):
    policy = replace(FAST, backoff_cap_s=0.5)  # Retry-After is capped at 4 x backoff_cap_s
    server.push(peer.error_reply(429, retry_after_ms="400"), peer.text_reply("Thanks for waiting."))
    events = await collect(make(server, policy), ask())
    assert text_of(events) == "Thanks for waiting."
    first, second = server.requests
    assert second.at - first.at >= 0.38


async def test_rate_limit_gives_up_after_the_policy_retries(server):
    server.push(*[peer.error_reply(429, retry_after="0") for _ in range(3)])
    seen, error = await failure(make(server), ask())
    assert (error.kind, error.status, error.retry_after) == ("rate_limit", 429, 0.0)
    assert len(server.requests) == 3


async def test_server_errors_are_retried(server):
    server.push(peer.error_reply(500), peer.error_reply(503), peer.text_reply("Back again."))
    events = await collect(make(server), ask())
    assert text_of(events) == "Back again." and len(server.requests) == 3

    server.requests.clear()
    server.push(*[peer.error_reply(502) for _ in range(3)])
    seen, error = await failure(make(server), ask())
    assert (error.kind, error.status) == ("server", 502) and len(server.requests) == 3


async def test_unknown_model_is_a_bad_request(server):
    server.push(peer.error_reply(404, "model 'llama9' not found, try pulling it first"))
    seen, error = await failure(make(server), ask())
    assert error.kind == "bad_request" and "not found" in str(error) and len(server.requests) == 1


async def test_error_object_mid_stream(server):
    server.push(peer.error_event_reply("server_error", text_before="Sure, one "))
    seen, error = await failure(make(server), ask())
    assert text_of(seen) == "Sure, one " and error.kind == "server" and len(server.requests) == 1


async def test_malformed_chunk_is_a_protocol_error(server):
    server.push(peer.raw_reply('data: {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": \n\n'))
    seen, error = await failure(make(server), ask())
    assert error.kind == "protocol" and len(server.requests) == 1


async def test_connection_refused_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    llm = OpenAICompatibleLLM(KEY, base_url=f"http://127.0.0.1:{port}/v1", policy=replace(FAST, retries=1))
    seen, error = await failure(llm, ask())
    assert error.kind == "unavailable" and KEY not in str(error)


# doctor


async def test_check_lists_models_with_the_key(server):
    await make(server).check()
    assert server.requests[-1].path == "/v1/models"
    assert server.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    with pytest.raises(ProviderError) as caught:
        await make(server, key="sk-bad").check()
    assert caught.value.kind == "auth"


def test_repr_never_shows_the_key():
    llm = OpenAICompatibleLLM(KEY)
    assert KEY not in repr(llm) and llm.name == "openai" and llm.base_url == "http://127.0.0.1:11434/v1"
