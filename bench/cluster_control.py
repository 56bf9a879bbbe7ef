"""What forwarding live call control to the instance holding the call adds (issue 17, section 2).

    .venv/bin/python bench/cluster_control.py                 # 2000 says each way
    .venv/bin/python bench/cluster_control.py --says 500 --json -

Two instances run in this process on the machine's PostgreSQL (a throw-away schema) and NATS (a
throw-away stream and subject prefix), as the cluster tests run them. Each holds one connected
call (its conversation records the lines, no speech engines), with a speaking session. One client
sends ``say``s one after another to instance 1, over REST (``POST /api/v1/calls/{id}/say``) and
over the events WebSocket (the speaking session's ``say``, acked), alternately for the call
instance 1 holds (local) and for the one instance 2 holds (forwarded over NATS request/reply).
Latency is per request, client send -> answer; "added" is forwarded minus local at the same
percentile. Client, both instances and their NATS traffic share one event loop and one core, so
the figures are an upper bound for two processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(_pct(samples, 0.50), 3), "p99_ms": round(_pct(samples, 0.99), 3),
            "mean_ms": round(statistics.fmean(samples), 3), "n": len(samples)}


class RestSayer:
    def __init__(self, live: Any, key: str, call_id: str) -> None:
        self.live, self.url = live, f"{live.base_url}/api/v1/calls/{call_id}/say"
        self.headers = {"Authorization": f"Bearer {key}"}

    async def __aenter__(self) -> RestSayer:
        return self

    async def __aexit__(self, *_: Any) -> None:
        return None

    async def say(self, n: int) -> float:
        began = time.perf_counter()
        async with self.live.http.post(self.url, json={"text": f"line {n}"}, headers=self.headers) as resp:
            await resp.read()
            assert resp.status == 202, resp.status
        return (time.perf_counter() - began) * 1000


class SocketSayer:
    def __init__(self, live: Any, key: str, speaking_id: str) -> None:
        self.live, self.key, self.speaking_id = live, key, speaking_id

    async def __aenter__(self) -> SocketSayer:
        self.ws = await self.live.http.ws_connect(f"{self.live.base_url}/api/v1/events/ws?token={self.key}")
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.ws.close()

    async def say(self, n: int) -> float:
        began = time.perf_counter()
        await self.ws.send_json({"type": "say", "speaking_id": self.speaking_id, "text": f"line {n}", "ref": n})
        answer = await self.ws.receive_json(timeout=10)
        assert answer == {"type": "ack", "ref": n}, answer
        return (time.perf_counter() - began) * 1000


async def _interleaved(local: Any, forwarded: Any, count: int) -> tuple[list[float], list[float]]:
    """One local and one forwarded say in turn: load from elsewhere on the box hits both alike."""
    here, there = [], []
    async with local, forwarded:
        for n in range(count):
            here.append(await local.say(n))
            there.append(await forwarded.say(n))
    return here, there


async def run(says: int) -> dict[str, Any]:
    from runtime.store.postgres import PostgresDatabase
    from tests.cluster.live_calls import connected_call, tenant_with_key
    from tests.cluster.support import delete_stream, new_cluster_names, start_instances, stop_instances

    names = new_cluster_names()
    with tempfile.TemporaryDirectory() as tmp:
        started = await start_instances(names, Path(tmp), 2)
        (one, _), (two, _) = started
        try:
            acme = await tenant_with_key(one, "bench", "+15550100001")
            calls, speakings = [], []
            for holder in (one, two):  # a call held by each; every request goes to instance 1
                session, _, _ = await connected_call(holder, acme)
                async with one.http.post(f"{one.base_url}/api/v1/speakings", json={"reference_id": session.id},
                                         headers={"Authorization": f"Bearer {acme.key}"}) as resp:
                    speakings.append((await resp.json())["id"])
                calls.append(session)
            sayers = {"rest": lambda n: RestSayer(one, acme.key, calls[n].id),
                      "ws": lambda n: SocketSayer(one, acme.key, speakings[n])}
            result: dict[str, Any] = {"loadavg_1m_before": round(os.getloadavg()[0], 2)}
            for via, sayer in sayers.items():
                await _interleaved(sayer(0), sayer(1), max(50, says // 10))  # warm-up: connections, code paths
                local, forwarded = await _interleaved(sayer(0), sayer(1), says)
                result[via] = {"local": _summary(local), "forwarded": _summary(forwarded),
                               "added_p50_ms": round(_pct(forwarded, 0.5) - _pct(local, 0.5), 3),
                               "added_p99_ms": round(_pct(forwarded, 0.99) - _pct(local, 0.99), 3)}
            result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
            for session in calls:
                await session.hangup("bench_over")
            return result
        finally:
            await stop_instances(started)
            await delete_stream(names)
            await PostgresDatabase(names.schema_url).drop_schema()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--says", type=int, default=2000, help="says measured per path (default 2000)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON ('-': stdout)")
    args = parser.parse_args()
    result = asyncio.run(run(args.says))
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"load average (1 min) before {result['loadavg_1m_before']}, after {result['loadavg_1m_after']}")
    for via in ("rest", "ws"):
        figures = result[via]
        local, forwarded = figures["local"], figures["forwarded"]
        print(f"{via:4}  local p50 {local['p50_ms']:.2f} ms p99 {local['p99_ms']:.2f} ms | forwarded p50 "
              f"{forwarded['p50_ms']:.2f} ms p99 {forwarded['p99_ms']:.2f} ms | added p50 "
              f"{figures['added_p50_ms']:.2f} ms p99 {figures['added_p99_ms']:.2f} ms  (n={local['n']})")


if __name__ == "__main__":
    main()
