"""The cluster's three figures: calls per worker-core with 1 and 2 workers, event fan-out latency
across instances, and the call-setup cost of the shared admission.

    python bench/cluster.py [--part workers,events,admission] [--workers 1,2] [--calls 100,200,300,400]
                            [--duration 30] [--json out.json]

`events` runs bench/cluster_events.py --processes (commit on one instance -> a subscriber of
another instance in another process, p50/p99; target p99 < 20 ms) and `admission` runs
bench/cluster_admission.py (the admission step inside a call's setup transaction; target p99 < 2 ms),
each in its own process; see their docstrings. The rest of this text is the `workers` part.

Workers on one port: calls carried at the late-frame threshold by 1 and by 2 runtime processes.

Each worker is the real runtime in cluster mode (bench/fake_engines.py's instant engines, so the
figure is the runtime's own cost, not a model's) on one port with SO_REUSEPORT, as
`voicectl serve --workers N` runs them: PostgreSQL (a throw-away schema), NATS JetStream (a
throw-away stream), Redis rate limits, secrets in the database. The kernel spreads connections
over the workers, so a call's voice webhook and its media stream may reach different workers (the
media's worker takes the call over, as it would behind a proxy without affinity).

The load is bench/calls.py's generator (Twilio-protocol calls, 20 ms audio both ways, the agent
speaking for the whole call) in its own process, unpinned: on a 2-core box the workers and the
generator share both cores, so each step reports the CPU of the workers and of the generator
apart. For each worker count the steps go up until one is not clean (a call not sustained, a late
or dropped frame at the caller, or a frame the runtime sent > 40 ms behind its clock); the last
clean step is the threshold. Figures: calls at the threshold, worker cores used there, calls per
worker-core, and the ratio of 2 workers to 1 on both (a box with >= 4 cores is needed for the
per-box ratio to mean the same; this one has 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from api import REPO, _free_port, _server_env, _stop, _wait_ready  # noqa: E402
from twilio_common import _provision, proc_cpu_s  # noqa: E402

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "async+redis://127.0.0.1:6379/0"


def _config(base: Path, token: str, port: int, name: str) -> dict[str, Any]:
    from runtime.config import RATE_CLASSES

    big = {"limit": 1_000_000_000, "window_s": 60}
    return {
        "server": {"host": "127.0.0.1", "port": port, "instance_id": name, "shutdown_grace_s": 1},
        "database": {"url": f"{POSTGRES}?schema=bench_{token}"},
        "secrets": {"backend": "database", "master_key_file": str(base / "master.key")},
        "events": {"nats": {"url": NATS_URL, "stream": f"BENCH_{token}", "subject_prefix": f"bench{token}"}},
        "limits": {"max_calls": 1_000_000, "rate_limits": {"storage": REDIS_URL, "key_prefix": f"bench{token}",
                                                           "runtime": {c: big for c in RATE_CLASSES}}},
        "telephony": {"twilio": {"api_base_url": "http://127.0.0.1:9"}},
        "logging": {"level": "warning", "format": "json"},
    }


async def _cleanup(token: str) -> None:
    import nats
    import redis.asyncio as redis

    from runtime.store.postgres import PostgresDatabase

    await PostgresDatabase(f"{POSTGRES}?schema=bench_{token}").drop_schema()
    client = await nats.connect(NATS_URL)
    try:
        await client.jetstream().delete_stream(f"BENCH_{token}")
    except Exception:  # noqa: BLE001 - never created
        pass
    await client.close()
    r = redis.Redis(host="127.0.0.1", port=6379)
    async for key in r.scan_iter(f"bench{token}*"):
        await r.delete(key)
    await r.aclose()


async def _server_pacing(token: str) -> dict[str, Any]:
    """The runtime's own count of frames sent > 40 ms behind its clock, from the call archive."""
    from runtime.store.postgres import PostgresDatabase

    db = PostgresDatabase(f"{POSTGRES}?schema=bench_{token}")
    await db.connect()
    try:
        await asyncio.sleep(1.0)  # the last calls' archive writes
        rows = await db.fetchall("SELECT summary, instance_id FROM voice_calls", ())
    finally:
        await db.close()
    media = [json.loads(r["summary"] or "{}").get("media", {}) if isinstance(r["summary"], str)
             else (r["summary"] or {}).get("media", {}) for r in rows]
    return {"server_calls_archived": len(rows), "server_late": sum(int(m.get("outbound_late", 0)) for m in media),
            "calls_per_worker": sorted(_count(r["instance_id"] for r in rows).values())}


