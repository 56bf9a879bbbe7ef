"""A Twilio-protocol test caller: what Twilio does for an inbound call, against our runtime.

It signs the voice webhook as Twilio does, posts it, reads the TwiML, follows
``<Connect><Stream>`` to the WebSocket, sends ``connected`` and ``start`` (with the
``<Parameter>`` values as customParameters), streams 20 ms mu-law frames from a WAV (any rate)
in real time or faster, sends DTMF and ``stop``, and collects what the runtime sends back
(decoded to PCM16, with arrival times) and its marks. Used by the tests, the benchmarks and
later ``voicectl call``.

For an outbound call the runtime placed, it is Twilio's side of the answered call: ``answer``
asks the ``Url`` given to Calls.create for TwiML (a signed voice request with ``Direction``
``outbound-api``), ``post_url`` posts any other signed callback to a URL the runtime gave, and the
same ``open_stream`` carries the callee's audio (``beep``: the tone a voicemail greeting ends with).
"""

from __future__ import annotations

import asyncio
import base64
import math
import secrets
import struct
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson

from runtime.audio import Audio, read_wav, ulaw_frames, ulaw_to_pcm16
from runtime.telephony.twilio.bridge import twilio_signature

FRAME_S = 0.020


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def beep(seconds: float = 0.5, hz: float = 1000.0, rate: int = 8000) -> Audio:
    """A sine tone: the beep that ends a voicemail greeting."""
    n = int(seconds * rate)
    return Audio(b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / rate))) for i in range(n)),
                 rate)


@dataclass
class TwimlAnswer:
    status: int
    text: str
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    verbs: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return self.stream_url is None


def parse_twiml(status: int, text: str) -> TwimlAnswer:
    answer = TwimlAnswer(status, text)
    if status != 200:
        return answer
    root = ET.fromstring(text)
    answer.verbs = [child.tag for child in root]
    stream = root.find("./Connect/Stream")
    if stream is not None:
        answer.stream_url = stream.get("url")
        answer.parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return answer


@dataclass
class CallResult:
    call_sid: str
    answer: TwimlAnswer
    stream_sid: str = ""
    frames_sent: int = 0
    frames_received: int = 0
    received_pcm: bytearray = field(default_factory=bytearray)
    arrivals: list[float] = field(default_factory=list)  # monotonic arrival time of each outbound frame
    marks: list[str] = field(default_factory=list)
    mark_echoes: dict[str, float] = field(default_factory=dict)  # mark name -> monotonic time echoed
    clears: int = 0
    close_code: int | None = None
    close_reason: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def received_s(self) -> float:
        return len(self.received_pcm) / 2 / 8000

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at


