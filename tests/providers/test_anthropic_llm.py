"""AnthropicLLM: the real ``anthropic`` SDK against a local server speaking the Messages API's
SSE event sequence (peers/anthropic_server.py builds its frames from ``anthropic.types``)."""

from __future__ import annotations

import json
import socket
import time
import traceback
from dataclasses import replace

import pytest

from peers import anthropic_server as peer
from peers.anthropic_server import AnthropicServer, presented_key
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
from runtime.providers.llm.anthropic import AnthropicLLM
from runtime.tools.builtin import error_result

# The SDK warns that the default model retires on 2026-11-30; the default is the registry's to change.

KEY = "sk-ant-test-0123456789abcdef"
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
    async with AnthropicServer(api_key=KEY) as s:
        yield s


def make(server: AnthropicServer, policy: RetryPolicy = FAST, key: str = KEY, **kw) -> AnthropicLLM:
    return AnthropicLLM(key, base_url=server.base_url, policy=policy, **kw)


def ask(text: str = "Hello?", **kw) -> LlmRequest:
    return LlmRequest(system=SYSTEM, messages=(Message("user", text),), **kw)


async def collect(llm: AnthropicLLM, request: LlmRequest) -> list:
    try:
        return [event async for event in llm.stream(request)]
    finally:
        await llm.aclose()


async def failure(llm: AnthropicLLM, request: LlmRequest) -> tuple[list, ProviderError]:
    seen: list = []
    with pytest.raises(ProviderError) as caught:
        async for event in llm.stream(request):
            seen.append(event)
    await llm.aclose()
    return seen, caught.value


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# Normal streaming


async def test_streams_text_deltas_then_done_with_usage(server):
    server.push(peer.text_reply("Hello! How can I help you tonight?", pieces=5, input_tokens=42,
                                cache_read=1800, cache_write=12))
    events = await collect(make(server), ask())

    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 5 and text_of(events) == "Hello! How can I help you tonight?"
    assert events[-1] == LlmDone("end_turn", {"input_tokens": 42, "output_tokens": 8,
                                              "cache_read_input_tokens": 1800, "cache_creation_input_tokens": 12})
    [request] = server.requests
    assert request.method == "POST" and request.path == "/v1/messages"
    assert presented_key(request.headers) == KEY
    assert request.headers.get("anthropic-version")
    body = request.body
    assert body["stream"] is True and body["model"] == "claude-sonnet-4-6" and body["max_tokens"] == 1024
    assert "temperature" not in body  # newer models refuse it: sent only when configured
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello?"}]}]


async def test_request_settings_override_the_constructor(server):
    server.push(peer.text_reply("One."), peer.text_reply("Two."))
    llm = make(server, model="claude-haiku-4-5", max_tokens=300, temperature=0.2)
    await collect(llm, ask())
    await collect(llm, ask(model="claude-opus-4-1", max_tokens=64, temperature=0.7))

    first, second = (r.body for r in server.requests)
    assert (first["model"], first["max_tokens"], first["temperature"]) == ("claude-haiku-4-5", 300, 0.2)
    assert (second["model"], second["max_tokens"], second["temperature"]) == ("claude-opus-4-1", 64, 0.7)


async def test_prompt_caching_marks_the_stable_prefix(server):
    server.push(peer.text_reply("Sure."))
    await collect(make(server), ask(tools=TOOLS))

    body = server.requests[0].body
    assert body["system"] == [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    assert [t["name"] for t in body["tools"]] == ["check_availability", "end_call"]
    assert "cache_control" not in body["tools"][0]
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["tools"][0]["input_schema"] == TOOLS[0].parameters
    # Nothing in the conversation itself is marked: it changes every turn.
    assert "cache_control" not in json.dumps(body["messages"])


async def test_history_becomes_alternating_turns_the_api_accepts(server):
    history = History()
    history.add(Message("assistant", "Thanks for calling Trattoria Demo."))  # the greeting opens the call
    history.add_user("hi")
    history.add(Message("assistant", "Hello! What can I", interrupted=True))  # cut off by barge-in
    history.add_user("a table")
    history.add_user("for two")  # joined into the turn above by the history
    history.add(Message("assistant", "   "))  # a reply that said nothing audible
    server.push(peer.text_reply("For what time?"))
    await collect(make(server), LlmRequest(system=SYSTEM, messages=history.snapshot()))

    messages = server.requests[0].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"][0]["text"] == "[the call started]"
    assert messages[1]["content"] == [{"type": "text", "text": "Thanks for calling Trattoria Demo."}]
    assert messages[3]["content"] == [{"type": "text", "text": "Hello! What can I"}]
    assert messages[4]["content"] == [{"type": "text", "text": "a table for two"}]


# Tools


async def test_tool_use_round_trip(server):
    arguments = {"time": "19:30", "party_size": 2}
    server.push(peer.tool_reply("check_availability", arguments, text="Let me check.", tool_id="toolu_01A",
                                json_pieces=4),
                peer.text_reply("We have a table at half past seven."))
    llm = make(server)
    history = History()
    history.add_user("A table for two at half past seven, please.")

    # What the pipeline does: stream, collect the call, run the tool, feed the result back.
    events = [e async for e in llm.stream(LlmRequest(SYSTEM, history.snapshot(), TOOLS))]
    assert text_of(events) == "Let me check."
    calls = [e.call for e in events if isinstance(e, ToolCallRequest)]
    assert [(c.id, c.name, c.arguments) for c in calls] == [("toolu_01A", "check_availability", arguments)]
    assert events[-1].stop_reason == "tool_use"
    history.add(Message("assistant", "Let me check.", tool_calls=tuple(calls)))
    result = {"available": True, "time": "19:30"}
    history.add(Message("tool", json.dumps(result), tool_call_id="toolu_01A", name="check_availability"))
    events = await collect(llm, LlmRequest(SYSTEM, history.snapshot(), TOOLS))
    assert text_of(events) == "We have a table at half past seven."

    messages = server.requests[1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01A", "name": "check_availability", "input": arguments},
    ]
    assert messages[2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_01A",
                                       "content": json.dumps(result)}]


