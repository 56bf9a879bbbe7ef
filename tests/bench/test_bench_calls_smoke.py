"""bench/calls.py and bench/webhooks.py run end to end with --quick and print their tables
(figures are not asserted: they depend on the machine)."""

from __future__ import annotations

from tests.bench.support import run_bench


def _run(script: str) -> str:
    return run_bench(script, "--quick", timeout=120)


def test_bench_calls_quick_prints_the_table() -> None:
    out = _run("calls.py")
    header = next(line for line in out.splitlines() if "sustained" in line and "jitter_p99_ms" in line)
    for column in ("calls", "jitter_p50_ms", "late", "dropped", "rss_per_call_kb"):
        assert column in header


def test_bench_webhooks_quick_prints_the_table() -> None:
    out = _run("webhooks.py")
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "offered" in line and "p99_ms" in line)
    assert [line.split()[0] for line in lines[header + 1:] if line.strip()] == ["100", "200"]
