"""bench/cluster_admission.py runs end to end with --quick on the machine's PostgreSQL and prints its
table (figures are not asserted: they depend on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.support import run_bench


def test_bench_cluster_admission_quick_prints_the_table(tmp_path: Path, require_postgres: None) -> None:
    out = tmp_path / "admission.json"
    stdout = run_bench("cluster_admission.py", "--quick", "--concurrency", "1", "--json", str(out), timeout=300)
    header = stdout.splitlines()[0].split()
    assert {"admit_p50_ms", "admit_p99_ms", "setup_p50_ms", "added_p50_ms"} <= set(header), stdout
    figures = json.loads(out.read_text())
    assert {r["mode"] for r in figures["rows"]} == {"tenant_lock", "cluster_lock"}
    assert figures["count_uses_live_index"] is True
