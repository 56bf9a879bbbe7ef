"""Open-loop HTTP load generator for the voicectl API (issue 2, "Tests and figures").

    .venv/bin/python bench/api.py                      # both backends, default steps
    .venv/bin/python bench/api.py --backend sqlite --rates 500,1000,2000 --step-seconds 8
    .venv/bin/python bench/api.py --quick --backend sqlite --json -
    .venv/bin/python bench/api.py --calibrate          # the generator's own capacity

For each backend it provisions a throw-away state dir (config with high rate limits,
cryptfile secrets, a tenant with agents, numbers and voice profiles, a runtime key),
starts the real server (`python -m voicectl serve --config ...`) in its own
process pinned to core 0, waits for /readyz, and runs the load generator in another
process pinned to core 1.

The generator (bench/loadgen.py) is open loop: requests go out on an absolute clock at
the offered rate whatever the server does, and latency runs from the *scheduled* send
time, so a stalled server shows up as latency (no coordinated omission). Each step
also reports CPU use: the server's, Postgres's backends' (ours only), the generator's
and everything else's (`oth%`, where other work on the box skews the figures), and
the server's CPU per request (`us/req`), the figure least disturbed by such noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadgen import busy_cpu_s  # bench/ is sys.path[0] when this runs as a script

REPO = Path(__file__).resolve().parent.parent
LOADGEN = Path(__file__).resolve().with_name("loadgen.py")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_RATES = (250, 500, 1000, 1500, 2000, 2500, 3000)
QUICK_RATES = (100, 200)
TARGET_P99_MS = 20.0
TARGET_READS_PER_CORE = 1500
SERVER_CORE, GENERATOR_CORE = 0, 1
# --------------------------------------------------------------------------------------
# Orchestration: state dir, server process, generator process
# --------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """preexec: SIGTERM the child when the bench dies, however it dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _pinned(cmd: list[str], core: int | None) -> tuple[list[str], Any]:
    """Prefix with `taskset -c CORE` where available, else pin in preexec."""
    if core is None:
        return cmd, _die_with_parent
    if shutil.which("taskset"):
        return ["taskset", "-c", str(core), *cmd], _die_with_parent

    def preexec() -> None:
        _die_with_parent()
        os.sched_setaffinity(0, {core})

    return cmd, preexec


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _provision(config_path: Path, agents: int, numbers: int, profiles: int) -> dict[str, Any]:
    from runtime.config import load_settings
    from runtime.control.plane import ControlPlane
    from runtime.control.schemas import (
        AgentCreate,
        ApiKeyCreate,
        NumberCreate,
        TenantCreate,
        VoiceProfileCreate,
    )
    from runtime.secrets import write_master_key

    settings = load_settings(config_path, environ={})
    write_master_key(settings.master_key_path)
    control = await ControlPlane.open(settings)
    try:
        tenant = await control.tenants.create(TenantCreate(name="bench"))
        agent_ids = []
        for i in range(agents):
            agent = await control.agents.create(tenant.id, AgentCreate(
                name=f"agent-{i}", system_prompt=f"You are bench agent {i}.", greeting="Hello"))
            agent_ids.append(agent.id)
        for i in range(numbers):
            await control.numbers.add(tenant.id, NumberCreate(
                e164=f"+1555{i:07d}", provider="twilio", agent_id=agent_ids[i % len(agent_ids)]))
        profile_ids = []
        for i in range(profiles):
            profile_ids.append((await control.voices.create(tenant.id, VoiceProfileCreate(name=f"voice-{i}"))).id)
        _, key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id, name="bench"))
    finally:
        await control.close()
    return {"tenant_id": tenant.id, "agent_ids": agent_ids, "profile_ids": profile_ids, "key": key}


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _write_config(state: Path, backend: str, port: int, schema: str | None) -> Path:
    import yaml

    big = {"limit": 1_000_000_000, "window_s": 60}
    url = "sqlite:///voicectl.db" if backend == "sqlite" else f"{POSTGRES_URL}?schema={schema}"
    config = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 1},
        "database": {"url": url},
        "secrets": {"backend": "cryptfile", "master_key_file": "master.key"},
        "limits": {"rate_limits": {"runtime": {name: big for name in
                                               ("read", "write", "session", "realtime", "recording")}}},
        "logging": {"level": "warning", "format": "json"},
    }
    path = state / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


