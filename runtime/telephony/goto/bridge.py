"""GoTo Connect notification-channel webhook: ``/webhooks/goto/{token}``.

The path token is verified (SHA-256, constant-time compare against the tenant's channel row)
before anything else; an unknown token gets a 404 and a metric, and nothing is stored. GoTo's URL
validation (OPTIONS) is answered once the token is known. Deliveries are parsed by
runtime.telephony.goto.events and are call events (STARTING opens and routes the call, ACTIVE is
acknowledged, ENDING ends it), web calls offered to the tenant's device (answered over WebRTC by
runtime.telephony.goto.answer), or something else, which is ignored.

A delivery with a valid token is always answered 2xx (``{"status": "ignored", "reason"}`` where
nothing is done): GoTo marks a webhook channel unreachable when a delivery gets 404 or 410, and the
call-events subscription covers the whole account, so other lines' calls arrive here too and are
ignored without a call row.

Deliveries are de-duplicated per conversation by sequence number (in memory; after a restart a
STARTING for a conversation already in the archive does not open it again).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter

from runtime.calls.routing import ROUTE_TABLES, ReadCache, RouteRejected
from runtime.calls.session import CallSession
from runtime.control.errors import ControlError
from runtime.one_per import OnePer
from runtime.store.errors import DatabaseUnavailable
from runtime.telephony.goto.api import TokenCache
from runtime.telephony.goto.channels import hash_token, plausible_token, token_matches
from runtime.telephony.goto.events import CallEvent, GotoPayloadError, Ignored, WebCallOffer, parse_delivery
from runtime.telephony.services import services
from runtime.web.responses import error_response, json_response

log = logging.getLogger("voicectl.goto")

PROVIDER = "goto"
# Conversations remembered after their call finished (for duplicate and late deliveries).
RECENT_CONVERSATIONS = 10_000
# A GoTo call that is still ringing this long after STARTING (no web-call offer answered) fails.
RING_TIMEOUT_S = 60.0
REFUSALS = ("unknown_token", "malformed_json", "bad_payload")
# A call event whose conversation this many seconds after a web-call offer opened its own call
# (the offer named no conversation) is taken for that call's.
ADOPT_WINDOW_S = 30.0

NEW, LIVE, REJECTED, DECLINED, FINISHED, IGNORED = "new", "live", "rejected", "declined", "finished", "ignored"


@dataclass(eq=False)
class GotoConversation:
    """What this process knows of one GoTo conversation (call) of one tenant."""

    tenant_id: str
    conversation_id: str
    outcome: str = NEW
    call_id: str | None = None
    reason: str | None = None
    web_call_id: str | None = None
    answered: bool = False
    # Opened by a web-call offer that named no conversation: the call events' STARTING may adopt it.
    opened_by_offer_at: float | None = None
    seen: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ring_timer: asyncio.TimerHandle | None = None


class GotoBridge:
    """Per-app state: channel and route caches, live conversations, the OAuth token cache, metrics."""

    def __init__(self, app: web.Application) -> None:
        registry = services(app).metrics.registry
        self.refused = Counter("voicectl_goto_webhooks_refused", "GoTo webhook deliveries refused, by reason",
                               ("reason",), registry=registry)
        for reason in REFUSALS:
            self.refused.labels(reason)
        self.duplicates = Counter("voicectl_goto_duplicate_deliveries",
                                  "GoTo deliveries already seen (same conversation and sequence number)",
                                  registry=registry)
        self.live: dict[tuple[str, str], GotoConversation] = {}
        self.recent: OrderedDict[tuple[str, str], GotoConversation] = OrderedDict()
        self.tokens = TokenCache()
        self.tasks: set[asyncio.Task] = set()
        self.ring_timeout_s = RING_TIMEOUT_S
        self._channels: ReadCache | None = None
        self._routes: ReadCache | None = None

    def channels(self, store: Any) -> ReadCache:
        if self._channels is None:
            self._channels = ReadCache(store.goto_channel_by_token_hash, ("goto_channels",))
        return self._channels

    def routes(self, store: Any) -> ReadCache:
        if self._routes is None:
            self._routes = ReadCache(store.route_by_e164, ROUTE_TABLES)
        return self._routes

    def conversation(self, tenant_id: str, conversation_id: str) -> GotoConversation | None:
        key = (tenant_id, conversation_id)
        return self.live.get(key) or self.recent.get(key)

    def track(self, tenant_id: str, conversation_id: str) -> GotoConversation:
        conv = GotoConversation(tenant_id, conversation_id)
        self.live[(tenant_id, conversation_id)] = conv
        return conv

    def by_web_call(self, tenant_id: str, web_call_id: str) -> GotoConversation | None:
        """The conversation a web call was offered to (live, or recently finished)."""
        for table in (self.live, self.recent):
            for conv in table.values():
                if conv.tenant_id == tenant_id and conv.web_call_id == web_call_id:
                    return conv
        return None

    def rekey(self, conv: GotoConversation, conversation_id: str) -> None:
        """A call opened by a web-call offer learns its call-events conversation."""
        self.live.pop((conv.tenant_id, conv.conversation_id), None)
        conv.conversation_id, conv.opened_by_offer_at = conversation_id, None
        self.live[(conv.tenant_id, conversation_id)] = conv

    def adoptable(self, tenant_id: str) -> GotoConversation | None:
        """The oldest call of the tenant opened by an offer without a conversation, if recent."""
        now = asyncio.get_running_loop().time()
        found = [c for c in self.live.values() if c.tenant_id == tenant_id and c.opened_by_offer_at is not None
                 and now - c.opened_by_offer_at < ADOPT_WINDOW_S]
        return min(found, key=lambda c: c.opened_by_offer_at or 0.0) if found else None

    def retire(self, conv: GotoConversation, outcome: str = FINISHED) -> None:
        """The conversation's call is over (or was never ours): keep it only for de-duplication."""
        conv.outcome = outcome
        if conv.ring_timer is not None:
            conv.ring_timer.cancel()
            conv.ring_timer = None
        key = (conv.tenant_id, conv.conversation_id)
        self.live.pop(key, None)
        self.recent[key] = conv
        self.recent.move_to_end(key)
        while len(self.recent) > RECENT_CONVERSATIONS:
            self.recent.popitem(last=False)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


