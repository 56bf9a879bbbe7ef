"""bench/cluster_events.py runs end to end with two instance processes on the machine's PostgreSQL and
NATS: every event reaches both subscribers (figures not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_cluster_events_processes(require_postgres: None, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cluster_events.py"), "--processes", "--rates", "100",
                           "--seconds", "1", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out.read_text())
    assert row["events"] == row["local_received"] == row["remote_received"] == 100, row