CALIBRATION_SERVER_CODE = r"""
import asyncio, sys
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0: return
            head = self.buf[:end].lower(); at = head.find(b"content-length:")
            n = int(head[at + 15:].split(b"\r\n")[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + n: return
            self.buf = self.buf[end + 4 + n:]; self.t.write(RESPONSE)
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    async with server: await server.serve_forever()
asyncio.run(main())
"""


def _server_env() -> dict[str, str]:
    """The config file alone decides: no VOICECTL_* overrides from the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECTL_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float, log_path: Path | None,
                instance_id: str | None = None) -> None:
    """Until ``url`` (/readyz) answers 200; with ``instance_id``, only from the runtime of that id: the
    port was free when picked, and another process (a test running beside) may have taken it since,
    whose answers must not pass for ours (ours then exits, unable to listen, and that is reported)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200 and (instance_id is None
                                           or json.loads(resp.read()).get("instance_id") == instance_id):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server not ready at {url} after {timeout:.0f} s")


def _run_generator(spec: dict[str, Any], args: argparse.Namespace, on_step: Any) -> list[dict[str, Any]]:
    cmd, preexec = _pinned([sys.executable, str(LOADGEN)], spec["core"])
    if args.verbose:
        _log("generator: " + shlex.join(cmd))
    bound = args.warmup + len(spec["rates"]) * (args.step_seconds + spec["drain_s"] + 2) + 30
    steps: list[dict[str, Any]] = []
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=preexec, cwd=REPO)
    watchdog = threading.Timer(bound, proc.kill)  # the read below blocks: this bounds it
    watchdog.daemon = True
    watchdog.start()
    try:
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        deadline = time.monotonic() + bound
        for line in proc.stdout:
            item = json.loads(line)
            if "stopped" in item:
                on_step(None, item["stopped"])
                continue
            steps.append(item)
            on_step(item, None)
            if time.monotonic() > deadline:
                raise RuntimeError(f"generator ran past its {bound:.0f} s bound")
        if proc.wait(timeout=max(1.0, deadline - time.monotonic())) != 0:
            raise RuntimeError(f"generator failed with exit code {proc.returncode}")
    finally:
        watchdog.cancel()
        _stop(proc)
    return steps


def _held(step: dict[str, Any], p99_ms: float, classes: tuple[str, ...] = ("read", "write")) -> bool:
    """The step's offered rate was delivered (>= 97 %, errors <= 0.1 %) with p99 under the bar for
    each of ``classes`` (the table's `held`: reads and writes; the reads target: reads)."""
    total = step["all"]
    if total["errors"] > 0.001 * max(1, total["sent"]) or total["achieved"] < 0.97 * step["offered"]:
        return False
    return all(step[c]["p99_ms"] is None or step[c]["p99_ms"] < p99_ms for c in classes)


def _fmt(value: Any, width: int, digits: int = 1) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:.{digits}f}".rjust(width)
    return str(value).rjust(width)


HEADER = (f"{'offered':>7} {'achvd':>6} | {'reads/s':>7} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6} | "
          f"{'writes/s':>8} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6} | {'errors':>6} {'srv%':>5} "
          f"{'db%':>5} {'us/req':>6} {'gen%':>5} {'oth%':>5} {'held':>4}")


