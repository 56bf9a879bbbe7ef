"""The load generator of bench/api.py: runs in its own process, pinned to its own core.

    (bench/api.py starts it: `python bench/loadgen.py` with a JSON spec on stdin; it
    prints one JSON line per step on stdout.)

Open loop: requests are scheduled on an absolute clock at the offered rate whatever
the server does, and latency runs from the *scheduled* send time to the last byte of
the response, so a stalled server shows up as latency instead of as a politely slower
client (no coordinated omission). Requests wait for a free keep-alive connection (the
pool grows up to max_conns) and that wait counts as latency too.

The default client is a minimal HTTP/1.1 keep-alive client on asyncio protocols
(Content-Length framing, no pipelining): ~30 us of CPU a request, 16,000 req/s on one
core at under half of it (`bench/api.py --calibrate`). aiohttp's client (`--client
aiohttp`) costs ~185 us a request, fine up to about 3,000 req/s. Each step reports
the generator's CPU and its send lag (submit time - scheduled time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
from collections import deque
from typing import Any

# Share of each kind within reads and within writes.
READ_MIX = (("list_agents", 1), ("get_agent", 1), ("list_numbers", 1))
WRITE_MIX = (("patch_agent", 2), ("create_profile", 1), ("delete_profile", 1))
EXPECTED_STATUS = {"list_agents": 200, "get_agent": 200, "list_numbers": 200, "patch_agent": 200,
                   "create_profile": 201, "delete_profile": 204}


def _percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p * len(sorted_values)))
    return sorted_values[min(len(sorted_values), rank) - 1]


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def busy_cpu_s() -> float:
    """CPU seconds spent busy by the whole machine (all cores) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            ticks = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    guest = sum(ticks[8:10])  # already counted in user/nice
    return (sum(ticks) - idle - guest) / os.sysconf("SC_CLK_TCK")


