"""Twilio's side of the calls our runtime places, for the tests: ``Calls.create`` as Twilio documents
it, then each call's progress against the runtime, signed as Twilio signs.

``POST /2010-04-01/Accounts/{AC}/Calls.json`` (Basic auth) is checked as Twilio checks it (``To``
and ``From`` required, ``Url`` or ``Twiml``, the documented values of ``StatusCallbackEvent``,
``MachineDetection``, ``AsyncAmd``, ``Timeout`` at most 600) and answered 201 with the call
resource (``sid``, ``status`` ``queued``, ``direction`` ``outbound-api``). Then the call plays out
(twilio.com/docs/voice/api/call-resource, .../answering-machine-detection):

- progress to ``StatusCallback`` for the events asked: ``initiated``, ``ringing``, ``answered``
  (``CallStatus`` ``in-progress``) and ``completed`` with the final status, each with
  ``SequenceNumber`` (from 0), ``CallbackSource`` ``call-progress-events``, ``Timestamp`` (RFC
  2822), and in the terminal one ``CallDuration`` and ``SipResponseCode``;
- the callee (``Callee``): ``busy`` (486), ``no-answer`` after ``Timeout`` (487), ``failed`` (404),
  or it answers: the ``Url`` is asked for TwiML (a signed voice request, ``Direction``
  ``outbound-api``), its ``<Connect><Stream>`` opened, and a ``human`` says its lines (the first at
  once, each next one when the agent has been quiet) and hangs up after the last; a ``machine``
  plays its greeting ending in a beep, then keeps what it hears (the voicemail) until hung up;
- answering-machine detection (``AsyncAmd``) posts ``AnsweredBy`` and
  ``MachineDetectionDuration`` to ``AsyncAmdStatusCallback``: for a human once its first words and
  the 1200 ms ``MachineDetectionSpeechEndThreshold`` have passed (``human``); for a machine with
  ``DetectMessageEnd`` when its greeting ends at the beep (``machine_end_beep``), with ``Enable``
  after 2400 ms of speech (``MachineDetectionSpeechThreshold``: ``machine_start``). The timing is
  this peer's model; Twilio documents only the thresholds' defaults;
- a REST update ``Status=completed`` ends an answered call (the stream gets ``stop``, then
  ``completed`` is posted), ``Status=canceled`` one still ringing (``completed`` with
  ``CallStatus`` ``canceled``); one still queued gets no callbacks at all.

Out of order, as a carrier's separate requests arrive: ``Callee.delays`` holds back one callback
(``initiated``, ``ringing``, ``answered``, ``completed``, ``amd``) or the ``stop`` message,
``detect_after_end`` the detection result until after ``completed``;
``create_delay_s`` holds the 201 while the progress goes out (``create_after_twiml``: until the
call was answered and its TwiML read); ``stream_delay_s`` opens the media
late (after the detection result).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import MultiDict

from runtime.audio import Audio, ulaw_frames
from runtime.telephony.scripted_caller import OpenLine, agent_quiet
from runtime.telephony.twilio.bridge import twilio_signature
from runtime.telephony.twilio.caller import CallerStream, TwilioCaller, TwimlAnswer, beep

EVENTS = ("initiated", "ringing", "answered", "completed")
SPEECH_END_THRESHOLD_MS = 1200  # MachineDetectionSpeechEndThreshold's default
SPEECH_THRESHOLD_MS = 2400  # MachineDetectionSpeechThreshold's default


@dataclass
class Callee:
    answers: str = "human"  # human | machine | busy | no-answer | failed
    lines: list[Audio] = field(default_factory=list)  # a human's words
    greeting: Audio | None = None  # a machine's greeting (a beep follows)
    delays: dict[str, float] = field(default_factory=dict)  # callback name (or "stop") -> extra delay, s
    ring_s: float = 0.2
    create_delay_s: float = 0.0
    create_after_twiml: bool = False  # the 201 goes back only once the call was answered and its TwiML read
    stream_delay_s: float = 0.0
    quiet_s: float = 0.8  # how long the agent is quiet before the human says its next line
    hang_up: bool = True  # a human hangs up after its last line (and the agent's answer)
    detect_after_end: bool = False  # the detection result arrives only after the call's completed callback


@dataclass(eq=False)
class PeerCall:
    sid: str
    form: MultiDict[str]
    callee: Callee
    status: str = "queued"
    seq: int = 0
    answered_at: float | None = None
    created_at: float | None = None  # when the Calls.create answer went back
    twiml: TwimlAnswer | None = None
    twiml_at: float | None = None
    twiml_read: asyncio.Event = field(default_factory=asyncio.Event)
    leg: CallerStream | None = None
    beep_ended_at: int | None = None  # bytes of runtime audio received when the beep ended
    held_detection: tuple[str, dict[str, str]] | None = None  # (url, params) posted after completed
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)  # by the runtime (REST update)
    posts: list[dict[str, Any]] = field(default_factory=list)  # every callback sent, in sending order
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def events(self) -> list[str]:
        return self.form.getall("StatusCallbackEvent", [])

    def heard_after_beep(self) -> bytes:
        if self.leg is None or self.beep_ended_at is None:
            return b""
        return bytes(self.leg.result.received_pcm[self.beep_ended_at:])


class CallsPeer:
    """Calls.create and the calls it starts (see the module docstring)."""

    def __init__(self, account_sid: str, token: str) -> None:
        self.account_sid, self.token = account_sid, token
        self.callees: dict[str, Callee] = {}  # To -> its callee (default: a silent human)
        self.calls: dict[str, PeerCall] = {}
        self.created: list[PeerCall] = []
        self.create_times: list[float] = []  # monotonic arrival of each Calls.create
        self.fail_create: tuple[int, dict[str, Any]] | None = None
        # The origin a request to a URL the runtime gave actually reaches (signed over the URL itself):
        # a load balancer in front of several instances. Default: the URL's own origin.
        self.front: Callable[[str], str] = _origin
        self.http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for call in self.calls.values():
            if call.leg is not None and not call.leg.closed.is_set():
                await call.leg.close()
        if self.http is not None:
            await self.http.close()

    # Calls.create

    async def create(self, request: web.Request, form: MultiDict[str]) -> web.Response:
        self.create_times.append(time.monotonic())
        problem = _invalid(form)
        if problem is not None:
            return web.json_response({**problem, "more_info": f"https://www.twilio.com/docs/errors/{problem['code']}",
                                      "status": 400}, status=400)
        if self.fail_create is not None:
            status, body = self.fail_create
            return web.json_response({**body, "status": status}, status=status)
        callee = self.callees.get(form["To"], Callee())
        call = PeerCall("CA" + secrets.token_hex(16), form, callee)
        self.calls[call.sid] = call
        self.created.append(call)
        self._spawn(self._run(call))
        if callee.create_delay_s:
            await asyncio.sleep(callee.create_delay_s)
        if callee.create_after_twiml:
            await asyncio.wait_for(call.twiml_read.wait(), 20)
        call.created_at = time.monotonic()
        return web.json_response({
            "sid": call.sid, "account_sid": self.account_sid, "to": form["To"], "from": form["From"],
            "status": "queued", "direction": "outbound-api", "api_version": "2010-04-01", "answered_by": None,
        }, status=201)

    async def update(self, sid: str, form: dict[str, str]) -> web.Response | None:
        """A REST update of a call this peer placed (None: not one of them)."""
        call = self.calls.get(sid)
        if call is None:
            return None
        wanted = form.get("Status")
        if wanted == "completed" and call.answered_at is not None:
            call.hung_up.set()
        elif wanted == "canceled" and call.answered_at is None and call.status != "completed":
            call.hung_up.set()
        return web.json_response({"sid": sid, "status": wanted or call.status})

    # One call

    async def _run(self, call: PeerCall) -> None:
        try:
            await self._play(call)
        finally:
            call.done.set()

    async def _play(self, call: PeerCall) -> None:
        callee, form = call.callee, call.form
        if await self._hung_up_within(call, 0.02):
            return  # canceled while queued: no callbacks (call-resource, "Call Status values")
        self._progress(call, "initiated", "initiated")
        if await self._hung_up_within(call, 0.05):
            return self._progress(call, "completed", "canceled", SipResponseCode="487", CallDuration="0")
        self._progress(call, "ringing", "ringing")
        if callee.answers in ("busy", "failed"):
            await asyncio.sleep(callee.ring_s)
            code = "486" if callee.answers == "busy" else "404"
            return self._progress(call, "completed", callee.answers, SipResponseCode=code, CallDuration="0")
        ring = int(form.get("Timeout", "60")) if callee.answers == "no-answer" else callee.ring_s
        if await self._hung_up_within(call, ring):
            return self._progress(call, "completed", "canceled", SipResponseCode="487", CallDuration="0")
        if callee.answers == "no-answer":
            return self._progress(call, "completed", "no-answer", SipResponseCode="487", CallDuration="0")
        call.answered_at = time.monotonic()
        self._progress(call, "answered", "in-progress")
        caller = TwilioCaller(self.front(form["Url"]), self.account_sid, self.token, http=self._http())
        call.twiml = await caller.answer(form["Url"], call.sid, form["From"], form["To"])
        call.twiml_at = time.monotonic()
        call.twiml_read.set()
        if call.twiml.rejected:
            return self._completed(call)
        if callee.answers == "human":
            first = callee.lines[0].duration_s if callee.lines else 0.0
            self._detect(call, "human", first * 1000 + SPEECH_END_THRESHOLD_MS)
        await asyncio.sleep(callee.stream_delay_s)
        media = TwilioCaller(self.front(call.twiml.stream_url), self.account_sid, self.token, http=self._http())
        leg = call.leg = await media.open_stream(call.sid, call.twiml)
        line = OpenLine(leg)
        try:
            if callee.answers == "human":
                await self._human(call, leg, line)
            else:
                await self._machine(call, leg, line)
        finally:
            await line.close()
        if not leg.closed.is_set():
            stop = callee.delays.get("stop", 0.0)
            if stop:  # the completed callback before the stream's stop message
                self._completed(call)
                await asyncio.sleep(stop)
            try:
                await leg.stop(self.account_sid, call.sid)
                await leg.wait_closed(5)
            except (ConnectionError, RuntimeError, TimeoutError):
                pass
            if stop:
                return
        self._completed(call)

    async def _human(self, call: PeerCall, leg: CallerStream, line: OpenLine) -> None:
        for words in call.callee.lines:  # each after the agent's answer to the one before
            line.say(ulaw_frames(words))
            await _first(line.speaking_done.wait(), call.hung_up.wait(), leg.closed.wait())
            if call.hung_up.is_set() or leg.closed.is_set():
                return
            await agent_quiet(leg, call.callee.quiet_s, time.monotonic(), 20.0)
        if not call.callee.hang_up:
            await _first(call.hung_up.wait(), leg.closed.wait())

    async def _machine(self, call: PeerCall, leg: CallerStream, line: OpenLine) -> None:
        greeting = call.callee.greeting or Audio(b"", 8000)
        tone = beep()
        mode = call.form.get("MachineDetection")
        if mode == "Enable":
            self._detect(call, "machine_start", SPEECH_THRESHOLD_MS)
        line.say(ulaw_frames(Audio(_at_8k(greeting) + tone.pcm, 8000)))
        await _first(line.speaking_done.wait(), call.hung_up.wait(), leg.closed.wait())
        call.beep_ended_at = len(leg.result.received_pcm)
        if mode == "DetectMessageEnd":
            self._detect(call, "machine_end_beep", (greeting.duration_s + tone.duration_s) * 1000, now=True)
        await _first(call.hung_up.wait(), leg.closed.wait())  # recording until the runtime hangs up

    # Callbacks

    def _progress(self, call: PeerCall, event: str, status: str, **extra: str) -> None:
        call.status = status
        if event not in call.events or not call.form.get("StatusCallback"):
            return
        params = {"CallSid": call.sid, "AccountSid": self.account_sid, "From": call.form["From"],
                  "To": call.form["To"], "Direction": "outbound-api", "ApiVersion": "2010-04-01",
                  "CallStatus": status, "CallbackSource": "call-progress-events",
                  "Timestamp": email.utils.formatdate(usegmt=True), "SequenceNumber": str(call.seq), **extra}
        call.seq += 1
        self._spawn(self._post(call, event, call.form["StatusCallback"], params, call.callee.delays.get(event, 0.0)))

    def _completed(self, call: PeerCall) -> None:
        took = time.monotonic() - (call.answered_at or time.monotonic())
        self._progress(call, "completed", "completed", SipResponseCode="200", CallDuration=str(int(took)))
        if call.held_detection is not None:
            url, params = call.held_detection
            self._spawn(self._post(call, "amd", url, params, 0.3 + call.callee.delays.get("completed", 0.0)))

    def _detect(self, call: PeerCall, answered_by: str, after_ms: float, now: bool = False) -> None:
        url = call.form.get("AsyncAmdStatusCallback")
        if call.form.get("AsyncAmd") != "true" or not call.form.get("MachineDetection") or not url:
            return
        params = {"CallSid": call.sid, "AccountSid": self.account_sid, "AnsweredBy": answered_by,
                  "MachineDetectionDuration": str(int(after_ms))}
        if call.callee.detect_after_end:
            call.held_detection = (url, params)
            return
        wait = 0.0 if now else max(0.0, call.answered_at + after_ms / 1000 - time.monotonic())  # type: ignore[operator]
        self._spawn(self._post(call, "amd", url, params, wait + call.callee.delays.get("amd", 0.0)))

    async def _post(self, call: PeerCall, kind: str, url: str, params: dict[str, str], delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        signature = twilio_signature(self.token, url, params.items())
        caller = TwilioCaller(self.front(url), self.account_sid, self.token, http=self._http())
        record = {"kind": kind, "url": url, "params": params, "signature": signature, "at": time.monotonic()}
        call.posts.append(record)
        record["status"], _ = await caller.post_url(url, params)

    # Plumbing

    async def _hung_up_within(self, call: PeerCall, seconds: float) -> bool:
        try:
            await asyncio.wait_for(call.hung_up.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _http(self) -> aiohttp.ClientSession:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        return self.http

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _invalid(form: MultiDict[str]) -> dict[str, Any] | None:
    """The first problem Twilio would answer 400 for (codes from twilio.com/docs/errors)."""
    if not form.get("To"):
        return {"code": 21201, "message": "No 'To' number is specified"}
    if not form.get("From"):
        return {"code": 21603, "message": "'From' phone number is required"}
    if not form.get("Url") and not form.get("Twiml"):
        return {"code": 21205, "message": "Url parameter is required"}
    if any(e not in EVENTS for e in form.getall("StatusCallbackEvent", [])):
        return {"code": 21626, "message": "Invalid StatusCallbackEvent"}
    if form.get("MachineDetection") not in (None, "Enable", "DetectMessageEnd"):
        return {"code": 21211, "message": "Invalid MachineDetection"}
    if form.get("AsyncAmd") not in (None, "true", "false"):
        return {"code": 21211, "message": "Invalid AsyncAmd"}
    timeout = form.get("Timeout")
    if timeout is not None and not (timeout.isdigit() and int(timeout) <= 600):
        return {"code": 21211, "message": "Invalid Timeout"}
    return None


def basic_auth(account_sid: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{account_sid}:{token}".encode()).decode()


def _origin(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _at_8k(audio: Audio) -> bytes:
    from runtime.audio import resample

    return resample(audio.pcm, audio.rate, 8000) if audio.rate != 8000 else audio.pcm


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
