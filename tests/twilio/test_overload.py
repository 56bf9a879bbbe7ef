"""Overload is an answer, not silence: beyond the local engines' capacity (limits.local_calls)
a caller gets the busy answer at once, every admitted caller hears its greeting promptly (it is
synthesised once per voice and text, not per call), and /readyz says the box is full."""

from __future__ import annotations

import asyncio
import time

from runtime.audio import rms
from runtime.telephony.scripted_caller import agent_quiet
from runtime.telephony.services import services
from tests.twilio.support import NUMBER

CAPACITY = 3
CALLS = 8
WORLD_OVERRIDES = {"limits": {"local_calls": CAPACITY}}
GREETING_WITHIN_S = 5.0  # generous: the figure itself comes from the bench (see the README)


async def test_calls_beyond_the_local_capacity_are_busy_and_the_admitted_ones_are_greeted(world) -> None:
    caller = world.caller()
    started = time.monotonic()
    dials = await asyncio.gather(*(caller.dial(NUMBER) for _ in range(CALLS)))
    admitted = [(sid, answer) for sid, answer in dials if not answer.rejected]
    busy = [answer for _, answer in dials if answer.rejected]
    assert len(admitted) == CAPACITY and len(busy) == CALLS - CAPACITY, [a.text for _, a in dials]
    assert all('reason="busy"' in answer.text for answer in busy)

    status, body, _ = await world.api.call("GET", "/readyz")
    assert status == 503 and "local speech engines" in body["checks"]["calls"], body

    legs = await asyncio.gather(*(caller.open_stream(sid, answer) for sid, answer in admitted))
    firsts = await asyncio.gather(*(agent_quiet(leg, 0.4, 0.0, 20.0) for leg in legs))
    for leg, first in zip(legs, firsts, strict=True):
        assert first is not None and first - started < GREETING_WITHIN_S, first and first - started
        assert rms(bytes(leg.result.received_pcm)) > 300, "the greeting is speech"
    greetings = services(world.api.app).conversations.greetings
    assert greetings.misses == 1 and greetings.hits == CAPACITY - 1, "one synthesis for the three greetings"

    for (sid, _), leg in zip(admitted, legs, strict=True):
        await leg.stop(caller.account_sid, sid)
        await leg.wait_closed()
    status, body, _ = await world.api.call("GET", "/readyz")
    assert status == 200 and body["checks"]["local_calls"] == f"0 of {CAPACITY}", body
    _, again = await caller.dial(NUMBER)
    assert not again.rejected, "capacity is given back when calls end"
