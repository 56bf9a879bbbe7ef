"""bench/api.py runs end to end: provisions, serves, generates load, prints its table.

Figures are not asserted (they depend on the machine and what else runs on it);
only that the benchmark works, prints what it promises and cleans up after itself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tests.bench.support import run_bench


def test_bench_api_quick_sqlite_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"  # its own TMPDIR: other tests' benches run beside it
    scratch.mkdir()
    stdout = run_bench("api.py", "--quick", "--backend", "sqlite", "--json", str(out), timeout=120,
                       env={**os.environ, "TMPDIR": str(scratch)})
    lines = stdout.splitlines()
    header = next((i for i, line in enumerate(lines) if line.lstrip().startswith("offered")), None)
    assert header is not None, stdout
    for column in ("reads/s", "writes/s", "p50", "p90", "p99", "max", "errors", "held"):
        assert column in lines[header]
    rows = [line for line in lines[header + 1:] if line.strip()[:1].isdigit()]
    assert [int(r.split()[0]) for r in rows] == [100, 200], stdout
    assert any(line.startswith("sqlite:") for line in lines), stdout

    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["backend"] == "sqlite"
    assert [s["offered"] for s in result["steps"]] == [100, 200]
    for step in result["steps"]:
        assert step["read"]["sent"] > 0 and step["write"]["sent"] >= 0
        assert set(step["read"]) >= {"achieved", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors"}
    # The server process and the state dir are gone.
    server_pid = re.search(r"server pid (\d+)", stdout)
    assert server_pid is not None, stdout
    cmdline = Path(f"/proc/{server_pid.group(1)}/cmdline")
    assert not cmdline.exists() or b"runtime.api.server" not in cmdline.read_bytes()
    assert list(scratch.glob("voicectl-bench-*")) == []  # the state dir is gone
