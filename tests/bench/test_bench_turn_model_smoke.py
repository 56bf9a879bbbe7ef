"""bench/turn_model.py runs quickly on today's end-of-turn rules (perfect-ears finals, a few items),
and on Smart Turn v3, read from the pipecat-ai wheel that ``make install`` downloads. The
features are pipecat's: checked against a clip's known shape and range here (figures not asserted)."""

from __future__ import annotations

import numpy as np

from bench import turn_model
from tests.bench.support import run_bench


def _run(*args: str) -> str:
    return run_bench("turn_model.py", "--stt", "script", "--items", "3", *args, timeout=240)


def test_the_set_is_big_varied_labelled_and_deterministic() -> None:
    every = turn_model.items()
    assert len(every) >= 60 and len({i.voice for i in every}) >= 4
    assert sum(bool(i.pauses_ms) for i in every) >= 30
    assert all(600 <= p <= 900 for i in every for p in i.pauses_ms)
    first = turn_model.clip(every[0])
    again = turn_model.clip(every[0])
    assert first.line == again.line and first.spans == again.spans
    (_, end), (start, _) = first.spans
    assert start - end == every[0].pauses_ms[0]


def test_bench_today_rules_smoke() -> None:
    out = _run("--no-smart")
    assert "today's rules (script finals)" in out and "Smart Turn" not in out
    row = next(line for line in out.splitlines() if line.startswith("| today's rules"))
    assert "0/3 (0 %)" in row, out  # perfect ears: the rules never end a turn in "my number is ..."


def test_features_shape() -> None:
    rng = np.random.default_rng(0)
    features = turn_model.log_mel(turn_model.model_window(rng.standard_normal(16_000).astype(np.float32)))
    assert features.shape == (80, 800) and features.dtype == np.float32
    assert -1.5 < float(features.min()) and float(features.max()) < 2.5


def test_bench_smart_turn_smoke() -> None:
    assert turn_model.wheel_path().is_file(), "make install downloads the pipecat-ai wheel the model is read from"
    out = _run("--batch", "2")
    assert "Smart Turn v3.2" in out and "batched 2 calls" in out, out
