"""bench/cluster_control.py runs end to end on the machine's PostgreSQL and NATS: every say is answered
locally and forwarded (figures not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_cluster_control_quick(require_postgres: None) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cluster_control.py"), "--says", "20", "--json", "-"],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    for via in ("rest", "ws"):
        assert report[via]["local"]["n"] == 20 and report[via]["forwarded"]["n"] == 20, report
