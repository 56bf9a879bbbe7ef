"""bench/cluster_admission.py runs end to end with --quick on the machine's PostgreSQL and prints its
table (figures are not asserted: they depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_cluster_admission_quick_prints_the_table(tmp_path: Path, require_postgres: None) -> None:
    out = tmp_path / "admission.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cluster_admission.py"), "--quick",
                           "--concurrency", "1", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert {"admit_p50_ms", "admit_p99_ms", "setup_p50_ms", "added_p50_ms"} <= set(header), proc.stdout
    figures = json.loads(out.read_text())
    assert {r["mode"] for r in figures["rows"]} == {"tenant_lock", "cluster_lock"}
    assert figures["count_uses_live_index"] is True
