"""Each instance holds one NATS connection; /readyz says whether it is up."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtime.cluster.link import CLUSTER
from tests.api.support import high_limits, start_live_api, stop_live_api
from tests.cluster.support import (
    ClusterNames,
    NatsProxy,
    instance_settings,
    share_master_key,
    start_instances,
    stop_instances,
)


async def test_instances_report_their_id_and_nats_on_readyz(cluster_names: ClusterNames, tmp_path: Path) -> None:
    started = await start_instances(cluster_names, tmp_path, 2)
    try:
        for n, (live, _) in enumerate(started, start=1):
            async with live.http.get(f"{live.base_url}/readyz") as resp:
                body = await resp.json()
            assert resp.status == 200, body
            assert body["instance_id"] == f"i{n}" and body["checks"]["nats"] == "ok"
    finally:
        await stop_instances(started)


async def _readyz_until(live, status: int, timeout_s: float = 10.0) -> tuple[int, dict]:
    """/readyz's status and body once it answers ``status`` (or the last answer after ``timeout_s``)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        async with live.http.get(f"{live.base_url}/readyz") as resp:
            answer = resp.status, await resp.json()
        if answer[0] == status or asyncio.get_running_loop().time() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def test_readyz_answers_503_while_nats_is_lost_and_200_once_it_is_back(cluster_names: ClusterNames,
                                                                             tmp_path: Path) -> None:
    proxy = await NatsProxy().start()
    settings = instance_settings(cluster_names, tmp_path / "i1", "i1", nats_url=proxy.url, limits=high_limits())
    share_master_key(settings)
    live, runner = await start_live_api(settings)
    try:
        assert live.app[CLUSTER].connected
        proxy.cut()
        status, body = await _readyz_until(live, 503)
        assert status == 503 and body["checks"]["nats"] == "unreachable", body
        proxy.restore()
        status, body = await _readyz_until(live, 200)
        assert status == 200 and body["checks"]["nats"] == "ok", body
    finally:
        await stop_live_api(live, runner)
        await proxy.stop()