def _row(step: dict[str, Any], p99_ms: float) -> str:
    r, w = step["read"], step["write"]
    lag = step["send_lag_p99_ms"]
    # The generator, not the server, may have been the limit: busy core or late sends.
    flag = " gen-limited" if step["gen_cpu_pct"] > 90 or lag > 5 else ""
    if step["other_cpu_pct"] > 10:
        flag += " noisy"
    return (f"{step['offered']:>7} {_fmt(step['all']['achieved'], 6, 0)} | {_fmt(r['achieved'], 7, 0)} "
            f"{_fmt(r['p50_ms'], 6)} {_fmt(r['p90_ms'], 6)} {_fmt(r['p99_ms'], 6)} {_fmt(r['max_ms'], 6)} | "
            f"{_fmt(w['achieved'], 8, 0)} {_fmt(w['p50_ms'], 6)} {_fmt(w['p90_ms'], 6)} {_fmt(w['p99_ms'], 6)} "
            f"{_fmt(w['max_ms'], 6)} | {step['all']['errors']:>6} {_fmt(step['srv_cpu_pct'], 5, 0)} "
            f"{_fmt(step['db_cpu_pct'], 5, 0)} {_fmt(step['srv_us_per_req'], 6, 0)} {step['gen_cpu_pct']:>5.0f} {step['other_cpu_pct']:>5.0f} "
            f"{'yes' if _held(step, p99_ms) else 'no':>4}{flag}")


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    pin = (os.cpu_count() or 1) >= 2 and not args.no_pin
    server_core = SERVER_CORE if pin else None
    schema = f"bench_{os.getpid()}_{secrets.token_hex(3)}" if backend == "postgres" else None
    server: subprocess.Popen | None = None
    with tempfile.TemporaryDirectory(prefix=f"voicectl-bench-{backend}-") as tmp:
        state = Path(tmp)
        try:
            port = _free_port()
            if backend == "calibrate":
                ids = {"agent_ids": ["agt_x"], "profile_ids": [], "key": "vk_rt_x"}
                cmd = [sys.executable, "-c", CALIBRATION_SERVER_CODE, str(port)]
                ready_url = None
            else:
                config = _write_config(state, backend, port, schema)
                ids = asyncio.run(_provision(config, args.agents, args.numbers, args.profiles))
                cmd = [sys.executable, "-m", "voicectl", "serve", "--config", str(config)]
                ready_url = f"http://127.0.0.1:{port}/readyz"
            cmd, preexec = _pinned(cmd, server_core)
            if args.verbose:
                _log("server: " + shlex.join(cmd))
            log_path = state / "server.log"
            with open(log_path, "wb") as log_file:
                server = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                          preexec_fn=preexec, env=_server_env())
            if ready_url:
                _wait_ready(ready_url, server, 30, log_path)
            else:
                _wait_port(port, server)
            spec = {
                "host": "127.0.0.1", "port": port, "key": ids["key"], "agent_ids": ids["agent_ids"],
                "profile_ids": ids["profile_ids"], "rates": args.rates, "step_s": args.step_seconds,
                "warmup_s": args.warmup, "drain_s": args.drain, "write_ratio": args.write_ratio,
                "client": args.client, "max_conns": args.max_conns, "init_conns": args.init_conns,
                "server_pid": server.pid, "core": GENERATOR_CORE if pin else None, "seed": args.seed,
                "stop_on_saturation": not args.keep_going, "watch_postgres": backend == "postgres",
            }
            print(f"\n== {backend}: server pid {server.pid} on core {server_core}, generator on core "
                  f"{spec['core']} ({args.client} client), {args.step_seconds:g} s steps, "
                  f"{1 - args.write_ratio:.0%} reads / {args.write_ratio:.0%} writes, latency in ms", flush=True)
            print(HEADER, flush=True)

            def on_step(step: dict[str, Any] | None, note: str | None) -> None:
                print(_row(step, args.p99_ms) if step else f"   ({note})", flush=True)

            profiler = _start_profiler(server.pid, args, backend, GENERATOR_CORE if pin else None)
            try:
                steps = _run_generator(spec, args, on_step)
            finally:
                _stop_profiler(profiler, args)
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode} during the run:\n"
                                   + log_path.read_text()[-3000:])
        finally:
            _stop(server)
            if schema:
                try:
                    asyncio.run(_drop_schema(schema))
                except Exception as exc:  # noqa: BLE001 - report, do not mask the run's own error
                    _log(f"could not drop schema {schema}: {exc}")
    summary = summarize(backend, steps, 1 if pin else (os.cpu_count() or 1), args)
    print(summary["summary"], flush=True)
    return summary


