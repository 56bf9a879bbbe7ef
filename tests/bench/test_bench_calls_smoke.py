"""bench/calls.py and bench/webhooks.py run end to end with --quick and print their tables
(figures are not asserted: they depend on the machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(script: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


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
