"""bench/dead_air.py runs end to end with --quick: two callers of the set on a line 10 dB above its
hiss each get a reply (before the noise-floor gate, such a line held the turn open: dead air)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_dead_air_quick(tmp_path: Path) -> None:
    out = tmp_path / "dead_air.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "dead_air.py"), "--quick", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["snr_db"] == 10 and row["turns"] == 2 and row["refused"] == 0, row
    assert row["dead_air"] == 0, proc.stdout
    assert row["not_understood"] + row["answered"] == 2 and row["reply_p50_s"] is not None, row
    assert "dead air over the caller set" in proc.stdout
