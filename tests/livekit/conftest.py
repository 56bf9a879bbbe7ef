"""The LiveKit area's world: a live runtime and the local LiveKit server peer
(tests/livekit/support.py). A module sets ``WORLD_OPTIONS`` (``start_world``'s keywords) to
change it."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.livekit.support import start_world, stop_world


@pytest_asyncio.fixture
async def world(request: pytest.FixtureRequest, settings):
    w = await start_world(settings, **getattr(request.module, "WORLD_OPTIONS", {}))
    try:
        yield w
    finally:
        await stop_world(w)