def _postgres_backends(client_pid: int, pg_port: int = 5432) -> list[int]:
    """PostgreSQL backend processes serving the connections of client_pid (not other users' tests)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{client_pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{client_pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in handle.readlines()[1:]:
                cols = line.split()
                if int(cols[2].rsplit(":", 1)[1], 16) == pg_port and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
                if cmdline.startswith(b"postgres:") and any(f"({p})".encode() in cmdline for p in ports):
                    pids.append(int(entry))
    return pids


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


class ClassStats:
    __slots__ = ("latencies", "ok", "errors", "last_done")

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.last_done = 0.0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def summary(self, start: float, duration: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        elapsed = max(duration, self.last_done - start)
        return {
            "sent": self.ok + sum(self.errors.values()), "ok": self.ok,
            "achieved": round(self.ok / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": _ms(_percentile(lat, 0.50)), "p90_ms": _ms(_percentile(lat, 0.90)),
            "p99_ms": _ms(_percentile(lat, 0.99)), "max_ms": _ms(lat[-1] if lat else None),
            "errors": sum(self.errors.values()), "error_kinds": dict(self.errors),
        }


class Op:
    __slots__ = ("kind", "cls", "payload", "sched", "stats", "done")

    def __init__(self, kind: str, cls: str, payload: bytes, sched: float, stats: ClassStats) -> None:
        self.kind, self.cls, self.payload, self.sched, self.stats = kind, cls, payload, sched, stats
        self.done = False


class Workload:
    """Builds requests of the configured mix; remembers voice profiles it created."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.rng = random.Random(spec.get("seed", 1))
        self.write_ratio = spec["write_ratio"]
        self.agents = spec["agent_ids"]
        self.profiles: deque[str] = deque(spec.get("profile_ids", []))
        self.seq = 0
        self.host = f"{spec['host']}:{spec['port']}"
        self.auth = f"Bearer {spec['key']}"
        self._head = f"Host: {self.host}\r\nAuthorization: {self.auth}\r\n"
        self._reads = [k for k, w in READ_MIX for _ in range(w)]
        self._writes = [k for k, w in WRITE_MIX for _ in range(w)]

    def next(self) -> tuple[str, str, str, str, bytes | None]:
        """(kind, class, method, path, json body)."""
        rng = self.rng
        if rng.random() < self.write_ratio:
            kind = rng.choice(self._writes)
            if kind == "delete_profile" and not self.profiles:
                kind = "create_profile"
            self.seq += 1
            if kind == "patch_agent":
                index = rng.randrange(len(self.agents))
                body = json.dumps({"name": f"bench-agent-{index}-{self.seq}"}).encode()
                return kind, "write", "PATCH", f"/api/v1/agents/{self.agents[index]}", body
            if kind == "create_profile":
                body = json.dumps({"name": f"bench-voice-{self.seq}", "voice_id": "default"}).encode()
                return kind, "write", "POST", "/api/v1/voice-profiles", body
            return kind, "write", "DELETE", f"/api/v1/voice-profiles/{self.profiles.popleft()}", None
        kind = rng.choice(self._reads)
        if kind == "list_agents":
            return kind, "read", "GET", "/api/v1/agents?limit=10", None
        if kind == "get_agent":
            return kind, "read", "GET", f"/api/v1/agents/{rng.choice(self.agents)}", None
        return kind, "read", "GET", "/api/v1/numbers", None

    def raw(self, method: str, path: str, body: bytes | None) -> bytes:
        if body is None:
            return f"{method} {path} HTTP/1.1\r\n{self._head}\r\n".encode()
        return (f"{method} {path} HTTP/1.1\r\n{self._head}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def completed(self, op: Op, status: int, body: bytes) -> None:
        if op.kind == "create_profile" and status == 201:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.profiles.append(json.loads(body)["id"])


class RawConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.op: Op | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.ready(self)

    def send(self, op: Op) -> None:
        self.op = op
        self.transport.write(op.payload)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        try:
            status = int(head[9:12])
        except ValueError:
            status = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:stop if stop > 0 else None])
        elif status in (204, 304) or 100 <= status < 200:
            length = 0
        else:
            self.client.finish(self, 0, b"", "unframed")
            self.transport.close()
            return
        if len(buf) < end + 4 + length:
            return
        body = bytes(buf[end + 4:end + 4 + length])
        del buf[:end + 4 + length]
        self.client.finish(self, status, body, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


class RawClient:
    def __init__(self, spec: dict[str, Any], workload: Workload) -> None:
        self.host, self.port = spec["host"], spec["port"]
        self.max_conns = spec["max_conns"]
        self.workload = workload
        self.clock = time.perf_counter
        self.idle: list[RawConn] = []
        self.conns: set[RawConn] = set()
        self.pending: deque[Op] = deque()
        self.connecting = 0
        self.outstanding = 0
        self.drained = asyncio.Event()

    async def open(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            await loop.create_connection(lambda: RawConn(self), self.host, self.port)

    def _grow(self) -> None:
        self.connecting += 1
        task = asyncio.get_running_loop().create_task(
            asyncio.get_running_loop().create_connection(lambda: RawConn(self), self.host, self.port))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task) -> None:
        self.connecting -= 1
        if task.cancelled() or task.exception() is not None:
            if self.pending and not self.conns and not self.connecting:
                op = self.pending.popleft()
                self._settle(op, "connect")

    def submit(self, kind: str, cls: str, method: str, path: str, body: bytes | None, sched: float,
               stats: ClassStats) -> None:
        op = Op(kind, cls, self.workload.raw(method, path, body), sched, stats)
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(op)
            return
        self.pending.append(op)
        if len(self.conns) + self.connecting < self.max_conns and self.connecting < len(self.pending):
            self._grow()

    def ready(self, conn: RawConn) -> None:
        self.conns.add(conn)
        if self.pending:
            conn.send(self.pending.popleft())
        else:
            self.idle.append(conn)

    def _settle(self, op: Op, error: str | None, status: int = 0, body: bytes = b"") -> None:
        if op.done:
            return
        op.done = True
        now = self.clock()
        stats = op.stats
        if error is None and status == EXPECTED_STATUS[op.kind]:
            stats.ok += 1
            stats.latencies.append(now - op.sched)
            self.workload.completed(op, status, body)
        else:
            stats.error(error or str(status))
        stats.last_done = max(stats.last_done, now)
        self.outstanding -= 1
        if self.outstanding == 0:
            self.drained.set()

    def finish(self, conn: RawConn, status: int, body: bytes, error: str | None) -> None:
        op, conn.op = conn.op, None
        if op is not None:
            self._settle(op, error, status, body)
        if error is None:
            self.ready(conn)

    def lost(self, conn: RawConn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        op, conn.op = conn.op, None
        if op is not None:
            self._settle(op, "disconnect")

    def abandon(self, reason: str) -> None:
        """End of a step's drain time: fail what is queued or in flight."""
        while self.pending:
            self._settle(self.pending.popleft(), "unsent")
        for conn in list(self.conns):
            if conn.op is not None:
                self._settle(conn.op, reason)
                conn.op = None
                conn.transport.abort()

    async def close(self) -> None:
        for conn in list(self.conns):
            conn.transport.close()
        await asyncio.sleep(0)


class AiohttpClient:
    """aiohttp's client with a keep-alive pool, for comparison (--client aiohttp)."""

    def __init__(self, spec: dict[str, Any], workload: Workload) -> None:
        import aiohttp

        self.base = f"http://{spec['host']}:{spec['port']}"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=spec["max_conns"]),
            headers={"Authorization": workload.auth}, timeout=aiohttp.ClientTimeout(total=60))
        self.workload = workload
        self.clock = time.perf_counter
        self.outstanding = 0
        self.drained = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def open(self, count: int) -> None:
        async def touch() -> None:
            async with self.session.get(self.base + "/healthz") as resp:
                await resp.read()

        await asyncio.gather(*(touch() for _ in range(count)))

    def submit(self, kind: str, cls: str, method: str, path: str, body: bytes | None, sched: float,
               stats: ClassStats) -> None:
        op = Op(kind, cls, b"", sched, stats)
        self.outstanding += 1
        task = asyncio.get_running_loop().create_task(self._fire(op, method, path, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _fire(self, op: Op, method: str, path: str, body: bytes | None) -> None:
        headers = {"Content-Type": "application/json"} if body is not None else None
        error, status, data = None, 0, b""
        try:
            async with self.session.request(method, self.base + path, data=body, headers=headers) as resp:
                status, data = resp.status, await resp.read()
        except asyncio.CancelledError:
            error = "timeout"
        except Exception as exc:  # noqa: BLE001 - any client failure is a counted error
            error = type(exc).__name__
        self._settle(op, error, status, data)

    _settle = RawClient._settle

    def abandon(self, reason: str) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()


async def _run_step(client: Any, workload: Workload, rate: float, duration: float, drain_s: float,
                    server_pid: int | None, watch_postgres: bool) -> dict[str, Any]:
    stats = {"read": ClassStats(), "write": ClassStats()}
    lag: list[float] = []  # submit time - scheduled time: the generator's own delay
    client.drained.clear()
    srv0 = _proc_cpu_s(server_pid) if server_pid else None
    db0 = {pid: _proc_cpu_s(pid) for pid in _postgres_backends(server_pid)} if watch_postgres else {}
    gen0 = time.process_time()
    busy0 = busy_cpu_s()
    clock = client.clock
    interval = 1.0 / rate
    total = max(1, int(rate * duration))
    start = clock() + 0.005
    index = 0
    while index < total:
        now = clock()
        due = start + index * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while index < total and due <= now:
            kind, cls, method, path, body = workload.next()
            client.submit(kind, cls, method, path, body, due, stats[cls])
            lag.append(clock() - due)
            index += 1
            due = start + index * interval
        await asyncio.sleep(0)
    if client.outstanding:
        client.drained.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.drained.wait(), drain_s)
    if client.outstanding:
        client.abandon("timeout")
        await asyncio.sleep(0.05)
    wall = clock() - start
    gen_cpu = time.process_time() - gen0
    busy = busy_cpu_s() - busy0
    srv1 = _proc_cpu_s(server_pid) if server_pid else None
    # Backends opened during the step (the pool grows) count from zero.
    db_pids = _postgres_backends(server_pid) if watch_postgres else []
    db_cpu = sum((_proc_cpu_s(p) or 0.0) - (db0.get(p) or 0.0) for p in db_pids)
    srv_cpu = srv1 - srv0 if srv0 is not None and srv1 is not None else None
    other = max(0.0, busy - gen_cpu - (srv_cpu or 0.0) - db_cpu)
    lag.sort()
    everything = ClassStats()
    for part in stats.values():
        everything.latencies += part.latencies
        everything.ok += part.ok
        for key, value in part.errors.items():
            everything.errors[key] = everything.errors.get(key, 0) + value
        everything.last_done = max(everything.last_done, part.last_done)
    return {
        "offered": rate, "duration_s": duration,
        "read": stats["read"].summary(start, duration), "write": stats["write"].summary(start, duration),
        "all": everything.summary(start, duration),
        "gen_cpu_pct": round(100 * gen_cpu / wall, 1),
        "srv_cpu_pct": round(100 * srv_cpu / wall, 1) if srv_cpu is not None else None,
        "db_cpu_pct": round(100 * db_cpu / wall, 1) if watch_postgres else None,
        # Server CPU per answered request: a noise-robust cost figure (1e6 / it = ceiling on one core).
        "srv_us_per_req": round(1e6 * srv_cpu / max(1, everything.ok + sum(everything.errors.values())), 1)
        if srv_cpu is not None else None,
        # Everything else on the machine (other processes, kernel): >10 % means noisy figures.
        "other_cpu_pct": round(100 * other / wall, 1),
        "send_lag_p99_ms": round(1000 * (_percentile(lag, 0.99) or 0.0), 2),
        "connections": len(getattr(client, "conns", ())) or None,
    }


def saturated(step: dict[str, Any]) -> bool:
    """Far past what the server can hold: higher steps would only queue."""
    total = step["all"]
    sent = max(1, total["sent"])
    return (total["achieved"] < 0.9 * step["offered"] or total["errors"] > 0.05 * sent
            or (total["p99_ms"] or 0) > 500)


async def generate(spec: dict[str, Any]) -> None:
    workload = Workload(spec)
    client = RawClient(spec, workload) if spec["client"] == "raw" else AiohttpClient(spec, workload)
    try:
        await client.open(spec["init_conns"])
        if spec["warmup_s"] > 0:
            await _run_step(client, workload, spec["rates"][0], spec["warmup_s"], spec["drain_s"], None, False)
        for rate in spec["rates"]:
            step = await _run_step(client, workload, rate, spec["step_s"], spec["drain_s"],
                                   spec.get("server_pid"), spec.get("watch_postgres", False))
            print(json.dumps(step), flush=True)
            if spec["stop_on_saturation"] and saturated(step):
                print(json.dumps({"stopped": f"saturated at {rate}/s; higher steps skipped"}), flush=True)
                break
    finally:
        await client.close()


def generator_main() -> None:
    spec = json.loads(sys.stdin.read())
    if spec.get("core") is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {spec["core"]})
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(generate(spec))


if __name__ == "__main__":
    generator_main()
