"""The GoTo area's world: a live runtime and the local GoTo Connect peer (tests/goto/support.py)."""

from __future__ import annotations

import pytest_asyncio

from tests.goto.support import GotoPeer, start_world, stop_world


@pytest_asyncio.fixture
async def peer():
    """The local GoTo peer alone (for the API client's tests)."""
    p = GotoPeer()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest_asyncio.fixture
async def world(settings):
    w = await start_world(settings)
    try:
        yield w
    finally:
        await stop_world(w)