# The app's bridge: bridge(app).
bridge: OnePer[web.Application, GotoBridge] = OnePer(GotoBridge)


# Verification


async def verified_channel(request: web.Request) -> dict[str, Any] | web.Response:
    """The channel row whose token is in the path, or the 404 to answer with (and a metric)."""
    br = bridge(request.app)
    token = request.match_info.get("token", "")
    row = None
    if plausible_token(token):
        digest = hash_token(token)
        row = await br.channels(services(request.app).control.store).get(digest)
        if not token_matches(row, digest):
            row = None
    if row is None:
        br.refused.labels("unknown_token").inc()
        return error_response(404, "unknown GoTo webhook")
    return row


async def validate(request: web.Request) -> web.Response:
    """GoTo's URL validation (OPTIONS) when the channel is created: 200 for a known token."""
    channel = await verified_channel(request)
    if isinstance(channel, web.Response):
        return channel
    return web.Response(status=200, headers={"Allow": "OPTIONS, POST"})


async def webhook(request: web.Request) -> web.Response:
    try:
        return await _webhook(request)
    except (web.HTTPException, ControlError, DatabaseUnavailable):
        raise  # answered by the error middleware, which logs no path
    except Exception:
        # Logged here without the path: the middleware would log it, and the path holds the token.
        log.exception("goto webhook failed")
        return error_response(500, "internal error while handling the GoTo delivery")


async def _webhook(request: web.Request) -> web.Response:
    channel = await verified_channel(request)
    if isinstance(channel, web.Response):
        return channel
    br = bridge(request.app)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = services(request.app).settings.server.max_body_bytes
        return error_response(413, f"request body is larger than {limit} bytes", {"max_bytes": limit})
    # From here on the answer is 2xx whatever the body: GoTo marks a channel unreachable after 4xx.
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        br.refused.labels("malformed_json").inc()
        return ignored("malformed_json", message=f"the body is not valid JSON: {exc}")
    try:
        item = parse_delivery(body)
    except GotoPayloadError as exc:
        br.refused.labels("bad_payload").inc()
        return ignored("bad_payload", message=exc.message, details=exc.details)
    if isinstance(item, Ignored):
        return ignored(item.reason)
    if isinstance(item, WebCallOffer):
        from runtime.telephony.goto.answer import answer_web_call

        return await answer_web_call(request, channel, item.call)
    if item.account_key is not None and item.account_key != channel["account_key"]:
        return ignored("other_account", conversation_id=item.conversation_id)
    return await on_call_event(request, channel, item)


