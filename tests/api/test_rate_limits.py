"""Moving-window rate limits, in this process's memory or in Redis shared by several runtimes.

Redis is the machine's server at 127.0.0.1:6379: a test needing it fails when it is missing.
Each test writes under its own key prefix and deletes its keys afterwards."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

import runtime.web.ratelimit as ratelimit
from runtime.config import RateLimitSettings, Settings
from runtime.web.ratelimit import RateLimiter, storage_unreachable
from tests.api.support import LiveApi, start_live_api, stop_live_api, with_overrides
from tests.cluster.support import NatsProxy as TcpRelay

REDIS = "async+redis://127.0.0.1:6379/0"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    prefix = f"test-{secrets.token_hex(6)}"
    yield prefix
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def _limits(storage: str, prefix: str, read: dict) -> dict:
    return {"rate_limits": {"storage": storage, "key_prefix": prefix, "runtime": {"read": read}}}


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def test_the_machines_redis_answers() -> None:
    assert await storage_unreachable(REDIS) is None


@pytest.mark.parametrize("storage", ["memory://", REDIS])
async def test_no_double_burst_across_a_window_edge(storage: str, prefix: str) -> None:
    # A fixed 2 s window resets on even seconds: 3 hits just before an edge and 3 just after used
    # to pass (6 in 0.4 s for a limit of 3). The moving window refuses the second three.
    limiter = RateLimiter(RateLimitSettings.model_validate(_limits(storage, prefix, {"limit": 3, "window_s": 2})
                                                           ["rate_limits"]))
    await limiter.open()
    try:
        edge = math.floor(time.time() / 2) * 2 + 2
        if edge - time.time() < 0.3:
            edge += 2
        await _sleep_until(edge - 0.2)
        before = [await limiter.check("key-1", "runtime", "read") for _ in range(3)]
        assert [d.allowed for d in before] == [True, True, True]
        assert [d.remaining for d in before] == [2, 1, 0]
        await _sleep_until(edge + 0.2)
        after = [await limiter.check("key-1", "runtime", "read") for _ in range(3)]
        assert [d.allowed for d in after] == [False, False, False]
        # Reset is when the oldest hit leaves the window: 2 s after the first hit, not at the edge.
        assert after[0].reset_at in (math.ceil(edge + 1.8), math.ceil(edge + 1.8) + 1)
        retry = int(after[0].headers()["Retry-After"])
        assert 1 <= retry <= 2
        assert (await limiter.check("key-2", "runtime", "read")).allowed, "another key has its own window"
        await _sleep_until(after[0].reset_at + 0.05)
        again = await limiter.check("key-1", "runtime", "read")
        assert again.allowed, "the oldest hits left the window"
    finally:
        await limiter.close()


async def _reads(live: LiveApi, key: str, n: int) -> list[tuple[int, str]]:
    out = []
    for _ in range(n):
        status, _, resp = await live.call("GET", "/api/v1/agents", key)
        out.append((status, resp.headers.get("X-RateLimit-Remaining", "")))
    return out


async def _two_runtimes(settings: Settings):
    first = await start_live_api(settings)
    second = await start_live_api(settings)
    _, key = await first[0].tenant_with_key("shared-limits")
    return first, second, key


async def test_two_runtimes_on_redis_count_together(settings: Settings, prefix: str) -> None:
    limited = with_overrides(settings, limits=_limits(REDIS, prefix, {"limit": 4, "window_s": 60}))
    (one, r1), (two, r2), key = await _two_runtimes(limited)
    try:
        assert await _reads(one, key, 2) == [(200, "3"), (200, "2")]
        assert await _reads(two, key, 2) == [(200, "1"), (200, "0")]
        status, body, resp = await one.call("GET", "/api/v1/agents", key)
        assert status == 429 and body["error"] == "rate_limited" and 1 <= int(resp.headers["Retry-After"]) <= 60
        assert (await _reads(two, key, 1))[0][0] == 429
        redis = Redis.from_url("redis://127.0.0.1:6379/0")
        try:
            assert [k async for k in redis.scan_iter(f"{prefix}:ratelimit*")], "the hits are in Redis"
        finally:
            await redis.aclose()
    finally:
        await stop_live_api(one, r1)
        await stop_live_api(two, r2)


async def test_memory_storage_counts_per_process(settings: Settings, prefix: str) -> None:
    limited = with_overrides(settings, limits=_limits("memory://", prefix, {"limit": 2, "window_s": 60}))
    (one, r1), (two, r2), key = await _two_runtimes(limited)
    try:
        assert [s for s, _ in await _reads(one, key, 3)] == [200, 200, 429]
        assert [s for s, _ in await _reads(two, key, 3)] == [200, 200, 429]
    finally:
        await stop_live_api(one, r1)
        await stop_live_api(two, r2)


async def test_redis_lost_mid_run_counts_in_the_process_then_in_redis_again(
        settings: Settings, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "REDIS_RETRY_S", 0.3)
    relay = await TcpRelay(upstream=("127.0.0.1", 6379)).start()
    storage = f"async+redis://127.0.0.1:{relay.port}/0"
    live, runner = await start_live_api(with_overrides(settings, limits=_limits(storage, prefix,
                                                                                {"limit": 3, "window_s": 60})))
    try:
        _, key = await live.tenant_with_key("redis-lost")
        assert await _reads(live, key, 1) == [(200, "2")]
        relay.cut()
        # Neither a 500 nor every request refused: the limit holds in this process meanwhile.
        assert await _reads(live, key, 4) == [(200, "2"), (200, "1"), (200, "0"), (429, "0")]
        relay.restore()
        await asyncio.sleep(0.35)
        assert await _reads(live, key, 3) == [(200, "1"), (200, "0"), (429, "0")], "Redis counts again"
    finally:
        await stop_live_api(live, runner)
        await relay.stop()


async def test_redis_down_at_startup_still_answers(settings: Settings, prefix: str, unused_tcp_port: int) -> None:
    storage = f"async+redis://127.0.0.1:{unused_tcp_port}/0"
    assert "is unreachable" in (await storage_unreachable(storage) or "")
    live, runner = await start_live_api(with_overrides(settings, limits=_limits(storage, prefix,
                                                                                {"limit": 1, "window_s": 60})))
    try:
        _, key = await live.tenant_with_key("redis-down")
        assert [s for s, _ in await _reads(live, key, 2)] == [200, 429]
    finally:
        await stop_live_api(live, runner)


async def test_a_redis_password_never_shows(unused_tcp_port: int) -> None:
    reason = await storage_unreachable(f"async+redis://:hunter2-secret@127.0.0.1:{unused_tcp_port}/0")
    assert reason and "hunter2" not in reason and f"redis://:***@127.0.0.1:{unused_tcp_port}/0" in reason
