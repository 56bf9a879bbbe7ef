"""What forwarding live call control to the instance holding the call adds (issue 17, section 2).

    .venv/bin/python bench/cluster_control.py                 # 2000 says each way
    .venv/bin/python bench/cluster_control.py --says 500 --json -

Two instances run in this process on the machine's PostgreSQL (a throw-away schema) and NATS (a
throw-away stream and subject prefix), as the cluster tests run them. A connected call is held by
instance 2 (its conversation records the lines, no speech engines). One client sends ``say``s one
after another, over REST (``POST /api/v1/calls/{id}/say``) and over the events WebSocket (a
speaking session's ``say``, acked), to instance 2 itself (local) and to instance 1 (forwarded over
NATS request/reply). Latency is per request, client send -> answer; "added" is forwarded minus
local at the same percentile. Client, both instances and their NATS traffic share one event loop
and one core, so the figures are an upper bound for two processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def _rest_says(live: Any, key: str, call_id: str, count: int) -> list[float]:
    url = f"{live.base_url}/api/v1/calls/{call_id}/say"
    headers = {"Authorization": f"Bearer {key}"}
    out = []
    for n in range(count):
        began = time.perf_counter()
        async with live.http.post(url, json={"text": f"line {n}"}, headers=headers) as resp:
            await resp.read()
            assert resp.status == 202, resp.status
        out.append((time.perf_counter() - began) * 1000)
    return out


async def _ws_says(live: Any, key: str, speaking_id: str, count: int) -> list[float]:
    out = []
    async with live.http.ws_connect(f"{live.base_url}/api/v1/events/ws?token={key}") as ws:
        for n in range(count):
            began = time.perf_counter()
            await ws.send_json({"type": "say", "speaking_id": speaking_id, "text": f"line {n}", "ref": n})
            answer = await ws.receive_json(timeout=10)
            assert answer == {"type": "ack", "ref": n}, answer
            out.append((time.perf_counter() - began) * 1000)
    return out


async def run(says: int) -> dict[str, Any]:
    from runtime.api.appkeys import TRACKER
    from runtime.control.schemas import ApiKeyCreate
    from runtime.store.postgres import PostgresDatabase
    from tests.calls.support import provision
    from tests.cluster.support import delete_stream, new_cluster_names, start_instances, stop_instances
    from tests.cluster.test_call_control import Bridge, HeardLines

    names = new_cluster_names()
    with tempfile.TemporaryDirectory() as tmp:
        started = await start_instances(names, Path(tmp), 2)
        (one, _), (two, _) = started
        try:
            world = await provision(one.control, name="bench", e164="+15550100001")
            _, key = await one.control.keys.create(ApiKeyCreate(tenant_id=world.tenant_id, scope="runtime"))
            session = await two.app[TRACKER].open_call(to_number=world.e164, from_number="+15550000001",
                                                       provider="twilio")
            session.control, session.conversation = Bridge(), HeardLines()
            await session.connect()
            async with two.http.post(f"{two.base_url}/api/v1/speakings", json={"reference_id": session.id},
                                     headers={"Authorization": f"Bearer {key}"}) as resp:
                speaking = await resp.json()
            warm = max(50, says // 10)
            for live in (one, two):  # connections, first NATS subscriptions, code paths
                await _rest_says(live, key, session.id, warm)
                await _ws_says(live, key, speaking["id"], warm)
            result: dict[str, Any] = {}
            for via, target in (("rest", session.id), ("ws", speaking["id"])):
                measure = _rest_says if via == "rest" else _ws_says
                local = await measure(two, key, target, says)
                forwarded = await measure(one, key, target, says)
                result[via] = {"local": _summary(local), "forwarded": _summary(forwarded),
                               "added_p50_ms": round(_pct(forwarded, 0.5) - _pct(local, 0.5), 3),
                               "added_p99_ms": round(_pct(forwarded, 0.99) - _pct(local, 0.99), 3)}
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
    for via, figures in result.items():
        local, forwarded = figures["local"], figures["forwarded"]
        print(f"{via:4}  local p50 {local['p50_ms']:.2f} ms p99 {local['p99_ms']:.2f} ms | forwarded p50 "
              f"{forwarded['p50_ms']:.2f} ms p99 {forwarded['p99_ms']:.2f} ms | added p50 "
              f"{figures['added_p50_ms']:.2f} ms p99 {figures['added_p99_ms']:.2f} ms  (n={local['n']})")


if __name__ == "__main__":
    main()
