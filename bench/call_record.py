"""What a call's operations record costs the runtime after the call: outcome, follow-up, summary.

    python bench/call_record.py [--calls 500] [--concurrency 20] [--database URL] [--quick] [--json out.json]

N inbound calls (a tenant, an agent, its number; the archive writes of a real call: row,
events, two tool calls) end; half of them as missed calls (the caller hung up before the agent
spoke), each of which puts a number on the callback queue (callback.created with its outbox row).
Then the record of each is written as the runtime's tracker writes it (runtime.calls.call_record,
the rules summary: no language model), ``--concurrency`` at a time, and timed:

  record       one call's record written, p50/p99/max in ms
  throughput   records per second at that concurrency
  queued       callback tasks made (one per missed caller)

SQLite (a temporary file) unless ``--database postgresql://...`` (a schema of its own, dropped).
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

from runtime.calls.call_record import CallRecordWriter  # noqa: E402
from runtime.calls.routing import route_call  # noqa: E402
from runtime.calls.session import CallSession  # noqa: E402
from runtime.control.callbacks import CallbackService  # noqa: E402
from runtime.control.schemas import AgentCreate, NumberCreate, TenantCreate  # noqa: E402
from runtime.events.bus import EventBus  # noqa: E402
from runtime.ids import new_id, now_iso  # noqa: E402
from runtime.store import migrate  # noqa: E402
from runtime.store.base import open_database  # noqa: E402
from runtime.store.store import Store  # noqa: E402

NUMBER = "+15550108080"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(round(p * len(ordered))) - 1))], 2)


async def _ended_calls(store: Store, bus: EventBus, n: int) -> list[CallSession]:
    from datetime import UTC, datetime

    from runtime.control.agents import AgentService
    from runtime.control.numbers import NumberService
    from runtime.control.tenants import TenantService
    from runtime.egress.policy import EgressPolicy

    tenant = await TenantService(store, None).create(TenantCreate(name=new_id("bench"), max_concurrent_calls=10_000))
    agent = await AgentService(store, EgressPolicy()).create(tenant.id, AgentCreate(
        name="desk", system_prompt="p", tools=["check_availability", "end_call"]))
    await NumberService(store).add(tenant.id, NumberCreate(e164=NUMBER, provider="twilio", agent_id=agent.id))
    route = await route_call(store, NUMBER, datetime.now(UTC))
    sessions = []
    for i in range(n):
        session = CallSession(id=new_id("call"), tenant_id=tenant.id, provider="twilio", direction="inbound",
                              from_number=f"+1555{i:07d}", to_number=NUMBER, store=store, bus=bus, route=route)
        await session.insert_row()
        await session.connect()
        if i % 2:  # answered: the agent spoke and used its tools
            session.agent_spoke = True
            for name in ("check_availability", "end_call"):
                await store.tool_calls.insert({
                    "id": new_id("tc"), "tenant_id": tenant.id, "call_id": session.id, "name": name,
                    "arguments": {"party_size": 2}, "result": {"available": True}, "status": "ok", "latency_ms": 1,
                    "created_at": now_iso()})
        await session.end("caller_hangup", hangup_by="caller")
        sessions.append(session)
    return sessions


async def main(args: argparse.Namespace) -> dict:
    url = args.database or f"sqlite:///{tempfile.mkdtemp(prefix='bench-record-')}/bench.db"
    if url.startswith("postgres"):
        url += ("&" if "?" in url else "?") + f"schema=bench_{secrets.token_hex(4)}"
    db = open_database(url)
    await db.connect()
    try:
        await migrate.migrate(db)
        store = Store(db)
        bus = EventBus(store)
        sessions = await _ended_calls(store, bus, args.calls)
        writer = CallRecordWriter(CallbackService(store, bus))
        gate = asyncio.Semaphore(args.concurrency)
        times: list[float] = []

        async def one(session: CallSession) -> None:
            async with gate:
                started = time.perf_counter()
                await writer.record(session)
                times.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(one(s) for s in sessions))
        elapsed = time.perf_counter() - began
        queued = await store.count_active_callbacks(sessions[0].tenant_id)
        recorded = int(await db.fetchval("SELECT COUNT(*) AS n FROM voice_calls WHERE outcome IS NOT NULL"))
        return {"backend": url.split(":", 1)[0], "calls": args.calls, "concurrency": args.concurrency,
                "recorded": recorded, "queued": queued, "record_p50_ms": pct(times, 0.5),
                "record_p99_ms": pct(times, 0.99), "record_max_ms": round(max(times), 2),
                "records_per_s": round(len(times) / elapsed, 1)}
    finally:
        if url.startswith("postgres"):
            await db.drop_schema()  # type: ignore[attr-defined]
        await db.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--database", help="postgresql://... (default: a temporary SQLite file)")
    parser.add_argument("--quick", action="store_true", help="40 calls")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.calls = 40
    result = asyncio.run(main(args))
    columns = list(result)
    print(" ".join(f"{c:>14}" for c in columns))
    print(" ".join(f"{result[c]!s:>14}" for c in columns))
    assert result["recorded"] == args.calls and result["queued"] == args.calls // 2, result
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli()
