"""bench/dead_air.py runs end to end with --quick: two callers of the set on a line 10 dB above its
hiss each get a reply (before the noise-floor gate, such a line held the turn open: dead air)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.support import run_bench


def test_bench_dead_air_quick(tmp_path: Path) -> None:
    out = tmp_path / "dead_air.json"
    stdout = run_bench("dead_air.py", "--quick", "--json", str(out), timeout=240)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["snr_db"] == 10 and row["turns"] == 2 and row["refused"] == 0, row
    assert row["dead_air"] == 0, stdout
    assert row["not_understood"] + row["answered"] == 2 and row["reply_p50_s"] is not None, row
    assert "dead air over the caller set" in stdout
