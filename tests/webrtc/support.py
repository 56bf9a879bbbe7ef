"""Real peers for the WebRTC tests: an aiortc client that streams a WAV and measures what it
hears, headless Chromium driven over the DevTools protocol, and caller speech made at test time."""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import orjson
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from runtime.audio import Audio, resample, write_wav

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "webrtc"
CHROMIUM = "/usr/bin/chromium"


async def piper_speech(text: str) -> Audio:
    from runtime.providers.tts.local import PiperTTS

    chunks = [c async for c in PiperTTS().synthesize(text)]
    return Audio(b"".join(c.pcm for c in chunks), chunks[0].rate)


def with_silence(audio: Audio, rate: int, lead_s: float, tail_s: float) -> bytes:
    """``audio`` at ``rate`` with silence before and after (PCM16)."""
    pcm = resample(audio.pcm, audio.rate, rate)
    return bytes(int(rate * lead_s) * 2) + pcm + bytes(int(rate * tail_s) * 2)


class WavTrack(MediaStreamTrack):
    """A microphone that plays PCM16 mono in real time (20 ms frames at 48 kHz), then silence."""

    kind = "audio"

    def __init__(self, pcm48k: bytes) -> None:
        super().__init__()
        self.pcm = pcm48k
        self.n = 0
        self.t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.t0 is None:
            self.t0 = time.monotonic()
        due = self.t0 + self.n * 0.02
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = self.pcm[self.n * 1920:(self.n + 1) * 1920]
        chunk += bytes(1920 - len(chunk))
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(chunk)
        frame.sample_rate = 48000
        frame.pts = self.n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.n += 1
        return frame


@dataclass
class Heard:
    """What the client received: per-frame RMS and arrival times."""

    rms: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    def loud_frames(self, threshold: float = 200.0) -> int:
        return sum(1 for r in self.rms if r > threshold)

    def energy(self) -> float:
        return float(sum(r * r for r in self.rms))


class ClientPeer:
    """An aiortc caller: offers audio (+ the page's data channel), hears the agent."""

    def __init__(self, pcm48k: bytes | None = None, *, data_channel: bool = True) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = WavTrack(pcm48k or b"")
        self.pc.addTransceiver(self.mic, direction="sendrecv")
        self.heard = Heard()
        self.messages: list[dict[str, Any]] = []
        self.channel = self.pc.createDataChannel("voicectl") if data_channel else None
        if self.channel is not None:
            self.channel.on("message", lambda m: self.messages.append(orjson.loads(m)))
        self._reader: asyncio.Task | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = frame.to_ndarray().astype(np.float64)
            self.heard.rms.append(math.sqrt(float(np.mean(samples * samples))))
            self.heard.arrivals.append(time.monotonic())

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    def events(self, topic: str) -> list[dict[str, Any]]:
        return [m["event"] for m in self.messages if m.get("type") == "event" and m["event"]["topic"] == topic]

    def hang_up(self) -> None:
        assert self.channel is not None
        self.channel.send(orjson.dumps({"type": "hangup"}).decode())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()


async def wait_for(predicate, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(step)


# Chromium over the DevTools protocol


def require_chromium() -> str:
    """The chromium binary; skipped locally when it is missing, a failure under CI=true."""
    found = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if found:
        return found
    message = "chromium is not installed (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class Chromium:
    """Headless Chromium with a fake microphone playing ``capture`` (a WAV), one page, driven
    with DevTools protocol commands over its WebSocket."""

    def __init__(self, binary: str, profile: Path, capture: Path) -> None:
        self.binary, self.profile, self.capture = binary, profile, capture
        self.proc: subprocess.Popen | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = 0
        self.console: list[str] = []

    async def start(self) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--mute-audio", "--autoplay-policy=no-user-gesture-required",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={self.capture}%noloop",
            "--allow-loopback-in-peer-connection",
            f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "--window-size=900,1000",
            "about:blank",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start (exit {self.proc.poll()})")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        self._ids += 1
        mine = self._ids
        await self.ws.send_str(orjson.dumps({"id": mine, "method": method, "params": params}).decode())
        while True:
            msg = await self.ws.receive(timeout=30)
            data = orjson.loads(msg.data)
            if data.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", "")) for a in data["params"]["args"]))
            if data.get("id") == mine:
                if "error" in data:
                    raise AssertionError(f"{method}: {data['error']}")
                return data.get("result", {})

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && typeof window.voicectlStats === 'function'", 10)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float) -> Any:
        async def check():
            return await self.evaluate(expression)

        return await wait_for(check, timeout, expression, step=0.1)

    async def screenshot(self, path: Path) -> Path:
        import base64

        shot = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def write_caller_wav(path: Path, pcm: bytes, rate: int) -> Path:
    write_wav(path, pcm, rate)
    return path
