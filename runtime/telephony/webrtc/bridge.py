"""The WebRTC bridge (aiortc): an SDP offer in, the answer out, the call on the shared pipeline.

Two ways in, one path:

- ``answer_offer(app, session, offer_sdp)``: for a call already opened, routed and ringing
  (the GoTo Connect bridge answers web calls with it; the browser sessions below use it too).
  It checks the offer, builds the peer (runtime.telephony.webrtc.peer), wires it to the call's
  conversation and returns the answer SDP. The peer then belongs to the call: it is closed
  when the session ends, whoever ends it. On any failure the call is failed with the reason
  (voice.call.failed), the peer is closed and ``AnswerFailed`` is raised; an offer that cannot
  be answered raises ``SdpRejected``, which is also a ``ValueError``.
- ``open_browser_call(app, tenant_id, target, offer_sdp)``: ``POST /api/v1/webrtc/sessions``.
  Routes the call to an agent or a number of the tenant (as the Twilio bridge routes a dialled
  number: ``CallTracker.open_call``, its limits and rejections), then ``answer_offer``.

The bridge watches its peers once a second: media that never comes up within
``connect_timeout_s`` fails the call (``ice_timeout``), a connected peer that sends nothing for
``silence_timeout_s`` fails it (``peer_silent``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import Counter

from runtime.calls.routing import RouteRejected
from runtime.calls.session import CallSession
from runtime.control.errors import ControlError, NotFound
from runtime.events.models import TransferRequested
from runtime.one_per import OnePer
from runtime.store.tables import ALL_TENANTS
from runtime.telephony.services import services
from runtime.telephony.webrtc.peer import AnswerFailed, WebRtcPeer
from runtime.telephony.webrtc.sdp import SdpRejected, check_offer
from runtime.telephony.webrtc.tokens import BrowserTokens
from runtime.web.responses import ERROR_WORDS

if TYPE_CHECKING:
    from runtime.store.store import Store

log = logging.getLogger("voicectl.webrtc")

__all__ = ["AnswerFailed", "CallTarget", "SdpRejected", "WebRtcBridge", "answer_offer", "bridge", "open_browser_call"]

WATCH_INTERVAL_S = 1.0
# RouteRejected.reason -> HTTP status of the refused session.
REJECTION_STATUS = {"unknown_number": 404, "tenant_disabled": 403, "no_active_version": 409,
                    "tenant_call_limit": 429, "busy": 503, "shutting_down": 503}


class WebRtcBridge:
    """Per app: the live peers by call id, the browser-token signer, the refusal metric."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.peers: dict[str, WebRtcPeer] = {}
        self.tokens = BrowserTokens(services(app).keys.browser_tokens)
        self._watch: asyncio.Task[None] | None = None
        self.refused = Counter(
            "voicectl_webrtc_sessions_refused", "WebRTC offers refused, by reason", ("reason",),
            registry=services(app).metrics.registry,
        )

    def add(self, peer: WebRtcPeer) -> None:
        self.peers[peer.session.id] = peer
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._watch_peers(), name="webrtc-watch")

    def remove(self, peer: WebRtcPeer) -> None:
        if self.peers.get(peer.session.id) is peer:
            del self.peers[peer.session.id]

    async def _watch_peers(self) -> None:
        settings = services(self.app).settings.telephony.webrtc
        while self.peers:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            for peer in list(self.peers.values()):
                if peer.closed:
                    continue
                if not peer.connected and now - peer.created_at > settings.connect_timeout_s:
                    peer._spawn(peer.finish("fail", "ice_timeout",
                                            f"the media path did not come up within {settings.connect_timeout_s:g} s"))
                elif peer.connected and now - peer.last_rx > settings.silence_timeout_s:
                    peer._spawn(peer.finish("fail", "peer_silent",
                                            f"no audio from the caller for {settings.silence_timeout_s:g} s"))


# The app's bridge: bridge(app).
bridge: OnePer[web.Application, WebRtcBridge] = OnePer(WebRtcBridge)


async def answer_offer(app: web.Application, session: CallSession, offer_sdp: str) -> str:
    """Answer ``offer_sdp`` for a routed, ringing call; see the module docstring."""
    if session.state != "ringing":
        raise AnswerFailed("call_not_ringing", f"the call is {session.state}, not ringing", 409)
    br = bridge(app)
    try:
        offer = check_offer(offer_sdp)
    except SdpRejected as exc:
        br.refused.labels(exc.reason).inc()
        await session.fail(exc.reason, exc.message)
        raise
    peer: WebRtcPeer | None = None
    try:
        peer = WebRtcPeer(app, session, offer)
        br.add(peer)
        session.on_end.append(_releaser(br, peer))
        return await peer.negotiate()
    except (SdpRejected, AnswerFailed) as exc:
        failed: SdpRejected | AnswerFailed = exc
    except Exception as exc:  # a fault of ours: the call still fails cleanly, with a reason
        log.exception("answering the webrtc offer failed", extra={"call_id": session.id})
        failed = AnswerFailed("webrtc_error", f"the offer could not be answered ({type(exc).__name__})")
    br.refused.labels(failed.reason).inc()
    if peer is not None:
        await peer.close()
    await session.fail(failed.reason, failed.message)
    raise failed


