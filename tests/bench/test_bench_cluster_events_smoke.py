"""bench/cluster_events.py runs end to end with two instance processes on the machine's PostgreSQL and
NATS: every event reaches both subscribers (figures not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.support import run_bench


def test_bench_cluster_events_processes(require_postgres: None, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    run_bench("cluster_events.py", "--processes", "--rates", "100", "--seconds", "1", "--json", str(out), timeout=180)
    (row,) = json.loads(out.read_text())
    assert row["events"] == row["local_received"] == row["remote_received"] == 100, row
