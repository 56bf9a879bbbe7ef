"""The Twilio Media Streams WebSocket of one call.

Inbound: ``connected``, ``start`` (stream token, media format), ``media`` (base64 mu-law,
20 ms), ``dtmf``, ``mark``, ``stop``. Outbound: ``media``, ``mark``, ``clear``, paced by
runtime.pipeline.pacer. The call's ``MediaLeg`` (runtime.calls.media_leg) does the lifecycle:
inbound audio and DTMF go to it decoded, the replies come back through a ``PacedTransport``
(runtime.pipeline.paced_transport) of 20 ms mu-law frames, which ``_send_frame`` writes.

Bad input closes this call's socket with a close code and fails the call; nothing else is
touched. Per frame: one orjson parse, one base64 decode, one mu-law decode, no other objects.

What one peer can hold or push is bounded: a socket must send ``start`` (with a valid stream
token) within ``telephony.media_start_timeout_s`` (4408), sockets not yet started are capped per
client address (429 before the upgrade), inbound audio may run at most ``REALTIME_BURST_S``
ahead of the wall clock since ``start`` (4429), and a message over ``MAX_TEXT_BYTES`` closes
with 4413 (aiohttp refuses it unread; its 1009 is answered as 4413).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from runtime.audio import (
    TELEPHONY_RATE,
    ULAW_FRAME_BYTES,
    ULAW_SILENCE,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)
from runtime.calls.media_leg import LegFailed, MediaLeg
from runtime.calls.session import AWAITING_MEDIA, CallSession
from runtime.events.models import CarrierSkipped
from runtime.pipeline.paced_transport import PacedTransport
from runtime.pipeline.pacer import Frame
from runtime.telephony.services import services
from runtime.telephony.stream_tokens import StreamTokenError
from runtime.telephony.twilio.bridge import TwilioBridge, bridge, media_stream_url, signature_valid
from runtime.telephony.twilio.rest import PLACEHOLDER_ACCOUNT_SID, TwilioRest
from runtime.web.responses import error_response

log = logging.getLogger("voicectl.twilio")

MAX_TEXT_BYTES = 64 * 1024  # a message larger than this is refused unread (4413)
# Outbound frames are dropped, never waited for, while more than this sits unsent in the transport
# (after the kernel's socket buffer is full): a send then could wait for the peer (asyncio's
# low-water mark is 16 KiB) and the shared ticker would stall every call.
MAX_OUTBOUND_BUFFER = 16 * 1024
MAX_PAYLOAD_BYTES = TELEPHONY_RATE  # one second of mu-law in one media message is refused (4413)
_MAX_B64 = (MAX_PAYLOAD_BYTES + 2) // 3 * 4
DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")
# Inbound audio may run this far ahead of the wall clock since start (network jitter, a stall
# caught up); further ahead, the stream is closed (4429).
REALTIME_BURST_S = 1.0
_PCM_BYTES_PER_S = TELEPHONY_RATE * 2  # the leg counts PCM16 at 8 kHz
_BURST_BYTES = int(REALTIME_BURST_S * _PCM_BYTES_PER_S)
# Distinct unknown event names logged per stream (the rest are ignored silently).
MAX_UNKNOWN_EVENT_NAMES = 8
# How long closing waits for the peer's close frame (aiohttp's default is 10 s).
CLOSE_TIMEOUT_S = 2.0

CLOSE_NORMAL = 1000
CLOSE_SERVER_ERROR = 1011
CLOSE_BAD_MESSAGE = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_START_TIMEOUT = 4408
CLOSE_PROTOCOL = 4409
CLOSE_GONE = 4410
CLOSE_TOO_BIG = 4413
CLOSE_MEDIA_FORMAT = 4415
CLOSE_TOO_FAST = 4429
# Closes counted in voicectl_twilio_media_refused_total{reason} (see bridge.MEDIA_REFUSALS).
COUNTED_CLOSES = {CLOSE_START_TIMEOUT: "start_timeout", CLOSE_TOO_FAST: "ahead_of_real_time",
                  CLOSE_TOO_BIG: "oversized_message"}


class StreamAbort(Exception):
    def __init__(self, code: int, reason: str, fail_reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason, self.fail_reason = code, reason, fail_reason


class MediaSocket(web.WebSocketResponse):
    """aiohttp closes a socket whose message is over ``max_msg_size`` with 1009 itself, before the
    stream sees it; this protocol's code for that is 4413."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            code, message = CLOSE_TOO_BIG, f"message larger than {MAX_TEXT_BYTES} bytes".encode()
        return await super().close(code=code, message=message, drain=drain)


