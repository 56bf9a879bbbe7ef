"""bench/overload.py runs end to end on a small burst (the real offline stack): beyond
limits.local_calls callers get busy, the admitted ones are greeted (figures not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_overload_small_burst() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "overload.py"), "--calls", "4", "--local-calls", "2",
                           "--hold", "2", "--no-pin"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("calls="))
    figures = dict(part.split("=", 1) for part in line.split())
    assert (figures["admitted"], figures["busy"], figures["silent_over_5s"]) == ("2", "2", "0"), line
