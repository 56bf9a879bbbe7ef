"""Three instances as processes on one schema and stream: each serves and knows its id."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.cluster.processes import ProcessCluster, provision
from tests.cluster.support import ClusterNames


async def test_three_instance_processes_serve_one_schema(cluster_names: ClusterNames, tmp_path: Path) -> None:
    await provision(cluster_names, tmp_path)
    cluster = await ProcessCluster(cluster_names, tmp_path).start(3)
    try:
        async with aiohttp.ClientSession() as http:
            for instance in cluster.instances:
                async with http.get(f"{instance.url}/readyz") as resp:
                    body = await resp.json()
                assert resp.status == 200 and body["instance_id"] == instance.name, body
    finally:
        cluster.stop()
