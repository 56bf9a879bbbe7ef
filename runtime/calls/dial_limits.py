"""Toll-fraud bounds of outbound calls: where a tenant may dial, how many a day, how fast.

- ``allowed_prefixes``: the tenant's ``outbound_allowed_prefixes``, or by default the country
  calling codes of its own numbers (a tenant with +1 numbers may dial +1...). Country codes are
  prefix-free (ITU-T E.164), so the code of a number is its first one, two or three digits,
  told apart by the short list of one- and two-digit codes below.
- ``day_start``: the tenant's day (its time zone) for ``max_outbound_per_day``.
- ``OutboundPacer``: at most ``limits.max_outbound_cps`` calls start per second on the box and
  ``limits.max_outbound_cps_per_tenant`` for one tenant; each start takes the next free slot of
  both (slots 1/cps apart), so no second ever holds more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

# ITU-T E.164 country codes of one and two digits; every other code has three.
ONE_DIGIT = frozenset({"1", "7"})
TWO_DIGITS = frozenset({
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48", "49",
    "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81", "82", "84",
    "86", "90", "91", "92", "93", "94", "95", "98",
})


def country_code(e164: str) -> str:
    """``+`` and the country calling code of an E.164 number (+15550107000 -> +1, +4930... -> +49)."""
    digits = e164.lstrip("+")
    if digits[:1] in ONE_DIGIT:
        return "+" + digits[:1]
    if digits[:2] in TWO_DIGITS:
        return "+" + digits[:2]
    return "+" + digits[:3]


def allowed_prefixes(configured: list[str] | None, own_numbers: Iterable[str]) -> list[str]:
    """The tenant's prefixes, or the country codes of its own numbers."""
    if configured is not None:
        return list(configured)
    return sorted({country_code(n) for n in own_numbers})


def prefix_allowed(to: str, prefixes: Iterable[str]) -> bool:
    return any(to.startswith(p) for p in prefixes)


def day_start(timezone: str, now: datetime | None = None) -> str:
    """Midnight of today in ``timezone``, as the store's UTC timestamps (runtime.ids.now_iso)."""
    local = (now or datetime.now(UTC)).astimezone(ZoneInfo(timezone))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
    return midnight.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class OutboundPacer:
    """Start slots for outbound calls, box-wide and per tenant (see the module docstring)."""

    def __init__(self, box_cps: float, tenant_cps: float, clock=time.monotonic) -> None:
        self.box_gap, self.tenant_gap = 1.0 / box_cps, 1.0 / tenant_cps
        self._clock = clock
        self._box_next = 0.0
        self._tenant_next: dict[str, float] = {}

    def reserve(self, tenant_id: str) -> float:
        """The monotonic time this tenant's next call may start (the slot is taken now)."""
        now = self._clock()
        slot = max(now, self._box_next, self._tenant_next.get(tenant_id, 0.0))
        self._box_next = slot + self.box_gap
        self._tenant_next[tenant_id] = slot + self.tenant_gap
        if len(self._tenant_next) > 10_000:  # tenants whose slots have passed need no entry
            self._tenant_next = {t: s for t, s in self._tenant_next.items() if s > now}
        return slot

    async def wait(self, tenant_id: str, cancelled: asyncio.Event | None = None) -> bool:
        """Wait for the slot; False when ``cancelled`` was set first (the call ended meanwhile)."""
        delay = self.reserve(tenant_id) - self._clock()
        if delay <= 0:
            return cancelled is None or not cancelled.is_set()
        if cancelled is None:
            await asyncio.sleep(delay)
            return True
        try:
            await asyncio.wait_for(cancelled.wait(), delay)
        except TimeoutError:
            return True
        return False
