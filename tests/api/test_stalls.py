"""The process-stall series in /metrics: GC pauses by generation and event-loop lag."""

from __future__ import annotations

import asyncio
import gc
import time

from prometheus_client import CollectorRegistry

from runtime.web.stalls import LAG_PROBE_S, GcPauses, LoopLag


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def test_every_gc_pass_is_timed_by_generation_until_uninstalled():
    registry = CollectorRegistry()
    pauses = GcPauses(registry)
    pauses.install()
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        pauses.uninstall()
    assert _sample(registry, "voicectl_gc_pause_seconds_count", generation="2") >= 1
    assert _sample(registry, "voicectl_gc_pause_seconds_count", generation="0") >= 1
    assert _sample(registry, "voicectl_gc_pause_seconds_sum", generation="2") > 0
    before = _sample(registry, "voicectl_gc_pause_seconds_count", generation="2")
    gc.collect(2)
    assert _sample(registry, "voicectl_gc_pause_seconds_count", generation="2") == before


async def test_a_blocked_loop_counts_as_a_stall():
    registry = CollectorRegistry()
    lag = LoopLag(registry)
    lag.start()
    try:
        await asyncio.sleep(LAG_PROBE_S * 3)
        stalls_before = _sample(registry, "voicectl_event_loop_stalls_total")
        assert _sample(registry, "voicectl_event_loop_lag_seconds_count") >= 1
        time.sleep(LAG_PROBE_S + 0.08)  # blocks the loop past the probe's wake-up by >= 80 ms
        await asyncio.sleep(LAG_PROBE_S * 2)
    finally:
        await lag.stop()
    assert _sample(registry, "voicectl_event_loop_stalls_total") >= stalls_before + 1
    assert _sample(registry, "voicectl_event_loop_lag_seconds_bucket", le="0.04") < \
        _sample(registry, "voicectl_event_loop_lag_seconds_count")


def test_the_readme_names_every_stall_series_metrics_serves():
    from pathlib import Path

    from runtime.web.metrics import Metrics

    readme = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    section = readme.split("### Watching for stalls", 1)[1].split("\n### ", 1)[0]
    documented = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    served = Metrics().render().decode()
    assert documented == {"voicectl_event_loop_lag_seconds", "voicectl_event_loop_stalls_total",
                          "voicectl_gc_pause_seconds{generation}"}
    for name in documented:
        assert f"# TYPE {name.split('{')[0]} " in served