class MediaSideControl:
    """CallControl of a call with no Twilio call to act on through the REST API: the stream is the
    call. ``reason``: ``evaluation`` (a synthetic caller) or ``placeholder_credential`` (the tenant's
    account SID is the demo's stand-in, so api.twilio.com would only answer 401). A hang-up lets the
    session end and its leg close the stream; a transfer ends the call ``transferred``, as Twilio's
    redirect would. Each says so in the call's events (``call.carrier_skipped``)."""

    def __init__(self, stream: MediaStream, reason: str) -> None:
        self.stream, self.reason = stream, reason
        self._ending: asyncio.Task[None] | None = None

    async def hangup(self, reason: str) -> None:
        await self._skipped("hangup")  # the session then ends, and its leg closes the stream

    async def transfer(self, target: str) -> None:
        leg = self.stream.leg
        if leg is not None and self._ending is None:
            await self._skipped("transfer")
            # As Twilio's redirect stops the stream: from outside the reply that asked for it (ending
            # the call closes the conversation, which would cancel that reply under its own feet).
            self._ending = asyncio.get_running_loop().create_task(leg.finish("end", "transferred"))

    async def _skipped(self, action: str) -> None:
        session = self.stream.session
        if session is not None:
            await session.emit(CarrierSkipped(action=action, reason=self.reason))


class TwilioControl:
    """CallControl over Twilio's REST API: the engine hangs up or transfers the call."""

    def __init__(self, rest: TwilioRest, call_sid: str) -> None:
        self.rest, self.call_sid = rest, call_sid

    async def hangup(self, reason: str) -> None:
        await self.rest.hangup(self.call_sid)

    async def transfer(self, target: str) -> None:
        await self.rest.transfer(self.call_sid, target)


@dataclass
class StreamCounters:
    marks_received: int = 0
    unknown_events: set[str] = field(default_factory=set)  # names logged once each
    outbound_backlogged: int = 0  # outbound frames and marks dropped because the peer stopped reading