def _count(values) -> dict:
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def run_step(workers: int, calls: int, duration: float, wav: Path, noise: Path) -> dict[str, Any]:
    import yaml

    token = secrets.token_hex(4)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="voicectl-bench-cluster-") as tmp:
        base = Path(tmp)
        procs: list[subprocess.Popen] = []
        logs = []
        try:
            first = base / "config-w1.yaml"
            first.write_text(yaml.safe_dump(_config(base, token, port, "bench-w1")))
            asyncio.run(_provision(first, {"greeting": "Hello.", "turn": {"silence_reprompt_s": 120}}))
            for k in range(1, workers + 1):
                path = base / f"config-w{k}.yaml"
                path.write_text(yaml.safe_dump(_config(base, token, port, f"bench-w{k}")))
                log = open(base / f"w{k}.log", "w")  # noqa: SIM115 - closed below
                logs.append(log)
                procs.append(subprocess.Popen(
                    [sys.executable, str(REPO / "bench" / "fake_engines.py"), "--config", str(path), "--clip", str(wav),
                     "--reuse-port"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_server_env()))
                time.sleep(0.5)  # one at a time: the first has migrated and created the stream
            for proc in procs:
                _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, 90, base / "w1.log")
            ramp = min(5.0, duration / 4)
            gen = subprocess.Popen([sys.executable, str(REPO / "bench" / "calls.py"), "--generator"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
            assert gen.stdin is not None and gen.stdout is not None
            gen.stdin.write(json.dumps({"url": f"http://127.0.0.1:{port}", "calls": calls, "duration": duration,
                                        "ramp": ramp, "wav": str(wav), "inbound_wav": str(noise)}))
            gen.stdin.close()
            time.sleep(ramp + 1.5)
            cpu0 = [proc_cpu_s(p.pid) for p in procs]
            g0, t0 = proc_cpu_s(gen.pid), time.monotonic()
            while gen.poll() is None and time.monotonic() - t0 < max(1.0, duration - ramp - 2):
                time.sleep(0.5)
            cpu1 = [proc_cpu_s(p.pid) for p in procs]
            g1, t1 = proc_cpu_s(gen.pid), time.monotonic()
            out = gen.stdout.read()
            gen.wait(duration + 120)
            res = json.loads(out.strip().splitlines()[-1])
            res.update(asyncio.run(_server_pacing(token)))
        finally:
            for proc in procs:
                _stop(proc)
            for log in logs:
                log.close()
            asyncio.run(_cleanup(token))
    window = max(1e-6, t1 - t0)
    worker_cores = sum(b - a for a, b in zip(cpu0, cpu1, strict=True)) / window
    clean = (res["sustained"] == calls and res["late"] == 0 and res["dropped"] == 0
             and not res.get("server_late"))
    return {"workers": workers, "calls": calls, "sustained": res["sustained"], "late": res["late"],
            "dropped": res["dropped"], "server_late": res.get("server_late"), "jitter_p99_ms": res["jitter_p99_ms"],
            "worker_cores": round(worker_cores, 3), "generator_cores": round((g1 - g0) / window, 3),
            "calls_per_worker_core": round(calls / max(1e-6, worker_cores), 1),
            "calls_per_worker": res.get("calls_per_worker"), "generator_clock_lag_p99_ms":
            res.get("generator_clock_lag_p99_ms"), "errors": res.get("errors"), "clean": clean}


TARGET_EVENTS_P99_MS = 20.0
TARGET_PER_WORKER_CORE = 1.8


def run_part(script: str, args: list[str], out: Path) -> Any:
    """bench/<script> in its own process (its own output shown), its --json figures back."""
    subprocess.run([sys.executable, str(REPO / "bench" / script), *args, "--json", str(out)], check=True, cwd=REPO)
    return json.loads(out.read_text())


def workers_part(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from calls import make_line_noise, make_wav

    steps = [int(x) for x in args.calls.split(",")]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="voicectl-bench-wav-") as tmp:
        wav, noise = Path(tmp) / "speech-like.wav", Path(tmp) / "line-noise.wav"
        make_wav(wav, seconds=args.duration + 20)
        make_line_noise(noise)
        for workers in (int(x) for x in args.workers.split(",")):
            for calls in steps:
                step = run_step(workers, calls, args.duration, wav, noise)
                results.append(step)
                print(json.dumps({k: v for k, v in step.items()}), flush=True)
                if not step["clean"]:
                    break
    thresholds = {}
    for workers in sorted({r["workers"] for r in results}):
        clean = [r for r in results if r["workers"] == workers and r["clean"]]
        thresholds[workers] = clean[-1] if clean else None
    print("\nworkers  calls at threshold  worker cores  calls/worker-core  generator cores")
    for workers, step in thresholds.items():
        if step is None:
            print(f"{workers:>7}  {'none clean':>18}")
            continue
        print(f"{workers:>7}  {step['calls']:>18}  {step['worker_cores']:>12.2f}  {step['calls_per_worker_core']:>17.1f}"
              f"  {step['generator_cores']:>15.2f}")
    one, two = thresholds.get(1), thresholds.get(2)
    summary: dict[str, Any] = {"cores": os.cpu_count(), "steps": results,
                               "thresholds": {str(k): v for k, v in thresholds.items()}}
    if one and two:
        summary["box_ratio"] = round(two["calls"] / one["calls"], 2)
        summary["per_worker_core_ratio"] = round(two["calls_per_worker_core"] / one["calls_per_worker_core"], 2)
        print(f"\n2 workers / 1 worker: calls {summary['box_ratio']}x on this {os.cpu_count()}-core box (generator "
              f"included); calls per worker-core {summary['per_worker_core_ratio']}x (2 workers on 2 cores would "
              f"carry {2 * summary['per_worker_core_ratio']:.2f}x one worker's calls per core)")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="workers,events,admission", help="which figures (comma-separated)")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure (comma-separated)")
    parser.add_argument("--calls", default="100,200,300,400", help="steps of concurrent calls, ascending")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    parts = set(args.part.split(","))
    summary: dict[str, Any] = {"cores": os.cpu_count()}
    lines = []
    with tempfile.TemporaryDirectory(prefix="voicectl-bench-cluster-") as tmp:
        if "workers" in parts:
            summary["workers"] = workers_part(args)
            ratio = summary["workers"].get("per_worker_core_ratio")
            lines.append(f"calls per worker-core, 2 workers / 1: {ratio}x (target >= {TARGET_PER_WORKER_CORE / 2:.2f}x "
                         f"per worker-core, i.e. {TARGET_PER_WORKER_CORE}x with a core per worker; measured per "
                         f"worker-core on a {os.cpu_count()}-core box)")
        if "events" in parts:
            rows = run_part("cluster_events.py", ["--processes"], Path(tmp) / "events.json")
            summary["events"] = rows
            worst = max(r["remote_p99_ms"] for r in rows)
            lines.append("event fan-out, commit -> subscriber on another instance: " + ", ".join(
                f"{r['rate']:.0f}/s p50 {r['remote_p50_ms']} p99 {r['remote_p99_ms']} ms" for r in rows)
                + f" (target p99 < {TARGET_EVENTS_P99_MS:.0f} ms: {'met' if worst < TARGET_EVENTS_P99_MS else 'missed'})")
        if "admission" in parts:
            from cluster_admission import TARGET_ADMIT_P99_MS

            result = run_part("cluster_admission.py", [], Path(tmp) / "admission.json")
            summary["admission"] = result
            single = [r for r in result["rows"] if r["concurrency"] == 1]
            worst = max(r["admit_p99_ms"] for r in single)
            lines.append(f"shared admission per call setup, one at a time: p99 {worst} ms (target < "
                         f"{TARGET_ADMIT_P99_MS:.0f} ms: {'met' if worst < TARGET_ADMIT_P99_MS else 'missed'})")
    print("\n" + "\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