def _releaser(br: WebRtcBridge, peer: WebRtcPeer):
    """The session's on_end hook: the bridge forgets the peer (its media leg releases it)."""

    def release(ended: CallSession) -> None:
        br.remove(peer)

    return release


class WebRtcControl:
    """CallControl of a browser call: the engine can hang up; a browser cannot be transferred
    to a phone number, so a transfer ends the call (the agent has said its goodbye)."""

    def __init__(self, peer: WebRtcPeer) -> None:
        self.peer = peer

    async def hangup(self, reason: str) -> None:
        pass  # the session ends right after this (and closes the peer); it reads the media counts itself

    async def transfer(self, target: str) -> None:
        log.warning("browser calls cannot be transferred; hanging up", extra={"call_id": self.peer.session.id})
        await self.peer.session.hangup("transfer_unsupported")


@dataclass(frozen=True)
class CallTarget:
    agent_id: str | None = None
    number: str | None = None  # E.164


async def _agent_routing(store: Store, tenant_id: str, agent_id: str) -> dict:
    """The shape of ``store.route_by_e164`` for a call to an agent with no number: its tenant,
    the agent and its active version (the route has no number row)."""
    agent = await store.agents.get(agent_id, tenant_id=tenant_id)
    if agent is None:
        raise NotFound(f"agent {agent_id} not found", {"agent_id": agent_id})
    tenant = await store.tenants.get(tenant_id, tenant_id=ALL_TENANTS)
    version = None
    if agent["active_version"] is not None:
        version = await store.agent_versions.find(tenant_id=tenant_id, agent_id=agent_id,
                                                  version=agent["active_version"])
    number = {"id": None, "tenant_id": tenant_id, "pinned_version": None, "e164": None}
    return {"number": number, "tenant": tenant, "agent": agent, "version": version}


class CallRefused(ControlError):
    """The call could not be placed; ``details.reason`` says why (and ``details.call_id`` names
    the failed call when one was opened)."""

    def __init__(self, status: int, reason: str, message: str, call_id: str | None = None) -> None:
        details = {"reason": reason, **({"call_id": call_id} if call_id else {})}
        super().__init__(message, details)
        self.status, self.code = status, ERROR_WORDS.get(status, "error")


async def open_browser_call(app: web.Application, tenant_id: str, target: CallTarget,
                            offer_sdp: str) -> tuple[CallSession, str]:
    """Route a WebRTC call to ``target`` of ``tenant_id`` and answer it: (session, answer SDP)."""
    br = bridge(app)
    try:
        check_offer(offer_sdp)  # refused before any call exists: no row for a malformed request
    except SdpRejected as exc:
        br.refused.labels(exc.reason).inc()
        raise CallRefused(400, exc.reason, exc.message) from None
    store = services(app).control.store
    if target.number is not None:
        routing = await store.route_by_e164(target.number)
        if routing is None or routing["number"]["tenant_id"] != tenant_id:
            raise NotFound(f"number {target.number} not found", {"number": target.number})
    elif target.agent_id is not None:
        routing = await _agent_routing(store, tenant_id, target.agent_id)
    else:
        raise CallRefused(400, "no_target", "name the agent_id or the number to call")
    try:
        session = await services(app).tracker.open_call(
            to_number=target.number, from_number=None, provider="webrtc", tenant_hint=tenant_id, routing=routing)
    except RouteRejected as rejected:
        br.refused.labels(rejected.reason).inc()
        log.info("webrtc call rejected", extra={"reason": rejected.reason, "tenant_id": tenant_id})
        raise CallRefused(REJECTION_STATUS.get(rejected.reason, 409), rejected.reason, rejected.message) from None
    if session.route is not None and session.route.transfer_now:
        await session.emit(TransferRequested(target=session.route.config.escalation_target, reason="after_hours"))
        await session.end("after_hours_transfer")
        raise CallRefused(409, "after_hours", "the agent is closed and transfers calls to a phone line",
                          session.id)
    try:
        answer = await answer_offer(app, session, offer_sdp)
    except SdpRejected as exc:
        raise CallRefused(400, exc.reason, exc.message, session.id) from None
    except AnswerFailed as exc:
        raise CallRefused(exc.status, exc.reason, exc.message, session.id) from None
    peer = br.peers.get(session.id)
    if peer is not None:
        session.control = WebRtcControl(peer)
    return session, answer