class MediaStream:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse, address: str) -> None:
        self.request = request
        self.app = request.app
        self.ws = ws
        self.bridge: TwilioBridge = bridge(request.app)
        self.address = address  # the client's, as counted in bridge.pending until start
        self._pending = True
        self._started_at = 0.0  # monotonic time of the start message
        self._inbound_allowed = _BURST_BYTES  # PCM bytes; re-computed from the clock only when passed
        self.session: CallSession | None = None
        self.stream_sid = ""
        self.call_sid = ""
        self.counters = StreamCounters()
        # Twilio echoes a mark once the audio before it has played: replies wait for it.
        self.transport = PacedTransport(TELEPHONY_RATE, ULAW_FRAME_BYTES, self._send_frame, on_clear=self._clear,
                                        encode=pcm16_to_ulaw, silence=ULAW_SILENCE,
                                        confirm_s=services(request.app).settings.telephony.twilio.mark_timeout_s)
        self.pacer = self.transport.pacer
        self.leg: MediaLeg | None = None
        self._media_prefix = b""
        self._transport = request.transport

    # The receive loop

    async def run(self) -> None:
        ws = self.ws
        start_timeout = services(self.app).settings.telephony.media_start_timeout_s
        start_by = time.monotonic() + start_timeout
        try:
            while True:
                if self._pending:
                    try:
                        msg = await ws.receive(timeout=max(start_by - time.monotonic(), 0.001))
                    except TimeoutError:
                        raise StreamAbort(CLOSE_START_TIMEOUT, f"no start message within {start_timeout:g} s",
                                          "") from None
                else:
                    msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    if await self._handle(msg.data):
                        break
                elif msg.type is WSMsgType.BINARY:
                    raise StreamAbort(CLOSE_BAD_MESSAGE, "binary frames are not part of the protocol",
                                      "bad_media_message")
                elif msg.type is WSMsgType.ERROR:
                    error = msg.data
                    if isinstance(error, WebSocketError) and error.code == WSCloseCode.MESSAGE_TOO_BIG:
                        raise StreamAbort(CLOSE_TOO_BIG, f"message larger than {MAX_TEXT_BYTES} bytes",
                                          "oversized_media_message")
                    raise StreamAbort(CLOSE_BAD_MESSAGE, "unreadable frame", "bad_media_message")
                else:  # CLOSE, CLOSING, CLOSED
                    break
        except StreamAbort as abort:
            log.info("twilio media stream refused", extra={"code": abort.code, "reason": abort.reason,
                                                            "call_id": self.session.id if self.session else None})
            counted = COUNTED_CLOSES.get(abort.code)
            if counted is not None:
                self.bridge.media_refused.labels(counted).inc()
            await self._close(abort.code, abort.reason)
            if self.leg is not None:
                await self.leg.finish("fail", abort.fail_reason, abort.reason)
            elif self.session is not None and self.session.live and abort.fail_reason:
                await self.session.fail(abort.fail_reason, abort.reason)
        finally:
            session, leg = self.session, self.leg
            if session is not None:
                self.bridge.streams.pop(session.id, None)
            if leg is not None:  # the socket went away without a stop: lost, unless handed over
                transferring = session is not None and session.state == "transferring"
                await leg.finish("end" if transferring else "fail", "stream_lost",
                                 "the media stream closed without a stop message")
            await self.transport.close()
            if not ws.closed:
                await ws.close()
            self.release_pending()

    def release_pending(self) -> None:
        """The socket has started (or is gone): it no longer counts against its address."""
        if self._pending:
            self._pending = False
            self.bridge.pending.release(self.address)

    async def _close(self, code: int, reason: str) -> None:
        if not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode()[:120])

    async def _handle(self, data: str) -> bool:
        """One inbound message; True when the stream is over."""
        try:
            msg = orjson.loads(data)
            event = msg["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise StreamAbort(CLOSE_BAD_MESSAGE, "malformed JSON message", "bad_media_message") from None
        if event == "media":
            self._media(msg)
            return False
        if event == "mark":
            self._mark(msg)
            return False
        if event == "dtmf":
            self._dtmf(msg)
            return False
        if event == "start":
            await self._start(msg)
            return False
        if event == "connected":
            return False
        if event == "stop":
            await self._stop()
            return True
        self._unknown(event)
        return False

    def _unknown(self, event: Any) -> None:
        """An event this version does not know: Twilio may add some, so it is logged (once per name
        and stream, a bounded set) and ignored."""
        name = str(event)[:40]
        seen = self.counters.unknown_events
        if name not in seen and len(seen) < MAX_UNKNOWN_EVENT_NAMES:
            seen.add(name)
            log.info("twilio media stream: unknown event ignored",
                     extra={"event": name, "call_id": self.session.id if self.session else None})

    def _media(self, msg: dict) -> None:
        session = self.session
        if session is None:
            raise StreamAbort(CLOSE_PROTOCOL, "media before start", "bad_media_message")
        try:
            payload = msg["media"]["payload"]
        except (KeyError, TypeError):
            raise StreamAbort(CLOSE_BAD_MESSAGE, "media message without a payload", "bad_media_message") from None
        if not isinstance(payload, str):
            raise StreamAbort(CLOSE_BAD_MESSAGE, "media payload is not a string", "bad_media_message")
        if len(payload) > _MAX_B64:
            raise StreamAbort(CLOSE_TOO_BIG, f"media payload over {MAX_PAYLOAD_BYTES} bytes (1 s)",
                              "oversized_media_message")
        try:
            ulaw = binascii.a2b_base64(payload, strict_mode=True)
        except (binascii.Error, ValueError):
            raise StreamAbort(CLOSE_BAD_MESSAGE, "media payload is not valid base64", "bad_media_message") from None
        pcm = ulaw_to_pcm16(ulaw)
        leg = self.leg
        received = leg.counters.inbound_bytes + len(pcm)  # type: ignore[union-attr]  # set with the session
        if received > self._inbound_allowed:
            self._check_real_time(received)
        leg.audio(pcm)  # type: ignore[union-attr]

    def _check_real_time(self, received: int) -> None:
        """Inbound audio (the leg's count) against the wall clock, read only when the last allowance
        is used up (about once a second of audio at real time): per frame one addition and one
        comparison."""
        allowed = int((time.monotonic() - self._started_at) * _PCM_BYTES_PER_S) + _BURST_BYTES
        if received > allowed:
            raise StreamAbort(CLOSE_TOO_FAST, f"inbound audio more than {REALTIME_BURST_S:g} s ahead of real time",
                              "media_ahead_of_real_time")
        self._inbound_allowed = allowed

    def _mark(self, msg: dict) -> None:
        try:
            name = msg["mark"]["name"]
        except (KeyError, TypeError):
            raise StreamAbort(CLOSE_BAD_MESSAGE, "mark message without a name", "bad_media_message") from None
        self.counters.marks_received += 1
        self.transport.confirmed(str(name)[:200])

    def _dtmf(self, msg: dict) -> None:
        if self.leg is None:
            raise StreamAbort(CLOSE_PROTOCOL, "dtmf before start", "bad_media_message")
        try:
            digit = msg["dtmf"]["digit"]
        except (KeyError, TypeError):
            raise StreamAbort(CLOSE_BAD_MESSAGE, "dtmf message without a digit", "bad_media_message") from None
        if not isinstance(digit, str) or len(digit) != 1 or digit not in DTMF_DIGITS:
            raise StreamAbort(CLOSE_BAD_MESSAGE, "dtmf digit is not one of 0-9 * # A-D", "bad_media_message")
        self.leg.dtmf(digit.upper())

    async def _start(self, msg: dict) -> None:
        if self.session is not None:
            raise StreamAbort(CLOSE_PROTOCOL, "a second start message", "bad_media_message")
        self._started_at = time.monotonic()  # audio queued behind the start counts from here
        start = msg.get("start")
        if not isinstance(start, dict):
            raise StreamAbort(CLOSE_BAD_MESSAGE, "start message without a start object", "bad_media_message")
        params = start.get("customParameters")
        token = params.get("token") if isinstance(params, dict) else None
        try:
            call_id = await self.bridge.tokens.consume(token)
        except StreamTokenError as exc:
            raise StreamAbort(exc.code, exc.reason, "") from None
        self.release_pending()  # authenticated
        # Cluster mode: another instance may have answered the voice webhook; the token is enough.
        session = services(self.app).tracker.get(call_id) or await self.bridge.take_over(self.app, call_id)
        if session is None or session.state not in AWAITING_MEDIA:
            raise StreamAbort(CLOSE_GONE, "the call is no longer waiting for its stream", "")
        self.session = session
        await self._check_signature(session)
        fmt = start.get("mediaFormat")
        if not (isinstance(fmt, dict) and fmt.get("encoding") == "audio/x-mulaw"
                and str(fmt.get("sampleRate")) == "8000" and str(fmt.get("channels", 1)) == "1"):
            raise StreamAbort(CLOSE_MEDIA_FORMAT, "media format must be audio/x-mulaw, 8000 Hz, mono",
                              "unsupported_media_format")
        sid = start.get("streamSid") or msg.get("streamSid")
        if not isinstance(sid, str) or not sid or len(sid) > 64 or '"' in sid or "\\" in sid:
            raise StreamAbort(CLOSE_BAD_MESSAGE, "start message without a valid streamSid", "bad_media_message")
        self.stream_sid = sid
        self.call_sid = str(start.get("callSid") or session.provider_call_id or "")
        self._media_prefix = b'{"event":"media","streamSid":"' + sid.encode() + b'","media":{"payload":"'
        session.control = await self._control(session, start)
        self.bridge.streams[session.id] = self
        leg = self.leg = MediaLeg(session, TELEPHONY_RATE, self.transport,
                                  services(self.app).conversations.conversation,
                                  carrier_counts=self._carrier_counts, release=self._release)
        try:
            await leg.open()
        except LegFailed as failed:
            raise StreamAbort(CLOSE_SERVER_ERROR, failed.message, failed.reason) from None
        await leg.connect()

    async def _check_signature(self, session: CallSession) -> None:
        """With telephony.twilio.require_stream_signature: the upgrade's X-Twilio-Signature over
        the stream URL, with the call's tenant's auth token (known only now, from the token)."""
        if not services(self.app).settings.telephony.twilio.require_stream_signature:
            return
        if session.evaluation is not None:  # a synthetic call signs with its pin (runtime.telephony.twilio.evals)
            token = session.evaluation.signing_key
        else:
            token = await services(self.app).control.credentials.secret(session.tenant_id, "twilio")
        if not token or not signature_valid(token, media_stream_url(self.request), (),
                                            self.request.headers.get("X-Twilio-Signature")):
            self.bridge.refused.labels("bad_signature").inc()
            raise StreamAbort(CLOSE_FORBIDDEN, "invalid or missing X-Twilio-Signature on the upgrade",
                              "bad_stream_signature")

    async def _control(self, session: CallSession, start: dict) -> Any:
        if session.evaluation is not None:  # no Twilio call behind it: the stream is the call
            return MediaSideControl(self, "evaluation")
        control = services(self.app).control
        token = await control.credentials.secret(session.tenant_id, "twilio")
        cred = await control.store.credentials.find(tenant_id=session.tenant_id, provider="twilio")
        account_sid = (cred or {}).get("fields", {}).get("account_sid") or start.get("accountSid")
        if account_sid == PLACEHOLDER_ACCOUNT_SID:  # the demo's stand-in: no real Twilio account to ask
            return MediaSideControl(self, "placeholder_credential")
        if not token or not account_sid or not self.call_sid:
            return None
        api = services(self.app).settings.telephony.twilio.api_base_url
        return TwilioControl(TwilioRest(api, account_sid, token), self.call_sid)

    def _carrier_counts(self) -> dict[str, Any]:
        stats = self.pacer.stats
        return {"outbound_frames": stats.frames_sent, "outbound_late": stats.late,
                "outbound_backlogged": self.counters.outbound_backlogged}

    async def _stop(self) -> None:
        if self.leg is not None:  # the caller hung up (or Twilio handed the call over)
            await self.leg.finish("end", "caller_hangup", hangup_by="caller")

    # Outbound

    async def _send_frame(self, frame: Frame) -> None:
        """Called by the loop's shared ticker for every call in one iteration: must not wait."""
        ws = self.ws
        if ws.closed:
            await self.pacer.close()
            return
        payload = frame.payload
        transport = self._transport
        if transport is None or transport.get_write_buffer_size() > MAX_OUTBOUND_BUFFER:
            self.counters.outbound_backlogged += 1  # the peer is not reading: drop, never block
            return
        try:
            if payload is None:
                await ws.send_frame(orjson.dumps({"event": "mark", "streamSid": self.stream_sid,
                                                  "mark": {"name": frame.mark}}), WSMsgType.TEXT)
                return
            encoded = frame.encoded or base64.b64encode(payload)
            if encoded.__class__ is str:
                encoded = encoded.encode()
            await ws.send_frame(b"".join((self._media_prefix, encoded, b'"}}')), WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            self.pacer.closed = True
            return
        self.transport.sent(frame.generation)
        leg = self.leg
        if leg is not None and leg.session.audio_sinks:
            leg.sent(ulaw_to_pcm16(frame.payload))

    async def _clear(self, dropped: int, sent: bool) -> None:
        """Tell Twilio to drop what it buffered, only when there may be any: frames dropped here, a
        mark not yet echoed, or audio sent since the last clear."""
        unheard = self.pacer.stats.marks_sent > self.counters.marks_received
        if (dropped or unheard or sent) and not self.ws.closed:
            await self.ws.send_str(orjson.dumps({"event": "clear", "streamSid": self.stream_sid}).decode())

    async def _release(self, reason: str) -> None:
        # The call ended (whoever ended it): the archive is written; close the socket.
        await self._close(CLOSE_NORMAL, f"call {self.session.state if self.session else reason}")


async def serve(request: web.Request) -> web.StreamResponse:
    # aiohttp refuses a message of max_msg_size bytes or more before buffering it.
    ws = MediaSocket(max_msg_size=MAX_TEXT_BYTES + 1, autoping=True, compress=False, timeout=CLOSE_TIMEOUT_S)
    if not ws.can_prepare(request).ok:
        return error_response(426, "this is the Twilio Media Streams WebSocket: connect with a WebSocket upgrade",
                              error="upgrade_required", headers={"Upgrade": "websocket"})
    br = bridge(request.app)
    address = br.client_addresses.of(request)
    refused_by = br.pending.admit(address)
    if refused_by is not None:
        br.media_refused.labels("pending_limit").inc()
        retry = math.ceil(services(request.app).settings.telephony.media_start_timeout_s)
        whose, limit = ("this address", br.pending.cap) if refused_by == "address" else ("all", br.pending.total_cap)
        refusal = error_response(
            429, f"too many media sockets from {whose} are waiting for their start message",
            {"limit": limit, "scope": refused_by, "retry_after": retry}, error="too_many_pending_sockets",
            headers={"Retry-After": str(retry)},
        )
        refusal.force_close()  # nor is the connection kept open for another try
        return refusal
    stream = MediaStream(request, ws, address)
    try:
        await ws.prepare(request)
        await stream.run()
    finally:
        stream.release_pending()
    return ws
