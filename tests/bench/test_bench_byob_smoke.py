"""bench/byob.py runs end to end (--quick): every turn's transcript reaches the backend's socket and
every say is heard (figures not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_byob_quick() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "byob.py"), "--quick", "--no-pin"], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["failed"] == 0 and report["transcript"]["n"] == 4 and report["say_to_audio"]["n"] == 4, report
