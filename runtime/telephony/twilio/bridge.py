"""Twilio voice and status webhooks: signature verification, routing, TwiML.

The signature is checked before any other work, with the auth token of the tenant found
from ``To`` (or, for an unknown number, from ``AccountSid``). Requests for which no tenant is
known get a 403 and a metric, and nothing is stored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import hmac
import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape

from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from prometheus_client import Counter

from runtime.calls.routing import ROUTE_TABLES, ReadCache, RouteRejected, pinned_route, route_of_call
from runtime.calls.session import AWAITING_MEDIA
from runtime.calls.tracker import DuplicateCall
from runtime.events.models import TransferRequested
from runtime.one_per import OnePer
from runtime.store.stream_tokens import StreamTokenRows
from runtime.store.tables import ALL_TENANTS
from runtime.telephony.services import services
from runtime.telephony.stream_tokens import SharedStreamTokens, StreamTokens
from runtime.telephony.twilio import twiml
from runtime.web.client_address import ClientAddresses
from runtime.web.responses import error_response

if TYPE_CHECKING:
    from runtime.calls.session import CallSession
    from runtime.calls.tracker import CallTracker
    from runtime.config import Settings
    from runtime.store.store import Store
    from runtime.telephony.twilio.media import MediaStream

log = logging.getLogger("voicectl.twilio")

MEDIA_PATH = "/media/twilio"
STREAM_STATUS_PATH = "/webhooks/twilio/stream-status"
# The query parameter naming an outbound call in the URLs given to Calls.create.
OUTBOUND_QUERY = "call"
# The query parameter naming an evaluation call's pin (runtime.control.eval_pins).
EVAL_QUERY = "eval"
XML = "text/xml"
# A call answered with <Connect><Stream> whose stream never starts is failed after this long.
STREAM_START_GRACE_S = 5.0
REJECTION_SPEECH = {
    "unknown_number": "Sorry, this number is not in service. Goodbye.",
    "tenant_call_limit": "Sorry, all of our lines are busy right now. Please call again later. Goodbye.",
}
GENERIC_REJECTION = "Sorry, this line is not available right now. Please try again later. Goodbye."
# Why media sockets are refused or closed (voicectl_twilio_media_refused_total{reason}).
MEDIA_REFUSALS = ("pending_limit", "start_timeout", "ahead_of_real_time", "oversized_message")
BUSY_REASONS = frozenset({"busy", "shutting_down"})
FAILED_STATUSES = frozenset({"busy", "no-answer", "failed", "canceled"})


# Signatures


def _signed_params(params: Iterable[tuple[str, str]]) -> str:
    """Each ``key + value``, sorted (repeated keys: their distinct values sorted, as the official validator does)."""
    return "".join(k + v for k, v in sorted(set(params)))


def _sign(key: bytes, data: str) -> bytes:
    return base64.b64encode(hmac.digest(key, data.encode(), "sha1"))


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL followed by the sorted parameters."""
    return _sign(auth_token.encode(), url + _signed_params(params)).decode()


@lru_cache(maxsize=256)  # a box's webhook URLs are a handful; parsing one costs more than the HMAC
def _url_variants(url: str) -> tuple[str, ...]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if default is None or parts.hostname is None:
        return (url,)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port == default:
        return url, urlunsplit(parts._replace(netloc=f"{prefix}{host}"))
    if parts.port is None:
        return url, urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))
    return (url,)


def url_variants(url: str) -> list[str]:
    """The URL as given, and with the scheme's default port removed or added (as Twilio's validator)."""
    return list(_url_variants(url))


def signature_valid(auth_token: str, url: str, params: Iterable[tuple[str, str]], signature: str | None) -> bool:
    if not signature:
        return False
    key, signed, expected = auth_token.encode(), _signed_params(params), signature.encode()
    return any(hmac.compare_digest(_sign(key, u + signed), expected) for u in _url_variants(url))


def public_request_url(request: web.Request) -> str:
    """The URL Twilio called: server.public_url + path and query behind a proxy, else the request's own."""
    public = services(request.app).settings.server.public_url
    if public:
        return public.rstrip("/") + request.raw_path
    return f"{request.scheme}://{request.host}{request.raw_path}"


