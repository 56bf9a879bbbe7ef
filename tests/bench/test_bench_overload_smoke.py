"""bench/overload.py runs end to end on a small burst (the real offline stack): beyond
limits.local_calls callers get busy, the admitted ones are greeted (figures not asserted)."""

from __future__ import annotations

from tests.bench.support import run_bench


def test_bench_overload_small_burst() -> None:
    stdout = run_bench("overload.py", "--calls", "4", "--local-calls", "2", "--hold", "2", "--no-pin", timeout=180)
    line = next(line for line in stdout.splitlines() if line.startswith("calls="))
    figures = dict(part.split("=", 1) for part in line.split())
    assert (figures["admitted"], figures["busy"], figures["silent_over_5s"]) == ("2", "2", "0"), line
