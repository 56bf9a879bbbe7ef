"""Fixtures of the cluster tests: the test's schema and stream (removed after), instances on them."""

from __future__ import annotations

import pytest_asyncio

from runtime.store.postgres import PostgresDatabase
from tests.cluster.support import ClusterNames, delete_stream, new_cluster_names


@pytest_asyncio.fixture
async def cluster_names(require_postgres: None) -> ClusterNames:
    names = new_cluster_names()
    try:
        yield names
    finally:
        await delete_stream(names)
        await PostgresDatabase(names.schema_url).drop_schema()
