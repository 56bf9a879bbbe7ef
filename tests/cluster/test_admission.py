"""Admission across instances while calls are being refused: a refused call never holds a slot."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.api.appkeys import TRACKER
from runtime.calls.routing import RouteRejected
from tests.calls.support import provision
from tests.cluster.support import ClusterNames, open_call, start_instances, stop_instances


@pytest.mark.parametrize("refused_by", ["cluster", "tracker"])
async def test_a_call_being_refused_never_counts_against_the_tenant_elsewhere(
        cluster_names: ClusterNames, tmp_path: Path, refused_by: str) -> None:
    """Between the commit of a refused call's voice.call.started and the return of its refusal, a
    slot freed elsewhere goes to the next caller: the refused call's row was never live (were it,
    the tenant would count one call too many, and a burst would admit fewer than the limit)."""
    started = await start_instances(cluster_names, tmp_path, 3)
    try:
        live1, live2, live3 = (live for live, _ in started)
        world = await provision(live1.control, max_concurrent_calls=2)
        # "cluster": one call on i1 and one on i2, so i2's tracker lets the third through to the
        # cluster's count; "tracker": both on i2, whose own count refuses the third.
        first = await open_call(live1 if refused_by == "cluster" else live2, world)
        second = await open_call(live2, world)
        bus = live2.app[TRACKER].bus
        real = bus.publish_all
        seen: list[object] = []

        async def publish_all(events, batch=None):
            await real(events, batch)
            if not seen and any(e.topic == "voice.call.started" for e in events):
                await first.end("hangup", hangup_by="caller")  # a slot frees on i1 (or i2) ...
                try:
                    seen.append(await open_call(live3, world))  # ... and the next caller, on i3, takes it
                except RouteRejected as refused:
                    seen.append(refused)

        bus.publish_all = publish_all
        with pytest.raises(RouteRejected) as refused:
            await open_call(live2, world)
        del bus.publish_all
        assert refused.value.reason == "tenant_call_limit"
        assert len(seen) == 1 and not isinstance(seen[0], RouteRejected), seen
        await second.end("hangup", hangup_by="caller")
        await seen[0].end("hangup", hangup_by="caller")
    finally:
        await stop_instances(started)
