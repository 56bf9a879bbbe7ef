"""Cost of one rate-limit check (a request's hit and its window stats), memory vs Redis.

    python bench/ratelimit.py [--checks 20000] [--keys 100] [--redis async+redis://127.0.0.1:6379/0]

Calls ``RateLimiter.check`` in a loop on one event loop, ``--keys`` API keys in turn, each with
the default read limit (100 per 900 s) raised so that no check is refused (a refused check costs
the same). Prints p50/p99/mean microseconds per check for each storage, and the process's CPU
per check (all threads: the memory storage expires old hits in a background pass). The Redis
keys are written under a random prefix and deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def _measure(storage: str, checks: int, keys: int, prefix: str) -> dict:
    from runtime.config import RateLimitSettings
    from runtime.web.ratelimit import RateLimiter

    settings = RateLimitSettings.model_validate({
        "storage": storage, "key_prefix": prefix,
        "runtime": {"read": {"limit": checks + 1, "window_s": 900}},
    })
    limiter = RateLimiter(settings)
    await limiter.open()
    try:
        for i in range(min(keys, checks)):  # warm-up: connections, scripts loaded, keys made
            await limiter.check(f"key-{i}", "runtime", "read")
        took: list[float] = []
        cpu_start = time.process_time()
        for i in range(checks):
            start = time.perf_counter()
            decision = await limiter.check(f"key-{i % keys}", "runtime", "read")
            took.append(time.perf_counter() - start)
            assert decision is not None and decision.allowed
        await asyncio.sleep(0.2)  # the memory storage's expiry pass, started by the last checks
        cpu = time.process_time() - cpu_start
    finally:
        await limiter.close()
    took.sort()
    us = [t * 1e6 for t in took]
    return {"storage": storage, "checks": checks, "p50_us": us[len(us) // 2],
            "p99_us": us[int(len(us) * 0.99)], "mean_us": statistics.fmean(us),
            "cpu_us": cpu / checks * 1e6}


async def _cleanup(url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(url.removeprefix("async+"))
    try:
        keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--redis", default="async+redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    prefix = f"bench-{secrets.token_hex(4)}"
    try:
        for storage in ("memory://", args.redis):
            r = await _measure(storage, args.checks, args.keys, prefix)
            print(f"{r['storage']:<34} {r['checks']} checks  p50 {r['p50_us']:7.1f} us  "
                  f"p99 {r['p99_us']:7.1f} us  mean {r['mean_us']:7.1f} us  process CPU {r['cpu_us']:6.1f} us")
    finally:
        await _cleanup(args.redis, prefix)


if __name__ == "__main__":
    asyncio.run(main())
