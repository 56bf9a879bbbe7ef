"""Event fan-out latency across instances: commit -> WebSocket subscriber, local and remote.

    python bench/cluster_events.py [--rates 200,1000] [--seconds 10] [--calls 20] [--json out.json]

Two runtime instances run in this process (one event loop) in cluster mode on the machine's
PostgreSQL (a throw-away schema) and NATS JetStream (a throw-away stream and subject prefix,
deleted after). Instance 2 commits events of ``--calls`` fake calls on an open-loop clock at each
offered rate; a WebSocket subscriber on instance 2 (local: fanned out at commit) and one on
instance 1 (remote: through NATS) take every event. Latency runs from the end of the commit
(the bus hands the event out) to the subscriber's receipt of the WebSocket frame, so it includes
the JetStream publish, the other instance's fan-out and both WebSocket hops. One loop serves both
instances, the load and the clients: figures are an upper bound for one box. Target: remote
p99 < 20 ms on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
NATS_URL = "nats://127.0.0.1:4222"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _instance(base: Path, name: str, token: str):
    from aiohttp import web

    from peers.loopback import serve_loopback
    from runtime.api.app import create_app
    from runtime.config import build_settings
    from runtime.control.plane import ControlPlane

    unlimited = {"limit": 1_000_000, "window_s": 60}
    classes = ("read", "write", "session", "realtime", "recording", "control", "outbound")
    settings = build_settings({
        "database": {"url": f"{POSTGRES}?schema=bench_{token}"},
        "secrets": {"backend": "cryptfile", "master_key_file": str(base / "master.key")},
        "server": {"instance_id": name},
        "logging": {"level": "warning"},
        "limits": {"rate_limits": {"runtime": dict.fromkeys(classes, unlimited)}},
        "events": {"nats": {"url": NATS_URL, "stream": f"BENCH_{token}", "subject_prefix": f"bench{token}"}},
    }, base / name)
    control = await ControlPlane.open(settings)
    app = create_app(settings, control)
    runner, port = await serve_loopback(app, runner_class=web.AppRunner)
    return app, runner, control, f"http://127.0.0.1:{port}"


async def _subscriber(http, url: str, key: str, received: dict[str, float], done: asyncio.Event, total: int):
    ws = await http.ws_connect(url + "/api/v1/events/ws", headers={"Authorization": f"Bearer {key}"})
    await ws.send_json({"type": "subscribe", "topics": ["*"]})
    assert (await ws.receive_json())["type"] == "subscribed"

    async def read() -> None:
        import orjson

        async for msg in ws:
            now = time.perf_counter()
            body = orjson.loads(msg.data)
            if body.get("type") == "event":
                received[body["event"]["id"]] = now
                if len(received) >= total:
                    done.set()

    return ws, asyncio.create_task(read())


async def _step(origin_app, tenant_id: str, call_ids: list[str], rate: float, seconds: float,
                http, urls: tuple[str, str], key: str) -> dict:
    from runtime.api.appkeys import BUS
    from runtime.events.models import DtmfReceived, Event

    bus = origin_app[BUS]
    n = int(rate * seconds)
    committed_at: dict[str, float] = {}
    original = bus.committed

    def timed(events, queued):  # the instant the bus hands committed events out
        now = time.perf_counter()
        for event in events:
            committed_at[event.id] = now
        original(events, queued)

    bus.committed = timed
    local: dict[str, float] = {}
    remote: dict[str, float] = {}
    local_done, remote_done = asyncio.Event(), asyncio.Event()
    ws_local, reader_local = await _subscriber(http, urls[1], key, local, local_done, n)
    ws_remote, reader_remote = await _subscriber(http, urls[0], key, remote, remote_done, n)
    await asyncio.sleep(0.3)  # the interest and subscriptions settle
    seqs = dict.fromkeys(call_ids, 0)
    lags: list[float] = []
    pending: set[asyncio.Task] = set()
    start = time.perf_counter() + 0.05
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(time.perf_counter() - due)
        call_id = call_ids[i % len(call_ids)]
        seqs[call_id] += 1
        event = Event.of(DtmfReceived(digit="1"), tenant_id=tenant_id, call_id=call_id, seq=seqs[call_id],
                         trace_id="bench")
        task = asyncio.create_task(bus.publish(event))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    try:
        await asyncio.wait_for(asyncio.gather(local_done.wait(), remote_done.wait()), 10)
    except TimeoutError:
        pass
    bus.committed = original
    for ws, reader in ((ws_local, reader_local), (ws_remote, reader_remote)):
        await ws.close()
        reader.cancel()
    lat_local = [(local[i] - t) * 1000 for i, t in committed_at.items() if i in local]
    lat_remote = [(remote[i] - t) * 1000 for i, t in committed_at.items() if i in remote]
    return {"rate": rate, "events": n, "local_received": len(lat_local), "remote_received": len(lat_remote),
            "local_p50_ms": round(_pct(lat_local, 0.5), 2), "local_p99_ms": round(_pct(lat_local, 0.99), 2),
            "remote_p50_ms": round(_pct(lat_remote, 0.5), 2), "remote_p99_ms": round(_pct(lat_remote, 0.99), 2),
            "remote_max_ms": round(max(lat_remote, default=float("nan")), 2),
            "send_lag_p99_ms": round(_pct(lags, 0.99) * 1000, 2)}


async def run(rates: list[float], seconds: float, calls: int) -> list[dict]:
    import aiohttp
    import nats

    from runtime.control.schemas import ApiKeyCreate, TenantCreate
    from runtime.ids import new_id, now_iso
    from runtime.secrets import write_master_key
    from runtime.store.postgres import PostgresDatabase

    token = secrets.token_hex(4)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        write_master_key(base / "master.key")
        first = await _instance(base, "i1", token)  # migrates the schema
        second = await _instance(base, "i2", token)
        http = aiohttp.ClientSession()
        try:
            control = first[2]
            tenant = await control.tenants.create(TenantCreate(name="bench"))
            _, key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id))
            call_ids = []
            for _ in range(calls):
                call_id, now = new_id("call"), now_iso()
                await control.store.voice_calls.insert({
                    "id": call_id, "tenant_id": tenant.id, "agent_id": None, "agent_version": None,
                    "number_id": None, "provider": "twilio", "provider_call_id": None, "direction": "inbound",
                    "from_number": None, "to_number": None, "status": "connected", "end_reason": None,
                    "hangup_by": None, "started_at": now, "connected_at": now, "ended_at": None,
                    "duration_ms": None, "summary": {}, "latency": {}, "metadata": {}, "trace_id": "bench",
                    "created_at": now, "updated_at": now,
                })
                call_ids.append(call_id)
            for rate in rates:
                row = await _step(second[0], tenant.id, call_ids, rate, seconds, http, (first[3], second[3]), key)
                results.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        finally:
            await http.close()
            for _app, runner, control, _ in (second, first):
                await runner.cleanup()
                await control.close()
            await PostgresDatabase(f"{POSTGRES}?schema=bench_{token}").drop_schema()
            client = await nats.connect(NATS_URL)
            try:
                await client.jetstream().delete_stream(f"BENCH_{token}")
            finally:
                await client.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,1000", help="events/s committed on instance 2, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each step")
    parser.add_argument("--calls", type=int, default=20, help="fake calls the events are spread over")
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args(argv)
    results = asyncio.run(run([float(r) for r in args.rates.split(",")], args.seconds, args.calls))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
