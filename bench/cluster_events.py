"""Event fan-out latency across instances: commit -> WebSocket subscriber, local and remote.

    python bench/cluster_events.py [--rates 200,500,1000] [--seconds 10] [--calls 20]
                                   [--processes] [--json out.json]

Two runtime instances run in cluster mode on the machine's PostgreSQL (a throw-away schema)
and NATS JetStream (a throw-away stream and subject prefix, removed after). Instance 2 commits
events of ``--calls`` fake calls on an open-loop clock at each offered rate; a WebSocket
subscriber on instance 2 (local: fanned out at commit) and one on instance 1 (remote: through
NATS) take every event. Latency runs from the end of the commit (the bus hands the event out)
to the subscriber's receipt of the WebSocket frame, so the remote figure includes the publish,
NATS, the other instance's fan-out and both WebSocket hops.

By default both instances, the load and the clients share one process and event loop (an
upper bound); ``--processes`` runs instance 1 and its subscriber in a second process (both
processes read the same monotonic clock). Target: remote p99 < 20 ms on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
NATS_URL = "nats://127.0.0.1:4222"
SETTLE_S = 0.5  # after subscribing: the interest and subscriptions settle
DRAIN_S = 10.0  # after a step: how long late events may take


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
        "secrets": {"backend": "database", "master_key_file": str(base / "master.key")},  # as cluster mode requires
        "server": {"instance_id": name},
        "logging": {"level": "warning"},
        "limits": {"rate_limits": {"runtime": dict.fromkeys(classes, unlimited)}},
        "events": {"nats": {"url": NATS_URL, "stream": f"BENCH_{token}", "subject_prefix": f"bench{token}"}},
    }, base / name)
    control = await ControlPlane.open(settings)
    app = create_app(settings, control)
    runner, port = await serve_loopback(app, runner_class=web.AppRunner)
    return app, runner, control, f"http://127.0.0.1:{port}"


async def _stop(instance) -> None:
    _, runner, control, _ = instance
    await runner.cleanup()
    await control.close()


class Subscriber:
    """A WebSocket client taking every event of the tenant: the monotonic time each one arrived."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self._ws = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, http, url: str, key: str) -> Subscriber:
        self._ws = await http.ws_connect(url + "/api/v1/events/ws", headers={"Authorization": f"Bearer {key}"})
        await self._ws.send_json({"type": "subscribe", "topics": ["*"]})
        assert (await self._ws.receive_json())["type"] == "subscribed"
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        import orjson

        async for msg in self._ws:
            now = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in every process
            body = orjson.loads(msg.data)
            if body.get("type") == "event":
                self.received[body["event"]["id"]] = now

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()


async def _load(bus, tenant_id: str, call_ids: list[str], rate: float, seconds: float,
                seqs: dict[str, int]) -> tuple[dict[str, float], list[float]]:
    """Commit ``rate`` events/s for ``seconds``; when each commit ended, and the generator's lag."""
    from runtime.events.models import DtmfReceived, Event

    committed_at: dict[str, float] = {}
    original = bus.committed

    def timed(events, queued):  # the instant the bus hands committed events out
        now = time.perf_counter()
        for event in events:
            committed_at[event.id] = now
        original(events, queued)

    bus.committed = timed
    lags: list[float] = []
    pending: set[asyncio.Task] = set()
    n = int(rate * seconds)
    start = time.perf_counter() + 0.05
    try:
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
    finally:
        bus.committed = original
    return committed_at, lags


async def _until_received(subscribers: list[Subscriber], ids: set[str]) -> None:
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline and not all(ids <= sub.received.keys() for sub in subscribers):
        await asyncio.sleep(0.05)


def _figures(rate: float, committed_at: dict[str, float], lags: list[float], local: dict[str, float],
             remote: dict[str, float]) -> dict:
    lat_local = [(local[i] - t) * 1000 for i, t in committed_at.items() if i in local]
    lat_remote = [(remote[i] - t) * 1000 for i, t in committed_at.items() if i in remote]
    return {"rate": rate, "events": len(committed_at), "local_received": len(lat_local),
            "remote_received": len(lat_remote),
            "local_p50_ms": round(_pct(lat_local, 0.5), 2), "local_p99_ms": round(_pct(lat_local, 0.99), 2),
            "remote_p50_ms": round(_pct(lat_remote, 0.5), 2), "remote_p99_ms": round(_pct(lat_remote, 0.99), 2),
            "remote_max_ms": round(max(lat_remote, default=float("nan")), 2),
            "send_lag_p99_ms": round(_pct(lags, 0.99) * 1000, 2)}