async def test_failed_and_missing_tool_results_are_flagged(server):
    server.push(peer.text_reply("Sorry, I could not check."))
    failed = error_result("check_availability did not finish within 5 s", "timeout").content
    messages = (
        Message("user", "book it"),
        Message("assistant", "", tool_calls=(
            ToolCall("toolu_1", "check_availability", {}), ToolCall("toolu_2", "end_call", {}))),
        Message("tool", json.dumps(failed), tool_call_id="toolu_1", name="check_availability"),
        # toolu_2's result was never recorded; then a result whose call is outside the window:
        Message("user", "hello?"),
        Message("tool", '{"status": "ok"}', tool_call_id="toolu_old", name="log_note"),
    )
    await collect(make(server), LlmRequest(SYSTEM, messages, TOOLS))

    sent = server.requests[0].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    results = sent[2]["content"]
    assert results[0] == {"type": "tool_result", "tool_use_id": "toolu_1", "content": json.dumps(failed),
                          "is_error": True}
    assert results[1]["tool_use_id"] == "toolu_2" and results[1]["is_error"] is True  # filled in
    assert results[2] == {"type": "text", "text": "hello?"}
    assert results[3]["type"] == "text" and results[3]["text"].startswith("[tool result]")


async def test_tool_input_that_is_not_json_is_a_protocol_error(server):
    server.push(peer.tool_reply("check_availability", {}, raw_json='{"time": "19:30", "party_'))
    seen, error = await failure(make(server), ask(tools=TOOLS))
    assert error.kind == "protocol" and not seen
    assert len(server.requests) == 1  # a broken answer is not retried


# Failures


async def test_mid_stream_disconnect_raises_after_the_text_already_streamed(server):
    reply = peer.text_reply("Our opening hours are five to eleven.", pieces=4)
    # message_start, ping, block start, two deltas: then the connection drops.
    server.push(replace(reply, disconnect_after=5), peer.text_reply("never asked for"))
    seen, error = await failure(make(server), ask())
    assert text_of(seen) and text_of(seen) != "Our opening hours are five to eleven."
    assert error.kind == "unavailable"
    assert len(server.requests) == 1  # after the first event the pipeline takes over, no retry


async def test_disconnect_before_any_text_is_retried(server):
    server.push(replace(peer.text_reply("lost"), disconnect_after=2), peer.text_reply("Hello again."))
    events = await collect(make(server), ask())
    assert text_of(events) == "Hello again." and len(server.requests) == 2


async def test_stream_that_ends_without_message_stop_is_an_error(server):
    reply = peer.text_reply("Half a reply.")
    server.push(replace(reply, events=reply.events[:-2]))  # no message_delta, no message_stop
    seen, error = await failure(make(server), ask())
    assert text_of(seen) == "Half a reply." and error.kind == "unavailable"


async def test_slow_first_byte_is_retried_then_times_out(server):
    policy = replace(FAST, retries=1, first_byte_timeout_s=0.3)
    server.push(peer.text_reply("too late", delay_s=2.0), peer.text_reply("On time."))
    started = time.monotonic()
    events = await collect(make(server, policy), ask())
    assert text_of(events) == "On time." and len(server.requests) == 2
    assert time.monotonic() - started < 1.5

    server.requests.clear()
    server.push(peer.text_reply("late", delay_s=2.0), peer.text_reply("late", delay_s=2.0))
    seen, error = await failure(make(server, policy), ask())
    assert error.kind == "timeout" and not seen and len(server.requests) == 2


