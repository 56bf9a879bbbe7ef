"""What one party can hold or push through the Twilio media socket: a socket must start in time
(4408), unauthenticated sockets are capped per client address (429 before the upgrade; the
address from X-Forwarded-For only behind a trusted proxy), inbound audio may not run ahead of
real time (4429) and an oversized message closes with 4413. Each ends at most that socket."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import aiohttp
import pytest

from runtime.config import ConfigError, build_settings
from runtime.telephony.twilio.bridge import bridge
from tests.api.support import with_overrides
from tests.twilio.support import ACCOUNT_SID, NUMBER, start_world, stop_world

WORLD_OVERRIDES = {"telephony": {"media_start_timeout_s": 1.0}, "limits": {"pending_media_sockets_per_address": 3}}
FORWARDED = "X-Forwarded-For"


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _media_url(world) -> str:
    return world.api.base_url.replace("http://", "ws://") + "/media/twilio"


async def _pending(world, forwarded_for: str | None = None) -> aiohttp.ClientWebSocketResponse:
    headers = {FORWARDED: forwarded_for} if forwarded_for else {}
    return await world.api.http.ws_connect(_media_url(world), headers=headers, autoping=True, max_msg_size=0)


async def _refused_status(world, forwarded_for: str | None = None) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await _pending(world, forwarded_for)
    return refused.value.status


async def _metric(world, reason: str) -> float:
    _, text, _ = await world.api.call("GET", "/metrics")
    prefix = f'voicectl_twilio_media_refused_total{{reason="{reason}"}} '
    line = next((line for line in text.splitlines() if line.startswith(prefix)), None)
    return float(line.removeprefix(prefix)) if line else 0.0


async def _until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# The start deadline


async def test_a_socket_that_never_starts_is_closed_with_4408(world) -> None:
    ws = await _pending(world)
    await ws.send_str('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
    opened = time.monotonic()
    msg = await ws.receive(timeout=5)
    waited = time.monotonic() - opened
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    assert ws.close_code == 4408
    assert 0.8 <= waited <= 3.0, waited
    assert await _metric(world, "start_timeout") == 1.0
    assert await world.calls() == []


async def test_a_stream_that_starts_in_time_outlives_the_start_deadline(world) -> None:
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    await leg.stream([b"\xff" * 160] * 75)  # 1.5 s, past the 1 s start deadline
    assert not leg.closed.is_set()
    await leg.stop(ACCOUNT_SID, call_sid)
    await leg.wait_closed()
    assert leg.result.close_code == 1000


@pytest.mark.parametrize("seconds", [0.5, 10.5])
def test_the_start_timeout_is_bounded(tmp_path, seconds: float) -> None:
    with pytest.raises(ConfigError, match=r"telephony\.media_start_timeout_s: got"):
        build_settings({"telephony": {"media_start_timeout_s": seconds}}, tmp_path)


# Pending sockets per client address


async def test_pending_sockets_are_capped_per_address_and_refusals_counted(world) -> None:
    held = [await _pending(world) for _ in range(3)]
    assert await _refused_status(world) == 429
    # The same refusal as plain HTTP: the JSON error body.
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": key}
    status, body, _ = await world.api.call("GET", "/media/twilio", headers=upgrade)
    assert status == 429 and body["error"] == "too_many_pending_sockets", body
    assert await _metric(world, "pending_limit") == 2.0
    # A socket that closes gives its place back; one that starts is no longer pending.
    await held.pop().close()
    pending = bridge(world.api.app).pending
    await _until(lambda: pending.count("127.0.0.1") == 2)
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    await leg.first_media.wait()
    assert pending.count("127.0.0.1") == 2
    held.append(await _pending(world))
    assert await _refused_status(world) == 429
    await leg.stop(ACCOUNT_SID, call_sid)
    await leg.wait_closed()
    for ws in held:
        await ws.close()
    await _until(lambda: pending.count("127.0.0.1") == 0)


def test_the_default_cap_admits_the_default_call_limit_from_one_address(tmp_path) -> None:
    limits = build_settings({}, tmp_path).limits  # e.g. every call of bench/calls.py from 127.0.0.1
    assert limits.pending_media_sockets_per_address >= limits.max_calls


async def test_forwarded_for_is_ignored_without_a_trusted_proxy(world) -> None:
    held = [await _pending(world, f"203.0.113.{n}") for n in (1, 2, 3)]  # all count as 127.0.0.1
    assert await _refused_status(world, "203.0.113.4") == 429
    for ws in held:
        await ws.close()


async def test_forwarded_for_names_the_client_behind_a_trusted_proxy(settings) -> None:
    world = await start_world(with_overrides(settings, **WORLD_OVERRIDES), server={"trusted_proxies": ["127.0.0.0/8"]})
    try:
        held = [await _pending(world, "203.0.113.1") for _ in range(3)]
        assert await _refused_status(world, "203.0.113.1") == 429
        # A forged hop on the left is ignored: the client is the last address the proxy saw.
        assert await _refused_status(world, "198.51.100.7, 203.0.113.1") == 429
        held.append(await _pending(world, "203.0.113.2"))
        held.append(await _pending(world, "203.0.113.1, 198.51.100.7"))
        assert bridge(world.api.app).pending.count("127.0.0.1") == 0
        for ws in held:
            await ws.close()
    finally:
        await stop_world(world)


async def test_pending_sockets_are_capped_for_the_whole_box_too(settings) -> None:
    """Many addresses together cannot hold more than ``limits.pending_media_sockets``."""
    overrides = {**WORLD_OVERRIDES, "limits": {"pending_media_sockets_per_address": 3, "pending_media_sockets": 4}}
    world = await start_world(with_overrides(settings, **overrides), server={"trusted_proxies": ["127.0.0.0/8"]})
    try:
        held = [await _pending(world, "203.0.113.1") for _ in range(3)]
        held.append(await _pending(world, "203.0.113.2"))
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": key, FORWARDED: "203.0.113.3"}
        status, body, _ = await world.api.call("GET", "/media/twilio", headers=upgrade)
        assert status == 429 and body["error"] == "too_many_pending_sockets", body
        assert body["details"]["scope"] == "box" and body["details"]["limit"] == 4, body
        await held.pop().close()  # a place given back is free for any address
        pending = bridge(world.api.app).pending
        await _until(lambda: pending.total == 3)
        held.append(await _pending(world, "203.0.113.3"))
        for ws in held:
            await ws.close()
        await _until(lambda: pending.total == 0)
    finally:
        await stop_world(world)


def test_client_address_walks_forwarded_for_from_the_right() -> None:
    from runtime.web.client_address import ClientAddresses

    addresses = ClientAddresses(["10.0.0.0/8", "2001:db8::1"])

    def of(peer: str, *forwarded: str) -> str:
        return addresses.resolve(peer, forwarded)

    assert of("192.0.2.9", "203.0.113.1") == "192.0.2.9"  # peer not trusted: header ignored
    assert of("10.1.2.3") == "10.1.2.3"  # trusted, no header: the proxy itself
    assert of("10.1.2.3", "203.0.113.1") == "203.0.113.1"
    assert of("10.1.2.3", "198.51.100.1, 203.0.113.1, 10.9.9.9") == "203.0.113.1"
    assert of("10.1.2.3", "203.0.113.1", "10.4.4.4") == "203.0.113.1"  # repeated headers join
    assert of("2001:db8::1", "2001:DB8::0:5") == "2001:db8::5"
    assert of("10.1.2.3", "10.2.2.2") == "10.2.2.2"  # every hop trusted: the farthest one
    assert of("10.1.2.3", "not-an-address, 203.0.113.1") == "203.0.113.1"
    assert of("10.1.2.3", "203.0.113.1, garbage") == "10.1.2.3"  # the proxy's own hop is unreadable


@pytest.mark.parametrize("value", [["not-an-ip"], ["10.0.0.0/33"], "10.0.0.1"])
def test_trusted_proxies_must_be_addresses_or_networks(tmp_path, value) -> None:
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies.*: got"):
        build_settings({"server": {"trusted_proxies": value}}, tmp_path)


# Inbound audio against the wall clock


async def test_audio_far_ahead_of_real_time_is_closed_with_4429_and_spares_other_calls(world) -> None:
    caller = world.caller()
    ok_sid, ok_answer = await caller.dial(NUMBER)
    ok = await caller.open_stream(ok_sid, ok_answer)
    await ok.first_media.wait()  # the agent's greeting is playing to the caller
    streaming = asyncio.create_task(ok.stream([b"\x7f" * 160] * 150))  # 3 s in real time
    fast_sid, fast_answer = await caller.dial(NUMBER)
    fast = await caller.open_stream(fast_sid, fast_answer)
    burst_at = time.monotonic()
    await fast.stream([b"\x7f" * 160] * 250, speed=0)  # 5 s of audio at once
    await fast.wait_closed()
    assert fast.result.close_code == 4429
    row = await world.final_call(fast_sid)
    assert row["status"] == "failed" and row["end_reason"] == "media_ahead_of_real_time"
    assert row["summary"]["media"]["inbound_frames"] < 150  # the burst allowance (1 s), not all 5 s
    await streaming
    assert not ok.closed.is_set()
    # The other call's audio kept arriving in real time through the burst and the close.
    window = [t for t in ok.result.arrivals if t >= burst_at]
    assert len(window) > 25, len(window)
    gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
    assert max(gaps) < 0.25, max(gaps)  # generous: frames are 20 ms apart
    await ok.stop(ACCOUNT_SID, ok_sid)
    await ok.wait_closed()
    row = await world.final_call(ok_sid)
    assert row["status"] == "ended" and row["summary"]["media"]["inbound_frames"] == 150
    assert await _metric(world, "ahead_of_real_time") == 1.0


async def test_a_jitter_burst_within_a_second_is_accepted(world) -> None:
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    leg = await caller.open_stream(call_sid, answer)
    await leg.stream([b"\x7f" * 160] * 25)
    await leg.stream([b"\x7f" * 160] * 40, speed=0)  # 0.8 s at once, as after a network stall
    await leg.stream([b"\x7f" * 160] * 50)
    assert not leg.closed.is_set()
    await leg.stop(ACCOUNT_SID, call_sid)
    await leg.wait_closed()
    assert leg.result.close_code == 1000


# Oversized messages


@pytest.mark.parametrize("started", [True, False])
async def test_a_message_over_the_limit_closes_with_4413(world, started: bool) -> None:
    caller = world.caller()
    call_sid, answer = await caller.dial(NUMBER)
    if started:
        leg = await caller.open_stream(call_sid, answer)
        ws = leg.ws
        await leg.first_media.wait()
    else:
        ws = await _pending(world)
    await ws.send_str('{"event":"mark","mark":{"name":"' + "x" * (2 * 1024 * 1024) + '"}}')
    if started:
        await leg.wait_closed()
        code = leg.result.close_code
    else:
        await ws.receive(timeout=5)
        code = ws.close_code
    assert code == 4413
    if started:
        row = await world.final_call(call_sid)
        assert row["status"] == "failed" and row["end_reason"] == "oversized_media_message"