def ignored(reason: str, **extra: Any) -> web.Response:
    """A delivery we take and do nothing with (never a 4xx: see the module docstring)."""
    return json_response({"status": "ignored", "reason": reason, **{k: v for k, v in extra.items() if v is not None}})


# Call events


async def on_call_event(request: web.Request, channel: dict[str, Any], event: CallEvent) -> web.Response:
    br = bridge(request.app)
    tenant_id = channel["tenant_id"]
    conv = br.conversation(tenant_id, event.conversation_id)
    if conv is not None and event.sequence in conv.seen:
        br.duplicates.inc()
        return _outcome("duplicate", conv, sequence=event.sequence)
    if conv is None:
        if event.state != "STARTING":
            return await _unknown_conversation(request, tenant_id, event)
        if event.direction == "INBOUND" and (offered := br.adoptable(tenant_id)) is not None:
            br.rekey(offered, event.conversation_id)  # the call its web-call offer opened already
            offered.seen.add(event.sequence)
            return _outcome("updated", offered, reason="opened_by_web_call")
        conv = br.track(tenant_id, event.conversation_id)
    conv.seen.add(event.sequence)  # before any await: a concurrent redelivery is a duplicate
    try:
        async with conv.lock:
            if event.state == "STARTING":
                return await _starting(request, conv, event)
            if event.state == "ACTIVE":
                return await _active(request, conv, event)
            return await _ending(request, conv, event)
    except BaseException:
        # Not handled: GoTo's redelivery must be handled, not taken for a duplicate.
        conv.seen.discard(event.sequence)
        if conv.outcome == NEW:
            br.live.pop((tenant_id, event.conversation_id), None)
        raise


def _outcome(status: str, conv: GotoConversation | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"status": status}
    if conv is not None:
        body["conversation_id"] = conv.conversation_id
        if conv.call_id:
            body["call_id"] = conv.call_id
    return json_response({**body, **{k: v for k, v in extra.items() if v is not None}})


async def _archived_call(request: web.Request, tenant_id: str, conversation_id: str) -> dict | None:
    rows, _ = await services(request.app).control.store.voice_calls.list(
        tenant_id=tenant_id, equals={"provider": PROVIDER, "provider_call_id": conversation_id}, limit=1,
        count=False)
    return rows[0] if rows else None


async def _unknown_conversation(request: web.Request, tenant_id: str, event: CallEvent) -> web.Response:
    """ACTIVE/ENDING for a conversation this process does not track: finished already (say so), or unknown."""
    row = await _archived_call(request, tenant_id, event.conversation_id)
    if row is not None:
        return ignored("call_finished", call_id=row["id"], conversation_id=event.conversation_id)
    return ignored("unknown_conversation", conversation_id=event.conversation_id, state=event.state)