async def test_unauthorized_is_not_retried_and_hides_the_key(server):
    wrong = "sk-ant-wrong-key-abcdef"
    seen, error = await failure(make(server, key=wrong), ask())
    assert (error.kind, error.status, error.retryable) == ("auth", 401, False)
    assert len(server.requests) == 1
    assert wrong not in str(error) and KEY not in str(error)


async def test_a_key_echoed_by_the_server_is_redacted(server):
    server.push(peer.error_reply(403, f"key {KEY} may not use this model"))
    seen, error = await failure(make(server), ask())
    assert error.kind == "auth" and KEY not in str(error) and "[redacted]" in str(error)
    # Nor in a logged traceback: the SDK's exception (which quotes the body) is not chained.
    assert KEY not in "".join(traceback.format_exception(error))


async def test_rate_limit_honours_retry_after(server):
    # RetryPolicy caps a Retry-After at 4 x backoff_cap_s; its own backoff here is at most 0.01 s.
    policy = replace(FAST, backoff_cap_s=0.5)
    server.push(peer.error_reply(429, retry_after="1"), peer.text_reply("Thanks for waiting."))
    events = await collect(make(server, policy), ask())
    assert text_of(events) == "Thanks for waiting."
    first, second = server.requests
    assert second.at - first.at >= 0.95


async def test_rate_limit_and_overload_give_up_after_the_policy_retries(server):
    server.push(peer.error_reply(429, retry_after="0"), peer.error_reply(529), peer.error_reply(429, retry_after="0"))
    seen, error = await failure(make(server), ask())
    assert (error.kind, error.status, error.retry_after) == ("rate_limit", 429, 0.0)
    assert len(server.requests) == 3  # the first try and FAST.retries == 2


async def test_server_errors_are_retried(server):
    server.push(peer.error_reply(500), peer.error_reply(529), peer.text_reply("Back again."))
    events = await collect(make(server), ask())
    assert text_of(events) == "Back again." and len(server.requests) == 3

    server.requests.clear()
    server.push(peer.error_reply(503), peer.error_reply(500), peer.error_reply(502))
    seen, error = await failure(make(server), ask())
    assert (error.kind, error.status) == ("server", 502) and len(server.requests) == 3


async def test_bad_request_is_not_retried(server):
    server.push(peer.error_reply(400, "messages: text content blocks must be non-empty"))
    seen, error = await failure(make(server), ask())
    assert error.kind == "bad_request" and "non-empty" in str(error) and len(server.requests) == 1


async def test_error_event_mid_stream(server):
    server.push(peer.error_event_reply("overloaded_error", text_before="Sure, one "))
    seen, error = await failure(make(server), ask())
    assert text_of(seen) == "Sure, one " and error.kind == "rate_limit" and len(server.requests) == 1

    server.requests.clear()  # an error event before any text: nothing was said, so it is retried
    server.push(peer.error_event_reply("api_error"), peer.text_reply("Recovered."))
    events = await collect(make(server), ask())
    assert text_of(events) == "Recovered." and len(server.requests) == 2


async def test_malformed_event_is_a_protocol_error(server):
    start = peer.text_reply("x").events[0]
    server.push(peer.raw_reply(start, "event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \n\n"))
    seen, error = await failure(make(server), ask())
    assert error.kind == "protocol" and len(server.requests) == 1

    server.requests.clear()  # valid JSON of the wrong shape
    server.push(peer.raw_reply(start, 'event: content_block_delta\ndata: {"type": "content_block_delta"}\n\n'))
    seen, error = await failure(make(server), ask())
    assert error.kind == "protocol"


async def test_connection_refused_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    llm = AnthropicLLM(KEY, base_url=f"http://127.0.0.1:{port}", policy=replace(FAST, retries=1))
    seen, error = await failure(llm, ask())
    assert error.kind == "unavailable" and KEY not in str(error)


# doctor


async def test_check_accepts_a_good_key_and_refuses_a_bad_one(server):
    await make(server).check()
    assert server.requests[-1].path == "/v1/models" and presented_key(server.requests[-1].headers) == KEY
    with pytest.raises(ProviderError) as caught:
        await make(server, key="sk-ant-bad").check()
    assert caught.value.kind == "auth" and "sk-ant-bad" not in str(caught.value)


def test_repr_never_shows_the_key():
    assert KEY not in repr(AnthropicLLM(KEY)) and AnthropicLLM(KEY).name == "anthropic"