def summarize(backend: str, steps: list[dict[str, Any]], cores: int, args: argparse.Namespace) -> dict[str, Any]:
    def best(classes: tuple[str, ...]) -> dict[str, Any] | None:
        held = [s for s in steps if _held(s, args.p99_ms, classes)]
        return max(held, key=lambda s: s["offered"]) if held else None

    both, reads = best(("read", "write")), best(("read",))
    bar = f"{args.p99_ms:g} ms"
    where = f"on {cores} server core{'s' if cores > 1 else ''}"
    if both:
        line = (f"{backend}: held {both['offered']} req/s ({both['read']['achieved']:.0f} reads/s + "
                f"{both['write']['achieved']:.0f} writes/s) {where} with read and write p99 < {bar}")
    else:
        line = f"{backend}: no step held with read and write p99 < {bar}"
    missed = [s["offered"] for s in steps if both and s["offered"] < both["offered"] and not _held(s, args.p99_ms)]
    if missed:
        line += f" (but not at the lower step{'s' if len(missed) > 1 else ''} {', '.join(map(str, missed))}: " \
                "transient stalls, compare several runs)"
    if reads:
        per_core = reads["read"]["achieved"] / cores
        line += f"\n{backend}: {per_core:.0f} reads/s per server core with read p99 < {bar}"
        if reads is not both:
            line += f" (the {reads['offered']} req/s step)"
        if backend == "sqlite" and not args.quick and not args.calibrate:
            met = per_core >= TARGET_READS_PER_CORE
            line += f"; target {TARGET_READS_PER_CORE}: {'met' if met else 'NOT met'}"
    return {
        "backend": backend, "server_cores": cores, "p99_bar_ms": args.p99_ms,
        "held_rate": both["offered"] if both else None,
        "held_reads_per_s": both["read"]["achieved"] if both else None,
        "held_writes_per_s": both["write"]["achieved"] if both else None,
        "held_read_p99_ms": both["read"]["p99_ms"] if both else None,
        "held_write_p99_ms": both["write"]["p99_ms"] if both else None,
        "reads_held_rate": reads["offered"] if reads else None,
        "reads_held_per_core": round(reads["read"]["achieved"] / cores, 1) if reads else None,
        "summary": line, "steps": steps,
    }


def _start_profiler(pid: int, args: argparse.Namespace, backend: str,
                    core: int | None) -> subprocess.Popen | None:
    """--profile: sample the server with py-spy (collapsed stacks), if py-spy is installed."""
    if not args.profile:
        return None
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        _log("--profile: py-spy not found (pip install py-spy into the venv; it is not a dependency)")
        return None
    out = Path(f"{args.profile}.{backend}.txt").resolve()
    cmd, preexec = _pinned([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                            "--nonblocking", "--threads", "--gil", "--output", str(out)], core)
    _log(f"profiling the server into {out}")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=preexec)


def _stop_profiler(proc: subprocess.Popen | None, args: argparse.Namespace) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        _stop(proc)


def _wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("calibration server did not start")