async def _starting(request: web.Request, conv: GotoConversation, event: CallEvent) -> web.Response:
    if conv.outcome != NEW:
        return _outcome("ignored", conv, reason="already_started")
    br = bridge(request.app)
    if event.direction != "INBOUND":
        br.retire(conv, IGNORED)
        return _outcome("ignored", conv, reason="outbound" if event.direction == "OUTBOUND" else "unknown_direction")
    archived = await _archived_call(request, conv.tenant_id, conv.conversation_id)
    if archived is not None:  # a STARTING redelivered after a restart
        conv.call_id = archived["id"]
        br.retire(conv)
        return _outcome("ignored", conv, reason="already_started")
    found = await route_call(request.app, conv.tenant_id, event.company_number, event.extensions)
    if found is None:
        # Another line of the account (the subscription covers all of them), or another tenant's
        # number, which is as unknown as no number: never route across tenants.
        br.retire(conv, IGNORED)
        return _outcome("ignored", conv, reason="not_our_line")
    tracker = services(request.app).tracker
    try:
        session = await tracker.open_call(
            to_number=found["number"]["e164"], from_number=event.caller, provider=PROVIDER,
            provider_call_id=conv.conversation_id, tenant_hint=conv.tenant_id, routing=found)
    except RouteRejected as rejected:
        log.info("goto call rejected", extra={"reason": rejected.reason, "tenant_id": conv.tenant_id})
        row = await _archived_call(request, conv.tenant_id, conv.conversation_id)
        conv.call_id, conv.reason = (row["id"] if row else None), rejected.reason
        br.retire(conv, REJECTED)
        return _outcome("rejected", conv, reason=rejected.reason)
    conv.call_id, conv.outcome = session.id, LIVE
    if session.route is not None and session.route.transfer_now:
        # GoTo's API documents no transfer: after hours the call is left to GoTo's own routing
        # (its offer, if any, is rejected) instead of pretending to transfer it.
        conv.reason = "after_hours_declined"
        await session.end("after_hours_declined")
        br.retire(conv, DECLINED)
        return _outcome("declined", conv, reason="after_hours")
    session.on_end.append(lambda s: br.retire(conv))
    conv.ring_timer = asyncio.get_running_loop().call_later(
        br.ring_timeout_s, lambda: br.spawn(_ring_timeout(session)))
    return _outcome("opened", conv)


async def route_call(app: web.Application, tenant_id: str, company_number: str | None,
                     extensions: tuple[str, ...] = (), *, offered_to_device: bool = False) -> dict[str, Any] | None:
    """The tenant's GoTo number a call reached, with its route: by the company number the caller
    dialled, else by the extension of the tenant's web-call device (the GoTo admin routes the
    number there; a web call offered to the device reached it by definition). None: not this
    tenant's GoTo line."""
    store = services(app).control.store
    routes = bridge(app).routes(store)
    if company_number:
        found = await routes.get(company_number)
        if found is not None and found["number"]["tenant_id"] == tenant_id and found["number"]["provider"] == PROVIDER:
            return found
    device = await _device_extension(store, tenant_id)
    if device is None or not (offered_to_device or device in extensions):
        return None
    rows, _ = await store.phone_numbers.list(tenant_id=tenant_id, equals={"provider": PROVIDER}, limit=2, count=False)
    # The extension names the tenant's one GoTo number; with several, the company number must say which.
    return await routes.get(rows[0]["e164"]) if len(rows) == 1 else None


async def _device_extension(store: Any, tenant_id: str) -> str | None:
    rows, _ = await store.goto_channels.list(tenant_id=tenant_id, equals={"status": "active"}, limit=1,
                                             descending=True, count=False)
    return rows[0]["extension"] if rows and rows[0].get("device_id") else None


async def _ring_timeout(session: CallSession) -> None:
    if session.state == "ringing":
        await session.fail("not_answered", "no web-call offer was answered in time")


async def _active(request: web.Request, conv: GotoConversation, event: CallEvent) -> web.Response:
    """Acknowledged only: the WebRTC bridge connects an answered call when its media is up (a call
    connected here first would never start its conversation), and GoTo may report ACTIVE for a
    call answered on another device."""
    session = services(request.app).tracker.get(conv.call_id or "")
    if session is None or not session.live:
        return _outcome("ignored", conv, reason="call_finished")
    return _outcome("updated", conv, state=session.state, answered=conv.answered,
                    caller_status=event.caller_status())


async def _ending(request: web.Request, conv: GotoConversation, event: CallEvent) -> web.Response:
    session = services(request.app).tracker.get(conv.call_id or "")
    if session is None or not session.live:
        return _outcome("ignored", conv, reason="call_finished")
    from runtime.telephony.webrtc import bridge as webrtc

    peer = webrtc.bridge(request.app).peers.get(session.id) if conv.answered else None
    if peer is not None:
        # Through the peer: its conversation's last transcripts are written before the final event.
        await peer.finish("end", "completed", hangup_by="caller")
    else:
        await session.end("completed", hangup_by="caller")
    return _outcome("ended", conv)
