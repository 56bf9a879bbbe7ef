"""The box's own pauses: how long a bare loop, alone on each core, is kept from running.

    python bench/box_pauses.py [--seconds 60] [--json out.json]

One process per core (taskset), each doing nothing but reading the clock. Every gap between two
reads longer than 5 ms is time the process was not running: the hypervisor or the kernel ran
something else (other services, kernel threads, another guest). No runtime can send a frame
while its core is taken, so a gap over 20 ms here is a late frame for every call on that core,
whatever the runtime does: the floor under bench/calls.py's and bench/webrtc.py's late counts.
Run it on the box the other benches ran on, before or after them, with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GAP_S = 0.005
FRAME_S = 0.020


def spin(seconds: float) -> dict:
    end = time.perf_counter() + seconds
    prev = time.perf_counter()
    gaps: list[float] = []
    while (now := time.perf_counter()) < end:
        if now - prev > GAP_S:
            gaps.append(now - prev)
        prev = now
    over = [g for g in gaps if g > FRAME_S]
    return {"gaps_over_5ms": len(gaps), "gaps_over_20ms": len(over), "max_gap_ms": round(max(gaps, default=0) * 1000, 1),
            "lost_ms": round(sum(gaps) * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--spin", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.spin:
        print(json.dumps(spin(args.spin)))
        return 0
    cores = sorted(os.sched_getaffinity(0))
    procs = {core: subprocess.Popen(["taskset", "-c", str(core), sys.executable, __file__, "--spin", str(args.seconds)],
                                    stdout=subprocess.PIPE, text=True) for core in cores}
    result = {str(core): json.loads(proc.communicate()[0]) for core, proc in procs.items()}
    print(f"{'core':>4}  {'gaps > 5 ms':>11}  {'gaps > 20 ms':>12}  {'longest ms':>10}  {'lost ms':>8}   ({args.seconds:.0f} s)")
    for core, row in result.items():
        print(f"{core:>4}  {row['gaps_over_5ms']:>11}  {row['gaps_over_20ms']:>12}  {row['max_gap_ms']:>10}  {row['lost_ms']:>8}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
