"""One WebRTC call: the aiortc peer connection, wired to the call's conversation.

Inbound: the caller's RTP packets are decoded in the event loop as they arrive
(runtime.telephony.webrtc.inbound) into PCM16 mono at the pipeline rate, for the call's
``MediaLeg`` (runtime.calls.media_leg: the lifecycle, the recording taps, the conversation).
Outbound: the agent's audio leaves through ``WebRtcTransport`` and ``AgentAudioTrack``, paced by
the loop's media clock (runtime.telephony.webrtc.media).

When ICE and DTLS are up the call is connected and the conversation starts (the greeting).
The call ends with a reason when the peer hangs up (a ``hangup`` message on the data channel,
an RTCP BYE, a DTLS close), when ICE or DTLS fail (``ice_failed``), when the media never comes
up (``ice_timeout``) or stops (``peer_silent``; both watched by the bridge), or when a decoded
frame cannot be used (``bad_media``): that call only. When the session ends for any reason,
the peer is closed (the session's ``on_end``): this module owns the peer's lifetime.

A peer that opens a data channel labelled ``voicectl`` (the /call page) receives the call's
events as JSON text messages ``{"type": "event", "event": {...}}`` (transcripts, latency, state)
and ``{"type": "bye", "reason": ...}`` at the end; it may send ``{"type": "hangup"}`` and
``{"type": "dtmf", "digit": "5"}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdatachannel import RTCDataChannel

from runtime.calls.media_leg import LegFailed, MediaLeg
from runtime.calls.session import CallSession
from runtime.events.bus import Subscription
from runtime.telephony.services import services
from runtime.telephony.webrtc.codecs import agent_encoder
from runtime.telephony.webrtc.ice import add_host_candidates, rtc_configuration, with_candidates
from runtime.telephony.webrtc.inbound import CallerAudio
from runtime.telephony.webrtc.media import AgentAudioTrack, WebRtcTransport
from runtime.telephony.webrtc.sdp import CODEC_PREFERENCE, OfferInfo, SdpRejected

if TYPE_CHECKING:
    from aiohttp import web


log = logging.getLogger("voicectl.webrtc")

CHANNEL_LABEL = "voicectl"
# What the /call page is shown of its own call.
PAGE_TOPICS = ["transcript.*", "turn.latency", "speech.*", "agent.interrupted", "call.*", "voice.call.*",
               "tool.called", "dtmf.received", "transfer.requested"]
PAGE_QUEUE = 500
MAX_CHANNEL_MESSAGE = 4096
DTMF_DIGITS = frozenset("0123456789*#ABCD")
BYE_FLUSH_S = 0.2  # the bye message gets this long to leave before the peer connection closes


class AnswerFailed(Exception):
    """The call could not be answered; it has been failed with ``reason`` (voice.call.failed)."""

    def __init__(self, reason: str, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.reason, self.message, self.status = reason, message, status


@cache
def _codec_preferences() -> list[Any]:
    capabilities = {c.mimeType.split("/", 1)[1].lower(): c for c in RTCRtpSender.getCapabilities("audio").codecs}
    return [capabilities[name] for name in CODEC_PREFERENCE if name in capabilities]


class WebRtcPeer:
    def __init__(self, app: web.Application, session: CallSession, offer: OfferInfo) -> None:
        self.app = app
        self.session = session
        self.offer = offer
        settings = services(app).settings.telephony.webrtc
        self.settings = settings
        self.pc = RTCPeerConnection(rtc_configuration(settings))
        encoder = agent_encoder(offer.codec, settings.opus_pipeline_rate, settings.opus)
        self.rate = encoder.rate
        self.transport = WebRtcTransport(encoder)
        self.track = AgentAudioTrack(self.transport)
        self.track.on_failure = self._bad_outbound
        self.leg = MediaLeg(session, encoder.rate, self.transport, services(app).conversations.conversation,
                            carrier_counts=self._carrier_counts, release=self._release)
        self.transport.on_audio = self.leg.sent
        self.inbound = CallerAudio(offer.codec, offer.payload_type, encoder.rate, self._deliver, self._bad_audio)
        self.channel: RTCDataChannel | None = None
        self.subscription: Subscription | None = None
        self.connected = False
        self.closed = False
        self.created_at = self._connected_at = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None

    # Setup (runtime.telephony.webrtc.bridge.answer_offer)

    async def negotiate(self) -> str:
        """The answer SDP; the conversation is built but starts only once the media is up."""
        pc = self.pc
        transceiver = pc.addTransceiver(self.track, direction="sendrecv")
        transceiver.setCodecPreferences(_codec_preferences())
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        pc.on("datachannel", self._on_channel)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=self.offer.sdp, type="offer"))
        except Exception as exc:  # aiortc refuses what our checks let through
            self._check_open()
            log.info("webrtc offer refused by aiortc", extra={"call_id": self.session.id, "error": str(exc)[:200]})
            raise SdpRejected("bad_sdp", f"the offer cannot be answered: {str(exc)[:200] or type(exc).__name__}") \
                from None
        try:
            self.inbound.attach(transceiver.receiver)
            extra = await add_host_candidates(pc, list(self.settings.host_candidates))
            if self.offer.data_channel:
                self.subscription = services(self.app).bus.subscribe(Subscription(
                    self.session.tenant_id, list(PAGE_TOPICS), call_id=self.session.id,
                    queue=asyncio.Queue(PAGE_QUEUE)))
        except Exception as exc:
            self._check_open()
            log.exception("setting up the webrtc peer failed", extra={"call_id": self.session.id})
            raise AnswerFailed("webrtc_error", f"the peer could not be set up ({type(exc).__name__})") from exc
        try:
            await self.leg.open()
        except LegFailed as failed:
            self._check_open()
            raise AnswerFailed(failed.reason, failed.message, 503) from None
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            self._check_open()
            log.exception("creating the webrtc answer failed", extra={"call_id": self.session.id})
            raise AnswerFailed("webrtc_error", f"the answer could not be created ({type(exc).__name__})") from exc
        self._check_open()
        return with_candidates(pc.localDescription.sdp, extra)

    def _check_open(self) -> None:
        """The call ended (and closed this peer) while it was being answered."""
        if self.closed or not self.session.live:
            raise AnswerFailed("call_ended", f"the call {self.session.state} while it was being answered", 409)

    # Peer events

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = self._spawn(self._read(track))

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and not self.connected:
            self.connected = True
            self._spawn(self._start())
        elif state == "failed":
            self._spawn(self.finish("fail", "ice_failed", "ICE or DTLS failed: the media path to the caller broke"))
        elif state == "closed" and not self.closed:  # the caller closed DTLS
            self._spawn(self.finish("end", "caller_hangup", hangup_by="caller"))

    def _on_channel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL_LABEL or self.channel is not None:
            return
        self.channel = channel
        channel.on("message", self._on_message)
        if self.subscription is not None:
            self._spawn(self._forward_events(channel, self.subscription))

    def _on_message(self, message: str | bytes) -> None:
        if not isinstance(message, str) or len(message) > MAX_CHANNEL_MESSAGE:
            return  # not ours to act on; the call goes on
        try:
            data = orjson.loads(message)
            kind = data.get("type") if isinstance(data, dict) else None
        except orjson.JSONDecodeError:
            return
        if kind == "hangup":
            self._spawn(self.finish("end", "caller_hangup", hangup_by="caller"))
        elif kind == "dtmf":
            digit = data.get("digit")
            if isinstance(digit, str) and len(digit) == 1 and digit.upper() in DTMF_DIGITS:
                self.leg.dtmf(digit.upper())

    async def _start(self) -> None:
        session = self.session
        if self.closed or session.state != "ringing" or self.leg.conversation is None:
            return
        self._connected_at = time.monotonic()
        try:
            await self.leg.connect()
        except Exception:
            # A spawned task: unhandled, the call would stay "ringing" with the media up.
            log.exception("starting the webrtc call failed", extra={"call_id": session.id})
            await self.finish("fail", "pipeline_unavailable", "the agent could not be started")

    # Media

    @property
    def last_rx(self) -> float:
        """time.monotonic() of the caller's last audio packet (or of the connection, before any)."""
        return max(self._connected_at, self.inbound.last_packet)

    def _deliver(self, pcm: bytes) -> None:
        """One frame of the caller's audio (called in the event loop by CallerAudio)."""
        if self.closed:
            return
        try:
            self.leg.audio(pcm)
        except Exception as exc:  # never into aiortc's receive loop: that would end the transport
            self._bad_audio(exc)

    def _bad_audio(self, exc: Exception) -> None:
        log.warning("unusable webrtc audio", extra={"call_id": self.session.id, "error": str(exc)[:200]})
        self._spawn(self.finish("fail", "bad_media", f"unusable audio from the caller: {exc}"[:300]))

    def _bad_outbound(self, exc: Exception) -> None:
        self._spawn(self.finish("fail", "media_error", f"the agent's audio could not be sent: {exc}"[:300]))

    async def _read(self, track: MediaStreamTrack) -> None:
        """The caller's frames never come this way (see CallerAudio): this only waits for the
        track to end, which aiortc signals on the caller's RTCP BYE."""
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                break
        if not self.closed:
            self._spawn(self.finish("end", "caller_hangup", hangup_by="caller"))

    # The page's events

    async def _forward_events(self, channel: RTCDataChannel, subscription: Subscription) -> None:
        if channel.readyState == "connecting":
            opened = asyncio.get_running_loop().create_future()
            channel.once("open", lambda: opened.done() or opened.set_result(None))
            await opened
        while channel.readyState == "open":
            event = await subscription.queue.get()
            try:
                channel.send(orjson.dumps({"type": "event", "event": event.to_dict()}).decode())
            except Exception:  # the channel closed under us
                return

    # The end

    async def finish(self, kind: str, reason: str, message: str | None = None, hangup_by: str | None = None) -> None:
        """The media side ended the call (runtime.calls.media_leg.MediaLeg.finish): the first
        reason wins (a hang-up message and the DTLS close that follows it are one hang-up)."""
        await self.leg.finish(kind, reason, message, hangup_by)

    def _carrier_counts(self) -> dict[str, Any]:
        stats, inbound = self.transport.stats, self.inbound.stats
        return {
            "codec": self.offer.codec, "inbound_packets": inbound.packets, "inbound_missing": inbound.missing,
            "inbound_late": inbound.late, "outbound_frames": stats.frames_sent,
            "outbound_silence_frames": stats.silence_sent, "outbound_late": stats.late,
            "outbound_backlogged": stats.backlogged, "outbound_dropped": stats.dropped,
            "outbound_max_lag_ms": round(stats.max_lag_s * 1000, 1),
        }

    async def close(self, reason: str | None = None) -> None:
        """Release everything of this call (idempotent); the session's ``on_end`` does it too."""
        await self.leg.release(reason)

    async def _release(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.track.stop()
        if self.subscription is not None:
            services(self.app).bus.unsubscribe(self.subscription)
        await self._say_bye(reason)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        try:
            await self.pc.close()
        except Exception:
            log.exception("closing the peer connection failed", extra={"call_id": self.session.id})

    async def _say_bye(self, reason: str) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        try:
            channel.send(orjson.dumps({"type": "bye", "reason": reason}).decode())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + BYE_FLUSH_S
            while channel.bufferedAmount and loop.time() < deadline:
                await asyncio.sleep(0.02)
        except Exception:
            return

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
