"""bench/byob.py runs end to end (--quick): every turn's transcript reaches the backend's socket and
every say is heard (figures not asserted)."""

from __future__ import annotations

import json

from tests.bench.support import run_bench


def test_bench_byob_quick() -> None:
    stdout = run_bench("byob.py", "--quick", "--no-pin", timeout=180)
    report = json.loads(stdout[stdout.index("{"):])
    assert report["failed"] == 0 and report["transcript"]["n"] == 4 and report["say_to_audio"]["n"] == 4, report