def _wait_quiet(limit_s: float, busy_pct: float = 15.0) -> None:
    """Wait (up to limit_s) until the machine is idle for 2 s, so other work does not skew figures."""
    if limit_s <= 0:
        return
    deadline = time.monotonic() + limit_s
    quiet = 0
    while time.monotonic() < deadline:
        before = busy_cpu_s()
        time.sleep(1.0)
        used = 100 * (busy_cpu_s() - before)
        quiet = quiet + 1 if used < busy_pct else 0
        if quiet >= 2:
            return
    _log(f"the machine stayed busy (last second {used:.0f}% of a core used by others) for {limit_s:g} s; "
         "running anyway: see the oth% column")


def _postgres_reachable() -> str | None:
    async def probe() -> None:
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # noqa: BLE001 - any failure means unavailable
        return f"{type(exc).__name__}: {exc}"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--rates", help="offered request rates of the steps, e.g. 250,500,1000")
    parser.add_argument("--step-seconds", type=float, help="length of each step (default 6)")
    parser.add_argument("--warmup", type=float, help="unreported warm-up at the first rate, seconds (default 2)")
    parser.add_argument("--drain", type=float, default=3.0, help="wait this long for late answers after a step")
    parser.add_argument("--write-ratio", type=float, default=0.1, help="share of writes (default 0.1)")
    parser.add_argument("--p99-ms", type=float, default=TARGET_P99_MS, help="the p99 bar of 'held' (20)")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw")
    parser.add_argument("--max-conns", type=int, default=256, help="keep-alive pool limit")
    parser.add_argument("--init-conns", type=int, default=8, help="connections opened before the first step")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--numbers", type=int, default=20)
    parser.add_argument("--profiles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-going", action="store_true", help="run every step even past saturation")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and generator to cores")
    parser.add_argument("--quick", action="store_true", help="two short steps (smoke test)")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure the generator alone against a trivial server (default rates 2k..16k)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="also write the figures as JSON to PATH (- or no value: stdout)")
    parser.add_argument("--quiet-wait", type=float,
                        help="wait up to this many seconds for the machine to go idle first (default 60, quick 0)")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="sample the server with py-spy into PREFIX.BACKEND.txt (collapsed stacks)")
    parser.add_argument("--verbose", action="store_true", help="print the server and generator commands")
    args = parser.parse_args(argv)
    if args.rates:
        args.rates = [int(r) for r in args.rates.split(",") if r.strip()]
    elif args.calibrate:
        args.rates = [2000, 4000, 8000, 12000, 16000]
    else:
        args.rates = list(QUICK_RATES if args.quick else DEFAULT_RATES)
    if args.step_seconds is None:
        args.step_seconds = 1.5 if args.quick else 6.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 2.0
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 60.0
    if args.quick:
        args.drain = min(args.drain, 2.0)
    if not 0 <= args.write_ratio <= 1 or any(r <= 0 for r in args.rates):
        parser.error("--write-ratio must be within 0..1 and rates positive")
    if args.calibrate:
        args.write_ratio = 0.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    if (os.cpu_count() or 1) < 2 and not args.no_pin:
        _log("only one CPU: server and generator share it (figures are not per core)")
        args.no_pin = True
    backends = ["calibrate"] if args.calibrate else (
        ["sqlite", "postgres"] if args.backend == "both" else [args.backend])
    results = []
    for backend in backends:
        if backend == "postgres":
            reason = _postgres_reachable()
            if reason is not None:
                print(f"\n== postgres: skipped, {POSTGRES_URL} unreachable ({reason})", flush=True)
                continue
        _wait_quiet(args.quiet_wait)
        try:
            results.append(run_backend(backend, args))
        except RuntimeError as exc:
            print(f"\n== {backend}: bench failed: {exc}", flush=True)
            return 1
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "command": " ".join(["bench/api.py", *(sys.argv[1:] if argv is None else argv)]),
        "config": {k: getattr(args, k) for k in ("rates", "step_seconds", "warmup", "write_ratio", "client",
                                                 "max_conns", "agents", "numbers", "p99_ms")},
        "results": results,
    }
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # processes, state dir and schema are already cleaned up
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
