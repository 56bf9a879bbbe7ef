"""bench/webrtc.py runs end to end with --quick (real WebRTC calls between two processes) and
prints its table (figures are not asserted: they depend on the machine; that the runtime's own
counters were read is)."""

from __future__ import annotations

from tests.bench.support import run_bench


def test_bench_webrtc_quick_prints_the_table() -> None:
    stdout = run_bench("webrtc.py", "--quick", "--no-pin", timeout=120)
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "sustained" in line and "jitter_p99_ms" in line)
    row = dict(zip(lines[header].split(), lines[header + 1].split(), strict=True))
    assert row["calls"] == row["sustained"] == "3", stdout
    summary = next(line for line in lines if line.startswith("codec opus; agent->caller frames measured"))
    # The runtime's own counters come from each call's archived summary.media: none may read zero.
    assert "caller->agent frames at the runtime 0," not in summary, summary
    assert "runtime sent 0 agent frames" not in summary, summary
