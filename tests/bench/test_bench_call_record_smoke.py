"""bench/call_record.py runs end to end with --quick and prints its table (figures are not
asserted: they depend on the machine; the bench itself checks every call got its record)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_call_record_quick_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "call_record.py"), "--quick", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert {"record_p50_ms", "record_p99_ms", "records_per_s", "queued"} <= set(header), proc.stdout
    figures = json.loads(out.read_text())
    assert (figures["calls"], figures["recorded"], figures["queued"]) == (40, 40, 20)
