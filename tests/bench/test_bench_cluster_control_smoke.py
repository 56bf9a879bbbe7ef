"""bench/cluster_control.py runs end to end on the machine's PostgreSQL and NATS: every say is answered
locally and forwarded (figures not asserted)."""

from __future__ import annotations

import json

from tests.bench.support import run_bench


def test_bench_cluster_control_quick(require_postgres: None) -> None:
    stdout = run_bench("cluster_control.py", "--says", "20", "--json", "-", timeout=180)
    report = json.loads(stdout[stdout.index("{"):])
    for via in ("rest", "ws"):
        assert report[via]["local"]["n"] == 20 and report[via]["forwarded"]["n"] == 20, report