def public_base(request: web.Request) -> str:
    public = services(request.app).settings.server.public_url
    return public.rstrip("/") if public else f"{request.scheme}://{request.host}"


def media_stream_url(request: web.Request) -> str:
    scheme, _, rest = public_base(request).partition("://")
    if scheme != "https":
        _warn_insecure_stream_once()
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{MEDIA_PATH}"


@lru_cache(maxsize=1)
def _warn_insecure_stream_once() -> None:
    log.warning(INSECURE_STREAM_WARNING)


def streams_can_be_secure(settings: Settings) -> bool:
    """Twilio connects media streams over wss:// only: the stream URL is built from server.public_url."""
    return (settings.server.public_url or "").startswith("https://")


async def warn_if_streams_would_be_refused(app: web.Application) -> None:
    """At startup: a box with Twilio numbers and no https public_url answers every call with a
    ws:// stream URL, which Twilio refuses (the call ends at once)."""
    svc = services(app)
    if streams_can_be_secure(svc.settings):
        return
    if await svc.control.store.executor.fetchval(
            "SELECT COUNT(*) AS n FROM phone_numbers WHERE provider = 'twilio'"):
        log.warning(INSECURE_STREAM_WARNING)


INSECURE_STREAM_WARNING = ("server.public_url is not https: Twilio refuses a ws:// media stream (error 31922) and "
                           "the call ends; set server.public_url to the runtime's public https URL")


# TwiML answers (runtime.telephony.twilio.twiml renders them)


def xml_response(document: str) -> web.Response:
    return web.Response(text=document, content_type=XML)


def twiml_response(body: str) -> web.Response:
    return xml_response(twiml.document(body))


def reject_twiml() -> web.Response:
    """``<Reject />``: the call is refused before it is answered."""
    return twiml_response(twiml.REJECT)


def rejection_twiml(rejected: RouteRejected) -> web.Response:
    if rejected.reason in BUSY_REASONS:
        return twiml_response(twiml.REJECT_BUSY)
    return twiml_response(f"<Say>{escape(REJECTION_SPEECH.get(rejected.reason, GENERIC_REJECTION))}</Say><Hangup/>")


# Per-app bridge state


class PendingSockets:
    """Media sockets open but not yet started, counted per client address and in all."""

    def __init__(self, cap: int, total_cap: int) -> None:
        self.cap = cap
        self.total_cap = total_cap
        self.total = 0
        self._counts: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """None when admitted; else which limit refused it (``address`` or ``box``)."""
        held = self._counts.get(address, 0)
        if held >= self.cap:
            return "address"
        if self.total >= self.total_cap:
            return "box"
        self._counts[address] = held + 1
        self.total += 1
        return None

    def release(self, address: str) -> None:
        held = self._counts.get(address, 0)
        if held <= 0:
            return
        self.total -= 1
        if held > 1:
            self._counts[address] = held - 1
        else:
            self._counts.pop(address, None)

    def count(self, address: str) -> int:
        return self._counts.get(address, 0)


