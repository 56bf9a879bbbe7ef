"""bench/call_record.py runs end to end with --quick and prints its table (figures are not
asserted: they depend on the machine; the bench itself checks every call got its record)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.support import run_bench


def test_bench_call_record_quick_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    stdout = run_bench("call_record.py", "--quick", "--json", str(out), timeout=120)
    header = stdout.splitlines()[0].split()
    assert {"record_p50_ms", "record_p99_ms", "records_per_s", "queued"} <= set(header), stdout
    figures = json.loads(out.read_text())
    assert (figures["calls"], figures["recorded"], figures["queued"]) == (40, 40, 20)
