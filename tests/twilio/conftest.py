"""The Twilio area's world: a live runtime, a tenant with a number, and the Twilio peer that dials
it (tests/twilio/support.py). A module sets ``WORLD_OVERRIDES`` (settings sections) to change it."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.api.support import with_overrides
from tests.twilio.support import start_world, stop_world


@pytest_asyncio.fixture
async def world(request: pytest.FixtureRequest, settings):
    overrides = getattr(request.module, "WORLD_OVERRIDES", None)
    w = await start_world(with_overrides(settings, **overrides) if overrides else settings)
    try:
        yield w
    finally:
        await stop_world(w)
