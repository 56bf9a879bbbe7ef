"""bench/webrtc.py runs end to end with --quick (real WebRTC calls between two processes) and
prints its table (figures are not asserted: they depend on the machine; that the runtime's own
counters were read is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_webrtc_quick_prints_the_table() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "webrtc.py"), "--quick", "--no-pin"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "sustained" in line and "jitter_p99_ms" in line)
    row = dict(zip(lines[header].split(), lines[header + 1].split(), strict=True))
    assert row["calls"] == row["sustained"] == "3", proc.stdout
    summary = next(line for line in lines if line.startswith("codec opus; agent->caller frames measured"))
    # The runtime's own counters come from each call's archived summary.media: none may read zero.
    assert "caller->agent frames at the runtime 0," not in summary, summary
    assert "runtime sent 0 agent frames" not in summary, summary
