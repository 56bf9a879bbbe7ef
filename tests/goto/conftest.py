"""The GoTo area's world: a live runtime and the local GoTo Connect peer (tests/goto/support.py)."""

from __future__ import annotations

import pytest_asyncio

from tests.goto.support import start_world, stop_world


@pytest_asyncio.fixture
async def world(settings):
    w = await start_world(settings)
    try:
        yield w
    finally:
        await stop_world(w)