async def _tenant(control) -> tuple[str, str]:
    from runtime.control.schemas import ApiKeyCreate, TenantCreate

    tenant = await control.tenants.create(TenantCreate(name="bench"))
    _, key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id))
    return tenant.id, key


async def _calls(control, tenant_id: str, calls: int) -> list[str]:
    """Live calls to spread the events over (made once both instances run: a starting instance
    marks calls it finds live as failed)."""
    from runtime.ids import new_id, now_iso

    call_ids = []
    for _ in range(calls):
        call_id, now = new_id("call"), now_iso()
        await control.store.voice_calls.insert({
            "id": call_id, "tenant_id": tenant_id, "agent_id": None, "agent_version": None, "number_id": None,
            "provider": "twilio", "provider_call_id": None, "direction": "inbound", "from_number": None,
            "to_number": None, "status": "connected", "end_reason": None, "hangup_by": None, "started_at": now,
            "connected_at": now, "ended_at": None, "duration_ms": None, "summary": {}, "latency": {},
            "metadata": {}, "trace_id": "bench", "created_at": now, "updated_at": now,
        })
        call_ids.append(call_id)
    return call_ids


async def run(rates: list[float], seconds: float, calls: int, processes: bool) -> list[dict]:
    import aiohttp
    import nats

    from runtime.api.appkeys import BUS
    from runtime.secrets import write_master_key
    from runtime.store.postgres import PostgresDatabase

    token = secrets.token_hex(4)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        write_master_key(base / "master.key")
        origin = await _instance(base, "i2", token)  # migrates the schema
        http = aiohttp.ClientSession()
        remote_process: subprocess.Popen | None = None
        remote_instance = None
        try:
            tenant_id, key = await _tenant(origin[2])
            local = await Subscriber().open(http, origin[3], key)
            remote: Subscriber | None = None
            if processes:
                remote_process = subprocess.Popen(
                    [sys.executable, __file__, "--remote", str(base), token, key],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert remote_process.stdout.readline().strip() == "ready"
            else:
                remote_instance = await _instance(base, "i1", token)
                remote = await Subscriber().open(http, remote_instance[3], key)
            call_ids = await _calls(origin[2], tenant_id, calls)
            await asyncio.sleep(SETTLE_S)
            seqs = dict.fromkeys(call_ids, 0)
            steps = []
            for rate in rates:
                committed_at, lags = await _load(origin[0][BUS], tenant_id, call_ids, rate, seconds, seqs)
                await _until_received([local] if remote is None else [local, remote], set(committed_at))
                steps.append((rate, committed_at, lags))
                if remote is not None:
                    results.append(_figures(rate, committed_at, lags, local.received, remote.received))
                    print(" ".join(f"{k}={v}" for k, v in results[-1].items()), flush=True)
            if remote_process is not None:
                await asyncio.sleep(2.0)  # the last events reach the other process
                out, _ = remote_process.communicate("stop\n", timeout=30)
                received = json.loads(out)
                for rate, committed_at, lags in steps:
                    results.append(_figures(rate, committed_at, lags, local.received, received))
                    print(" ".join(f"{k}={v}" for k, v in results[-1].items()), flush=True)
            await local.close()
            if remote is not None:
                await remote.close()
        finally:
            await http.close()
            if remote_process is not None and remote_process.poll() is None:
                remote_process.kill()
            if remote_instance is not None:
                await _stop(remote_instance)
            await _stop(origin)
            await PostgresDatabase(f"{POSTGRES}?schema=bench_{token}").drop_schema()
            client = await nats.connect(NATS_URL)
            try:
                await client.jetstream().delete_stream(f"BENCH_{token}")
            finally:
                await client.close()
    return results


async def serve_remote(base: Path, token: str, key: str) -> None:
    """--processes: instance 1 and its subscriber; prints ``ready``, then, at ``stop`` on stdin, the
    arrival time of every event as JSON."""
    import aiohttp

    instance = await _instance(base, "i1", token)
    http = aiohttp.ClientSession()
    subscriber = await Subscriber().open(http, instance[3], key)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await subscriber.close()
    await http.close()
    await _stop(instance)
    print(json.dumps(subscriber.received), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,500,1000", help="events/s committed on instance 2, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each step")
    parser.add_argument("--calls", type=int, default=20, help="fake calls the events are spread over")
    parser.add_argument("--processes", action="store_true", help="instance 1 and its subscriber in another process")
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    parser.add_argument("--remote", nargs=3, metavar=("DIR", "TOKEN", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.remote:
        asyncio.run(serve_remote(Path(args.remote[0]), args.remote[1], args.remote[2]))
        return 0
    results = asyncio.run(run([float(r) for r in args.rates.split(",")], args.seconds, args.calls, args.processes))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