class CallerStream:
    """The WebSocket side of one call; raw access (``send_raw``) for protocol tests.

    It plays what it receives as Twilio does: each 20 ms frame after the ones before it, starting
    no earlier than ``playout_delay_s`` after it arrived (Twilio's jitter buffer and the network),
    and echoes a mark only once the audio queued before it has played; a ``clear`` drops what is
    unplayed and echoes the pending marks at once (twilio.com/docs/voice/media-streams/
    websocket-messages: "mark", "clear")."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, result: CallResult, playout_delay_s: float = 0.0) -> None:
        self.ws = ws
        self.result = result
        self.closed = asyncio.Event()
        self.first_media = asyncio.Event()
        self.mark_seen = asyncio.Event()
        self.playout_delay_s = playout_delay_s
        self._seq = 0
        self._chunk = 0
        self._play_end = 0.0  # monotonic time the audio received so far finishes playing
        self._pending_marks: dict[str, asyncio.TimerHandle] = {}
        self._echoes: set[asyncio.Task[None]] = set()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def _next(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def send(self, message: dict) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def connected(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    async def start(self, parameters: dict[str, str], account_sid: str, call_sid: str,
                    media_format: dict | None = None) -> None:
        self.result.stream_sid = new_sid("MZ")
        fmt = media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        await self.send({
            "event": "start", "sequenceNumber": self._next(), "streamSid": self.result.stream_sid,
            "start": {"streamSid": self.result.stream_sid, "accountSid": account_sid, "callSid": call_sid,
                      "tracks": ["inbound"], "customParameters": parameters, "mediaFormat": fmt},
        })

    async def media(self, ulaw: bytes) -> None:
        self._chunk += 1
        sid = self.result.stream_sid
        await self.ws.send_str(
            '{"event":"media","sequenceNumber":"' + self._next() + '","streamSid":"' + sid
            + '","media":{"track":"inbound","chunk":"' + str(self._chunk) + '","timestamp":"'
            + str((self._chunk - 1) * 20) + '","payload":"' + base64.b64encode(ulaw).decode() + '"}}'
        )
        self.result.frames_sent += 1

    async def stream(self, frames: Sequence[bytes], speed: float = 1.0, stop_when_closed: bool = True) -> None:
        """Frames on an absolute clock (``speed`` > 1 sends faster; 0 or less: as fast as possible)."""
        period = FRAME_S / speed if speed > 0 else 0.0
        anchor = time.monotonic()
        for n, frame in enumerate(frames):
            if stop_when_closed and self.closed.is_set():
                return
            if period:
                delay = anchor + n * period - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            try:
                await self.media(frame)
            except (ConnectionError, RuntimeError):
                return

    async def dtmf(self, digit: str) -> None:
        await self.send({"event": "dtmf", "sequenceNumber": self._next(), "streamSid": self.result.stream_sid,
                         "dtmf": {"track": "inbound_track", "digit": digit}})

    async def mark(self, name: str) -> None:
        await self.send({"event": "mark", "sequenceNumber": self._next(), "streamSid": self.result.stream_sid,
                         "mark": {"name": name}})

    async def stop(self, account_sid: str, call_sid: str) -> None:
        await self.send({"event": "stop", "sequenceNumber": self._next(), "streamSid": self.result.stream_sid,
                         "stop": {"accountSid": account_sid, "callSid": call_sid}})

    async def _read(self) -> None:
        result = self.result
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = orjson.loads(msg.data)
                event = data.get("event")
                if event == "media":
                    now = time.monotonic()
                    result.arrivals.append(now)
                    pcm = ulaw_to_pcm16(base64.b64decode(data["media"]["payload"]))
                    result.received_pcm += pcm
                    result.frames_received += 1
                    self._play_end = max(self._play_end, now + self.playout_delay_s) + len(pcm) / 2 / 8000
                    self.first_media.set()
                elif event == "mark":
                    name = data["mark"]["name"]
                    result.marks.append(name)
                    self.mark_seen.set()
                    self._echo_when_played(name)
                elif event == "clear":
                    result.clears += 1
                    self._play_end = time.monotonic()
                    for name in list(self._pending_marks):
                        self._pending_marks.pop(name).cancel()
                        self._echo(name)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            result.close_code = self.ws.close_code
            ext = self.ws.exception()
            result.close_reason = str(ext) if ext else ""
            result.ended_at = time.monotonic()
            self.closed.set()

    def _echo_when_played(self, name: str) -> None:
        delay = self._play_end - time.monotonic()
        if delay <= 0:
            self._echo(name)
        else:
            self._pending_marks[name] = asyncio.get_running_loop().call_later(delay, self._echo_later, name)

    def _echo_later(self, name: str) -> None:
        self._pending_marks.pop(name, None)
        self._echo(name)

    def _echo(self, name: str) -> None:
        self.result.mark_echoes[name] = time.monotonic()
        if not self.ws.closed:
            task = asyncio.get_running_loop().create_task(self._send_echo(name))
            self._echoes.add(task)
            task.add_done_callback(self._echoes.discard)

    async def _send_echo(self, name: str) -> None:
        try:
            await self.mark(name)
        except (ConnectionError, RuntimeError):
            pass  # the call ended meanwhile

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.closed.wait(), 5)


class TwilioCaller:
    def __init__(self, base_url: str, account_sid: str, auth_token: str, *, public_url: str | None = None,
                 http: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.public_url = (public_url or base_url).rstrip("/")
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._http = http
        self._own_http = http is None

    async def __aenter__(self) -> TwilioCaller:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    def sign(self, path: str, params: Iterable[tuple[str, str]]) -> str:
        return twilio_signature(self.auth_token, self.public_url + path, params)

    async def post_signed(self, path: str, params: dict[str, str], *, signature: str | None = None,
                          sign: bool = True) -> tuple[int, str]:
        headers = {}
        if sign:
            headers["X-Twilio-Signature"] = signature or self.sign(path, params.items())
        async with self.http.post(self.base_url + path, data=params, headers=headers) as resp:
            return resp.status, await resp.text()

    def voice_params(self, to: str, from_: str, call_sid: str) -> dict[str, str]:
        return {"CallSid": call_sid, "AccountSid": self.account_sid, "From": from_, "To": to,
                "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}

    async def dial(self, to: str, from_: str = "+15550001111", call_sid: str | None = None) -> tuple[str, TwimlAnswer]:
        call_sid = call_sid or new_sid("CA")
        status, text = await self.post_signed("/webhooks/twilio/voice", self.voice_params(to, from_, call_sid))
        return call_sid, parse_twiml(status, text)

    async def stream_status(self, call_sid: str, event: str, error: str | None = None, stream_sid: str = "") -> int:
        """Twilio's <Stream statusCallback> (twilio.com/docs/voice/twiml/stream#statuscallback)."""
        params = {"AccountSid": self.account_sid, "CallSid": call_sid, "StreamSid": stream_sid or new_sid("MZ"),
                  "StreamName": stream_sid or "stream", "StreamEvent": event,
                  "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if error is not None:
            params["StreamError"] = error
        code, _ = await self.post_signed("/webhooks/twilio/stream-status", params)
        return code

    async def status(self, call_sid: str, status: str, to: str, from_: str = "+15550001111") -> int:
        params = {"CallSid": call_sid, "AccountSid": self.account_sid, "From": from_, "To": to,
                  "Direction": "inbound", "CallStatus": status}
        code, _ = await self.post_signed("/webhooks/twilio/status", params)
        return code

    def reachable(self, url: str) -> str:
        """A URL the runtime gave Twilio, pointed at the server we actually reach."""
        parts = urlsplit(url)
        return self.base_url + parts.path + (f"?{parts.query}" if parts.query else "")

    async def post_url(self, url: str, params: dict[str, str]) -> tuple[int, str]:
        """POST a signed form to an absolute URL the runtime gave Twilio: signed over that URL,
        query included, as Twilio signs it."""
        headers = {"X-Twilio-Signature": twilio_signature(self.auth_token, url, params.items())}
        async with self.http.post(self.reachable(url), data=params, headers=headers) as resp:
            return resp.status, await resp.text()

    def outbound_voice_params(self, call_sid: str, from_: str, to: str) -> dict[str, str]:
        """Twilio's request to an outbound call's Url once the callee answers."""
        return {"CallSid": call_sid, "AccountSid": self.account_sid, "From": from_, "To": to,
                "CallStatus": "in-progress", "Direction": "outbound-api", "ApiVersion": "2010-04-01"}

    async def answer(self, url: str, call_sid: str, from_: str, to: str) -> TwimlAnswer:
        status, text = await self.post_url(url, self.outbound_voice_params(call_sid, from_, to))
        return parse_twiml(status, text)

    def ws_url(self, stream_url: str) -> str:
        """The stream URL of the TwiML, pointed at the server we actually reach (public_url may be a proxy)."""
        parts = urlsplit(stream_url)
        base = urlsplit(self.base_url)
        scheme = "wss" if base.scheme == "https" else "ws"
        return f"{scheme}://{base.netloc}{parts.path}"

    async def open_stream(self, call_sid: str, answer: TwimlAnswer, media_format: dict | None = None,
                          parameters: dict[str, str] | None = None, playout_delay_s: float = 0.0) -> CallerStream:
        assert answer.stream_url, f"no <Stream> in the TwiML: {answer.text}"
        # Twilio signs the upgrade over the stream URL of the TwiML (no parameters).
        signature = twilio_signature(self.auth_token, answer.stream_url)
        ws = await self.http.ws_connect(self.ws_url(answer.stream_url), autoping=True, max_msg_size=0,
                                        headers={"X-Twilio-Signature": signature})
        result = CallResult(call_sid, answer, started_at=time.monotonic())
        leg = CallerStream(ws, result, playout_delay_s)
        await leg.connected()
        await leg.start(answer.parameters if parameters is None else parameters, self.account_sid, call_sid,
                        media_format)
        return leg

    async def call(self, to: str, *, audio: Audio | str | Path | None = None, seconds: float | None = None,
                   speed: float = 1.0, dtmf: Sequence[str] = (), wait_for_mark: str | None = None,
                   hangup: bool = True, from_: str = "+15550001111", timeout: float = 30.0) -> CallResult:
        """A whole call: dial, stream ``audio`` (or ``seconds`` of silence), optional DTMF, then stop."""
        call_sid, answer = await self.dial(to, from_)
        if answer.rejected:
            return CallResult(call_sid, answer)
        leg = await self.open_stream(call_sid, answer)
        if isinstance(audio, (str, Path)):
            audio = read_wav(audio)
        frames = ulaw_frames(audio) if audio is not None else []
        if seconds is not None:
            wanted = int(seconds / FRAME_S)
            frames = (frames * (wanted // max(1, len(frames)) + 1))[:wanted] if frames else [b"\xff" * 160] * wanted
        await leg.stream(frames, speed)
        for digit in dtmf:
            await leg.dtmf(digit)
        if wait_for_mark:
            deadline = time.monotonic() + timeout
            while wait_for_mark not in leg.result.marks and not leg.closed.is_set():
                leg.mark_seen.clear()
                try:
                    await asyncio.wait_for(leg.mark_seen.wait(), max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
        if hangup and not leg.closed.is_set():
            await leg.stop(self.account_sid, call_sid)
        await leg.wait_closed(timeout)
        return leg.result
