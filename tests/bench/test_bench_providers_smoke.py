"""bench/providers.py runs end to end against the local protocol servers and prints a row per
adapter path (figures are not asserted: they depend on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.support import run_bench


def test_bench_providers_prints_every_adapter_path(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    for part in ("llm", "stt", "tts"):
        run_bench("providers.py", "--turns", "3", "--only", part, "--json", str(out), timeout=120)
        rows = json.loads(out.read_text())
        assert all(row["p50_ms"] > 0 for row in rows), rows
        assert all("added_p50_ms" in row for row in rows if "(local)" not in row["path"]), rows
        if part == "llm":
            assert [r["path"].split(":")[0] for r in rows] == ["claude (anthropic SDK)"] * 2 + [
                "openai-compatible (openai SDK)"] * 2
        elif part == "stt":
            assert rows[0]["path"].startswith("deepgram")
        else:  # every TTS adapter with a server, against its bare client
            vendors = {r["path"].split(" ")[0] for r in rows if "added_p50_ms" in r}
            assert {"chatterbox", "elevenlabs", "cartesia", "openai"} <= vendors, rows
