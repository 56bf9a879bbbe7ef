"""``POST /api/v1/calls``: an outbound call checked, queued, and dialled by its ``from`` number's
carrier at the box's pace.

The checks, in order, each a clear error: ``from`` is one of the tenant's numbers on a carrier
that can dial out (422), ``agent_id`` exists (404) with an active version (409),
``machine_detection`` is possible on that carrier and a voicemail has a message to leave (422),
``to`` is within the tenant's ``outbound_allowed_prefixes`` (422), the carrier is set up (409),
the tenant is under ``max_outbound_per_day`` (429 ``daily_outbound_limit``; counted under a
per-tenant lock, and in cluster mode again under the admission's lock across instances, so
concurrent requests cannot both take the last call) and the box and tenant
under their concurrent-call limits (429 ``tenant_call_limit``, 503 ``busy``). The call is then
``queued`` (the 201) and waits for its start slot (runtime.calls.dial_limits.OutboundPacer)
before its bridge dials it; one hung up meanwhile is never dialled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from runtime.calls.admission import DailyOutbound
from runtime.calls.dial_limits import OutboundPacer, allowed_prefixes, day_start, prefix_allowed
from runtime.calls.outbound import OutboundCall, PlaceCall, outbound_route
from runtime.calls.routing import RouteRejected
from runtime.calls.session import CallSession
from runtime.control.errors import Conflict, ControlError, Invalid
from runtime.one_per import OnePer
from runtime.telephony.services import services

log = logging.getLogger("voicectl.calls")


class DestinationNotAllowed(Invalid):
    code = "destination_not_allowed"


class DailyOutboundLimit(ControlError):
    status = 429
    code = "daily_outbound_limit"
    exit_code = 1


class TenantCallLimit(ControlError):
    status = 429
    code = "tenant_call_limit"
    exit_code = 1


class RuntimeBusy(ControlError):
    status = 503
    code = "busy"
    exit_code = 8


@dataclass(frozen=True)
class Dialer:
    """A carrier's outbound side: ``prepare`` (before anything is stored: Conflict when the tenant
    cannot dial through it) gives the call's leg, ``control`` its CallControl until the media
    connects, ``dial`` places it."""

    prepare: Callable[[web.Application, str], Awaitable[Any]]
    control: Callable[[Any], Any]
    dial: Callable[[web.Application, CallSession, str], Awaitable[None]]
    machine_detection: bool


def _dialers() -> dict[str, Dialer]:
    from runtime.telephony.livekit import outbound as livekit
    from runtime.telephony.twilio import outbound as twilio

    return {"twilio": Dialer(twilio.prepare, twilio.control_for, twilio.dial, True),
            "livekit": Dialer(livekit.prepare, livekit.control_for, livekit.dial, False)}


class Placer:
    """Per app: the start pacer, the per-tenant locks of the daily count, the dialling tasks."""

    def __init__(self, app: web.Application) -> None:
        limits = services(app).settings.limits
        self.pacer = OutboundPacer(limits.max_outbound_cps, limits.max_outbound_cps_per_tenant)
        self._locks: dict[str, asyncio.Lock] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def lock(self, tenant_id: str) -> asyncio.Lock:
        if len(self._locks) > 10_000:
            self._locks = {t: lk for t, lk in self._locks.items() if lk.locked()}
        return self._locks.setdefault(tenant_id, asyncio.Lock())

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


placer: OnePer[web.Application, Placer] = OnePer(Placer)


async def place(app: web.Application, tenant_id: str, req: PlaceCall, base_url: str,
                on_queued: Callable[[CallSession], Awaitable[None]] | None = None) -> dict[str, Any]:
    """Check, queue and schedule the call (see the module docstring); ``base_url``: where the
    carrier reaches this runtime (server.public_url, else the request's own). ``on_queued``: run
    once the call is queued, before its carrier is asked to dial it (a callback task notes it)."""
    svc = services(app)
    store = svc.control.store
    route = await outbound_route(store, tenant_id, req.from_, req.agent_id)
    if route.tenant["status"] != "active":
        raise Conflict("the tenant is disabled", {"tenant_id": tenant_id})
    provider = route.number["provider"]
    dialer = _dialers().get(provider)
    if dialer is None:
        raise Invalid(f"{req.from_} is a {provider} number: outbound calls go through twilio or livekit numbers",
                      {"field": "from", "provider": provider})
    if req.machine_detection != "off" and not dialer.machine_detection:
        raise Invalid(f"machine_detection {req.machine_detection} needs a twilio number ({req.from_} is {provider})",
                      {"field": "machine_detection", "provider": provider})
    outbound = OutboundCall.for_route(route, req, svc.settings.telephony.twilio.amd_timeout_s)
    if req.machine_detection == "voicemail" and not outbound.voicemail_message:
        raise Invalid("machine_detection voicemail needs the agent version's voicemail_message",
                      {"field": "machine_detection", "agent_id": route.agent_id, "version": route.version})
    prefixes = allowed_prefixes(route.tenant.get("outbound_allowed_prefixes"),
                                await store.tenant_number_e164s(tenant_id))
    if not prefix_allowed(req.to, prefixes):
        raise DestinationNotAllowed(f"{req.to} is outside the tenant's outbound_allowed_prefixes",
                                    {"field": "to", "allowed_prefixes": prefixes})
    leg = await dialer.prepare(app, tenant_id)
    state = placer(app)
    async with state.lock(tenant_id):
        limit = route.tenant["max_outbound_per_day"]
        since = day_start(route.tenant["timezone"])
        placed = await store.count_outbound_since(tenant_id, since)
        if placed >= limit:
            raise DailyOutboundLimit(f"the tenant has placed its {limit} outbound calls for today",
                                     {"limit": limit, "placed": placed})
        outbound.leg = leg
        try:
            # This lock makes the count exact in one process; across instances the admission's does.
            session = await svc.tracker.open_outbound(route, outbound, provider=provider, from_number=req.from_,
                                                      to_number=req.to, daily=DailyOutbound(limit, since))
        except RouteRejected as rejected:
            if rejected.reason == "daily_outbound_limit":
                raise DailyOutboundLimit(f"the tenant has placed its {limit} outbound calls for today",
                                         {"limit": limit}) from None
            if rejected.reason == "tenant_call_limit":
                raise TenantCallLimit("the tenant is at its concurrent-call limit",
                                      {"limit": route.tenant["max_concurrent_calls"]}) from None
            raise RuntimeBusy(rejected.message, {"reason": rejected.reason}) from None
    session.control = dialer.control(leg)
    if on_queued is not None:
        try:
            await on_queued(session)
        except BaseException:
            await session.fail("canceled", "the call was withdrawn before it was dialled")
            raise
    state.spawn(_start(app, state, dialer, session, base_url))
    return {"id": session.id, "status": session.state}


async def _start(app: web.Application, state: Placer, dialer: Dialer, session: CallSession, base_url: str) -> None:
    if not await state.pacer.wait(session.tenant_id, session.ended) or not session.live:
        return  # hung up while queued
    try:
        await dialer.dial(app, session, base_url)
    except Exception as exc:  # the call must not stay queued forever
        log.exception("placing the call failed", extra={"call_id": session.id})
        if session.live:
            await session.fail("carrier_error", f"placing the call failed ({type(exc).__name__})")