class TwilioBridge:
    """Stream tokens, CallSid -> call id, live media streams, pending sockets and the bridge's metrics."""

    def __init__(self, app: web.Application) -> None:
        settings = services(app).settings
        self.app = app
        self.tokens: StreamTokens | SharedStreamTokens = _stream_tokens(app)
        self.by_sid: dict[str, str] = {}
        # Voice webhooks of a CallSid being opened now: a concurrent replay waits for the first.
        self.opening: dict[str, asyncio.Future[None]] = {}
        self.answers: dict[str, str] = {}  # call id -> the <Connect><Stream> TwiML it was answered with
        self.streams: dict[str, MediaStream] = {}
        self.client_addresses = ClientAddresses(settings.server.trusted_proxies)
        self.pending = PendingSockets(settings.limits.pending_media_sockets_per_address,
                                      settings.limits.pending_media_sockets)
        self.tasks: set[asyncio.Task] = set()
        self._stream_deadlines: list[tuple[float, str]] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._tracker: CallTracker | None = None
        self._routes: ReadCache | None = None
        self._accounts: ReadCache | None = None
        self.refused = Counter(
            "voicectl_twilio_webhooks_refused", "Twilio webhooks refused before any work, by reason",
            ("reason",), registry=services(app).metrics.registry,
        )
        for reason in ("unknown_tenant", "bad_signature", "no_credential", "bad_pin"):
            self.refused.labels(reason)
        self.media_refused = Counter(
            "voicectl_twilio_media_refused", "Twilio media sockets refused or closed for what their peer did, "
            "by reason", ("reason",), registry=services(app).metrics.registry,
        )
        for reason in MEDIA_REFUSALS:
            self.media_refused.labels(reason)

    def routes(self, store: Store) -> ReadCache:
        """Dialled number -> ``store.route_by_e164`` (None: unknown), cached (see ReadCache)."""
        if self._routes is None:
            self._routes = ReadCache(store.route_by_e164, ROUTE_TABLES)
        return self._routes

    def accounts(self, store: Store) -> ReadCache:
        """Twilio AccountSid -> tenant id (None: unknown), cached: a flood of webhooks for unknown
        numbers must not scan the credentials table once each."""
        if self._accounts is None:
            self._accounts = ReadCache(store.twilio_tenant_by_account_sid, ("credentials", "tenants"))
        return self._accounts

    def expect_stream(self, tracker: CallTracker, call_id: str) -> None:
        """Fail the call (stream_not_started) if it is still ringing when its token has expired plus
        STREAM_START_GRACE_S. One shared timer over a deadline heap (by call id, so an ended call
        is not kept alive), not a timer and a closure per call."""
        loop = asyncio.get_running_loop()
        self._tracker = tracker
        heapq.heappush(self._stream_deadlines, (loop.time() + self.tokens.ttl_s + STREAM_START_GRACE_S, call_id))
        if self._sweep is None:
            self._sweep = loop.call_at(self._stream_deadlines[0][0], self._sweep_streams)

    def _sweep_streams(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        now, heap, tracker = loop.time(), self._stream_deadlines, self._tracker
        while heap and heap[0][0] <= now:
            _, call_id = heapq.heappop(heap)
            session = tracker.get(call_id) if tracker is not None else None
            if session is not None and session.state in AWAITING_MEDIA:
                self.spawn(_stream_never_started(self, session))
        if heap:
            self._sweep = loop.call_at(heap[0][0], self._sweep_streams)

    async def take_over(self, app: web.Application, call_id: str) -> CallSession | None:
        """Cluster mode: the media socket of a call another instance answered (or placed) reached
        this one with a valid token. The call is run here, from its row and route (an outbound
        call also from its events: runtime.telephony.twilio.outbound.resumed; an evaluation's from
        its pin); None when it cannot be (not a call awaiting its media, or its route, credential
        or pin is gone): the token is then disowned, so the first instance fails the call at its
        stream deadline instead of forgetting it."""
        svc = services(app)
        store = svc.control.store
        row = await store.voice_calls.get(call_id, tenant_id=ALL_TENANTS)
        route = outbound = evaluation = None
        if row is not None and row["status"] in AWAITING_MEDIA and row["provider"] == "twilio":
            with contextlib.suppress(RouteRejected):
                if "evaluation_id" in (row.get("metadata") or {}):
                    from runtime.telephony.twilio.evals import resumed_evaluation

                    evaluation = await resumed_evaluation(app, row)
                    if evaluation is not None:
                        route = await pinned_route(store, row["tenant_id"], row["agent_id"], row["agent_version"])
                else:
                    route = await route_of_call(store, row)
            if route is not None and row["direction"] == "outbound":
                from runtime.telephony.twilio.outbound import control_for, resumed

                outbound = await resumed(app, row, route)
                route = route if outbound is not None else None
        if row is None or route is None:
            await self.tokens.disown(call_id)
            return None
        session = await svc.tracker.adopt(row, route, outbound)
        session.evaluation = evaluation
        if outbound is not None:
            session.control = control_for(outbound.leg)
        call_sid = row["provider_call_id"]
        self.by_sid[call_sid] = session.id
        session.on_end.append(lambda s: _forget(self, s, call_sid))
        log.info("twilio call taken over from another instance", extra={"call_id": call_id})
        await _announce_take_over(app, call_id)
        return session

    async def still_here(self, app: web.Application, session: CallSession) -> bool:
        """False (and the call forgotten here) when another instance has taken the call over: its
        media socket spent the call's token there. Checked before this instance acts on a call it
        still believes awaits its media (the stream deadline, Twilio's status callbacks)."""
        if session.state not in AWAITING_MEDIA or not await self.tokens.spent_by_another(session.id):
            return True
        log.info("twilio call run by another instance: forgotten here", extra={"call_id": session.id})
        if session.provider_call_id and self.by_sid.get(session.provider_call_id) == session.id:
            del self.by_sid[session.provider_call_id]
        self.answers.pop(session.id, None)
        services(app).tracker.forget(session)
        return False

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _taken_over_subject(app: web.Application) -> str:
    from runtime.cluster.link import CLUSTER

    return app[CLUSTER].subject("twilio", "taken_over")


async def _announce_take_over(app: web.Application, call_id: str) -> None:
    """Tell the instance that answered the call at once (it would keep it until its stream deadline)."""
    from runtime.cluster.link import CLUSTER

    try:
        await app[CLUSTER].client.publish(_taken_over_subject(app), call_id.encode())
    except Exception as exc:  # noqa: BLE001 - NATS lost: that instance finds out at its deadline instead
        log.warning("could not announce a taken-over call", extra={"call_id": call_id, "error": str(exc)})


async def follow_take_overs(app: web.Application) -> None:
    """Cluster mode, at startup: a call this instance answered and another took over is forgotten
    here as soon as that one says so (after checking the token's row: the notice is only a hint)."""
    from runtime.cluster.link import CLUSTER

    async def taken_over(msg) -> None:
        session = services(app).tracker.get(msg.data.decode(errors="replace"))
        if session is not None and session.provider == "twilio":
            await bridge(app).still_here(app, session)

    await app[CLUSTER].client.subscribe(_taken_over_subject(app), cb=taken_over)


def _stream_tokens(app: web.Application) -> StreamTokens | SharedStreamTokens:
    """In one process the tokens stay in memory; in cluster mode they are rows every instance reads."""
    svc = services(app)
    if not svc.settings.cluster_mode:
        return StreamTokens()
    from runtime.cluster.link import CLUSTER

    return SharedStreamTokens(StreamTokenRows(svc.control.store.executor), svc.keys.stream_tokens,
                              app[CLUSTER].instance_id)


# The app's bridge: bridge(app).
bridge: OnePer[web.Application, TwilioBridge] = OnePer(TwilioBridge)


# Webhooks


async def _form(request: web.Request) -> MultiDictProxy[str]:
    if request.content_type != "application/x-www-form-urlencoded":
        await request.read()
        return MultiDictProxy(MultiDict())
    return await request.post()  # type: ignore[return-value]  # url-encoded: every value is a str


async def _tenant_for(request: web.Request, form: MultiDictProxy[str],
                      routing: dict | None = None) -> str | None:
    """The number is read with its whole route (``store.route_by_e164``); with ``routing`` (a dict)
    that is kept in ``routing["found"]``, so the voice webhook routes without reading it again."""
    store = services(request.app).control.store
    br = bridge(request.app)
    to = form.get("To")
    if to:
        found = await br.routes(store).get(to)
        if found is not None:
            if routing is not None:
                routing["found"] = found
            return found["number"]["tenant_id"]
    account_sid = form.get("AccountSid")
    if account_sid:
        return await br.accounts(store).get(account_sid)
    return None


async def verified_tenant(request: web.Request,
                          routing: dict | None = None) -> tuple[str, MultiDictProxy[str]] | web.Response:
    """The tenant of a correctly signed webhook, or the 403 to answer with."""
    form = await _form(request)
    tenant_id = await _tenant_for(request, form, routing)
    return await verified_for(request, tenant_id, form)


async def verified_for(request: web.Request, tenant_id: str | None,
                       form: MultiDictProxy[str] | None = None) -> tuple[str, MultiDictProxy[str]] | web.Response:
    """The webhook's form when it is signed with ``tenant_id``'s auth token (an outbound call's
    callbacks: the call they name says whose), or the 403 to answer with."""
    br = bridge(request.app)
    if form is None:
        form = await _form(request)
    if tenant_id is None:
        br.refused.labels("unknown_tenant").inc()
        return error_response(403, "the request names no known number, call or Twilio account")
    token = await services(request.app).control.credentials.secret(tenant_id, "twilio")
    if not token:
        br.refused.labels("no_credential").inc()
        return error_response(403, "the request cannot be verified")
    if not signature_valid(token, public_request_url(request), form.items(),
                           request.headers.get("X-Twilio-Signature")):
        br.refused.labels("bad_signature").inc()
        return error_response(403, "invalid or missing X-Twilio-Signature")
    return tenant_id, form


async def voice_webhook(request: web.Request) -> web.Response:
    if OUTBOUND_QUERY in request.query:  # an outbound call answered (runtime.telephony.twilio.outbound)
        from runtime.telephony.twilio.outbound import voice_answer

        return await voice_answer(request)
    if EVAL_QUERY in request.query:  # an evaluation's synthetic call (runtime.telephony.twilio.evals)
        from runtime.telephony.twilio.evals import eval_voice

        return await eval_voice(request)
    routing: dict = {}
    verified = await verified_tenant(request, routing)
    if isinstance(verified, web.Response):
        return verified
    tenant_id, form = verified
    call_sid, to = form.get("CallSid"), form.get("To")
    if not call_sid or not to:
        return error_response(400, "CallSid and To are required", {"missing": [
            k for k in ("CallSid", "To") if not form.get(k)]})
    br = bridge(request.app)
    # A CallSid already seen never opens a second call (a retry, or a captured webhook replayed).
    while (opening := br.opening.get(call_sid)) is not None:
        await asyncio.shield(opening)
    existing = services(request.app).tracker.get(br.by_sid.get(call_sid, ""))
    if existing is not None:
        answer = br.answers.get(existing.id)
        if existing.tenant_id == tenant_id and existing.state == "ringing" and answer is not None:
            return xml_response(answer)  # the same TwiML: no second token
        return reject_twiml()
    opening = br.opening[call_sid] = asyncio.get_running_loop().create_future()
    try:
        known = await _known_call(request, br, tenant_id, call_sid)
        if known is not None:
            return known
        try:
            return await _open_call(request, br, tenant_id, call_sid, to, form, routing)
        except DuplicateCall:  # another instance opened it meanwhile (the same webhook sent to both)
            return await _known_call(request, br, tenant_id, call_sid) or reject_twiml()
    finally:
        del br.opening[call_sid]
        opening.set_result(None)


async def _known_call(request: web.Request, br: TwilioBridge, tenant_id: str, call_sid: str) -> web.Response | None:
    """The answer to a CallSid that has a call row already (opened by another instance, or ended,
    maybe before a restart), None when it has none. A call still awaiting its media is answered
    with its stream again (a fresh token: the first one is only in the TwiML that instance sent),
    anything else is refused."""
    row = await services(request.app).control.store.voice_calls.find(
        tenant_id=tenant_id, provider="twilio", provider_call_id=call_sid)
    if row is None:
        return None
    if row["status"] != "ringing" or row["direction"] != "inbound":
        return reject_twiml()
    return xml_response(twiml.document(twiml.stream(
        media_stream_url(request), await br.tokens.issue(row["id"]), public_base(request) + STREAM_STATUS_PATH)))


async def _open_call(request: web.Request, br: TwilioBridge, tenant_id: str, call_sid: str, to: str,
                     form: MultiDictProxy[str], routing: dict) -> web.Response:
    tracker = services(request.app).tracker
    try:
        session = await tracker.open_call(
            to_number=to, from_number=form.get("From"), provider="twilio", provider_call_id=call_sid,
            tenant_hint=tenant_id, routing=routing.get("found"),
        )
    except RouteRejected as rejected:
        log.info("twilio call rejected", extra={"reason": rejected.reason, "tenant_id": rejected.tenant_id})
        return rejection_twiml(rejected)
    if session.route is not None and session.route.transfer_now:
        target = session.route.config.escalation_target
        await session.emit(TransferRequested(target=target, reason="after_hours"))
        await session.end("after_hours_transfer")
        return twiml_response(twiml.dial(target))
    return await answer_with_stream(request, br, session, call_sid)


async def answer_with_stream(request: web.Request, br: TwilioBridge, session: CallSession,
                             call_sid: str) -> web.Response:
    """``<Connect><Stream>`` with a stream token for the call; it fails if the stream never starts."""
    br.by_sid[call_sid] = session.id
    session.on_end.append(lambda s: _forget(br, s, call_sid))
    answer = br.answers[session.id] = twiml.document(twiml.stream(
        media_stream_url(request), await br.tokens.issue(session.id), public_base(request) + STREAM_STATUS_PATH))
    br.expect_stream(services(request.app).tracker, session.id)
    return xml_response(answer)


async def _forget(br: TwilioBridge, session: CallSession, call_sid: str) -> None:
    if br.by_sid.get(call_sid) == session.id:
        del br.by_sid[call_sid]
    br.answers.pop(session.id, None)
    await br.tokens.revoke_call(session.id)


async def _stream_never_started(br: TwilioBridge, session: CallSession) -> None:
    if session.state in AWAITING_MEDIA and await br.still_here(br.app, session):
        await session.fail("stream_not_started", "the media stream did not start")


async def status_webhook(request: web.Request) -> web.Response:
    if OUTBOUND_QUERY in request.query:
        from runtime.telephony.twilio.outbound import status_callback

        return await status_callback(request)
    verified = await verified_tenant(request)
    if isinstance(verified, web.Response):
        return verified
    tenant_id, form = verified
    status, call_sid = form.get("CallStatus", ""), form.get("CallSid", "")
    br = bridge(request.app)
    session = services(request.app).tracker.get(br.by_sid.get(call_sid, ""))
    if (session is None or session.tenant_id != tenant_id or not session.live
            or not await br.still_here(request.app, session)):
        return web.Response(status=204)  # unknown, finished or run elsewhere: nothing to do (idempotent)
    if status == "completed" and session.state == "ringing":
        # <Connect> fell through: the media stream never connected (a ws:// URL, an unreachable
        # host), and Twilio completed the call. Not a caller hang-up.
        await session.fail("stream_not_started", "Twilio completed the call before its media stream started")
    elif status == "completed":
        await session.end("completed", hangup_by="caller")
    elif status in FAILED_STATUSES:
        if session.state == "ringing":
            await session.fail(status.replace("-", "_"))
        else:
            await session.end(status.replace("-", "_"), hangup_by="caller")
    return web.Response(status=204)


async def stream_status_webhook(request: web.Request) -> web.Response:
    """``<Stream statusCallback>`` (twilio.com/docs/voice/twiml/stream#statuscallback): a form with
    AccountSid, CallSid, StreamSid, StreamName, StreamEvent (stream-started | stream-stopped |
    stream-error), StreamError (its message, on stream-error) and Timestamp. A stream error fails
    its call with the message; the other events need nothing (the WebSocket says as much)."""
    verified = await verified_tenant(request)
    if isinstance(verified, web.Response):
        return verified
    tenant_id, form = verified
    if form.get("StreamEvent") != "stream-error":
        return web.Response(status=204)
    call_sid = form.get("CallSid", "")
    message = (form.get("StreamError") or "unknown stream error")[:300]
    log.warning("twilio reported a media stream error", extra={"tenant_id": tenant_id, "error": message})
    br = bridge(request.app)
    session = services(request.app).tracker.get(br.by_sid.get(call_sid, ""))
    if (session is not None and session.tenant_id == tenant_id and session.live
            and await br.still_here(request.app, session)):
        await session.fail("stream_error", f"Twilio: {message}")
    return web.Response(status=204)
