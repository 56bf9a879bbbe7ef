"""bench/pipeline.py runs end to end with --quick: both parts place real calls and report
figures read from the runtime's own turn.latency events (values are not asserted beyond
being there: they depend on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.support import run_bench


def test_bench_pipeline_quick_reports_both_parts(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    stdout = run_bench("pipeline.py", "--quick", "--json", str(out), timeout=240)
    figures = json.loads(out.read_text())
    fake = figures["fake"]
    assert fake["failed_calls"] == 0 and fake["turns"] >= 8, fake
    assert fake["first_frame_p50_ms"] is not None and fake["barge_ins"] >= 1
    (offline,) = figures["offline"]
    assert offline["failed_calls"] == 0 and offline["turns"] >= 3 and offline["v2v_p50_ms"] is not None, offline
    assert "voice to voice p50" in stdout and "endpoint -> first frame p50" in stdout
