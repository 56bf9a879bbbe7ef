"""N concurrent WebRTC calls against one runtime process, audio both ways over real ICE/DTLS/SRTP.

    python bench/webrtc.py [--calls 40] [--duration 30] [--codec opus|pcmu] [--quick] [--json out.json]
                           [--profile server.svg|server.txt]

The runtime (the real app: bridge, pipeline, store, events, with bench/fake_engines.py's instant
engines) runs on core 0; the callers, aiortc client peers, in one process on core 1. Each call is
placed through the API (``POST /api/v1/webrtc/sessions`` with a runtime key, to the bench number).
The agent's greeting is a speech-like clip as long as the call, so the runtime encodes and sends
agent audio for the whole call; the callers send quiet line noise (pre-encoded once, replayed
from one shared 20 ms clock), which the runtime decodes, resamples and runs through the VAD. The
callers decode what they hear in their event loop with the runtime's own receive path
(runtime.telephony.webrtc.inbound), so the generator is cheap enough to drive more calls than
the runtime.

Measured, after a 1 s warm-up per call:
  agent -> caller  at the caller, per RTP packet as it reaches aiortc's router (decrypted, before
                   decoding): gaps > 40 ms (late), frames missing from the RTP
                   timestamps (missing), and gap jitter |gap - 20 ms| (p50/p99/max)
  caller -> agent  at the runtime (from the call archive): caller frames missing from the RTP
                   sequence, packets arriving after a later one, and the runtime's own late
                   frames (sent > 40 ms behind its clock) and backlog drops
Server: CPU share of its core over the steady window (all calls up), RSS delta per call.
Generator: its CPU share of core 1 and its clock's lag, so a generator that cannot keep up is
visible rather than blamed on the runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from calls import _pct  # noqa: E402

WARMUP_S = 1.0
FRAME_S = 0.020
LATE_S = 0.040




class ReplaySource:
    """Stands in for the runtime's WebRtcTransport behind an AgentAudioTrack: hands out the next
    pre-encoded packet of a loop on each tick of the (generator's) media clock."""

    def __init__(self, payloads: list[bytes], clock_step: int, offset: int) -> None:
        import fractions

        from runtime.telephony.webrtc.media import OutboundStats

        self.payloads, self.n = payloads, offset
        self.base = fractions.Fraction(1, 48000 if clock_step == 960 else 8000)
        self.encoder = type("Step", (), {"clock_step": clock_step})()
        self.stats = OutboundStats()

    def next_packet(self, ts: int, lag: float):
        import av

        packet = av.Packet(self.payloads[self.n % len(self.payloads)])
        self.n += 1
        packet.pts, packet.time_base = ts, self.base
        return packet


def _encode_noise(codec: str, seconds: float = 10.0) -> tuple[list[bytes], int]:
    """Quiet line noise as 20 ms packets of the codec, encoded once for every call."""
    import random

    from runtime.config import OpusSettings
    from runtime.telephony.webrtc.codecs import G711AgentEncoder, OpusAgentEncoder

    rate = 48000 if codec == "opus" else 8000
    rnd = random.Random(11)
    pcm = array("h", (int(rnd.gauss(0, 100)) for _ in range(int(seconds * rate)))).tobytes()
    encoder = OpusAgentEncoder(rate, OpusSettings(complexity=5)) if codec == "opus" else G711AgentEncoder(codec)
    step = encoder.frame_bytes
    return [bytes(encoder.encode(pcm[i:i + step], 0)) for i in range(0, len(pcm) - step + 1, step)], \
        encoder.clock_step


async def _generate(spec: dict) -> dict:
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from runtime.telephony.webrtc.inbound import CallerAudio
    from runtime.telephony.webrtc.media import AgentAudioTrack, media_clock
    from runtime.telephony.webrtc.sdp import check_offer

    n, duration, ramp, codec = spec["calls"], spec["duration"], spec["ramp"], spec["codec"]
    payloads, step = _encode_noise(codec)
    mime = {"opus": "audio/opus", "pcmu": "audio/PCMU"}[codec]
    prefs = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == mime]
    results: list[dict] = []
    headers = {"Authorization": f"Bearer {spec['key']}"}
    clock_lag = array("d")

    async def one(i: int, http: aiohttp.ClientSession) -> None:
        await asyncio.sleep(ramp * i / max(1, n))
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        arrivals, stamps = array("d"), array("q")  # per RTP packet of agent audio: arrival, RTP timestamp
        try:
            track = AgentAudioTrack(ReplaySource(payloads, step, offset=i * 37))
            transceiver = pc.addTransceiver(track, direction="sendrecv")
            transceiver.setCodecPreferences(prefs)
            done = asyncio.get_running_loop().create_future()
            decoded = [0]

            @pc.on("track")
            def on_track(remote) -> None:
                async def read() -> None:  # frames go to `heard`; the track only ends (RTCP BYE)
                    while True:
                        try:
                            await remote.recv()
                        except MediaStreamError:
                            break
                    if not done.done():
                        done.set_result(None)

                asyncio.ensure_future(read())

            await pc.setLocalDescription(await pc.createOffer())
            heard = CallerAudio(codec, check_offer(pc.localDescription.sdp).payload_type,
                                16000 if codec == "opus" else 8000,
                                lambda pcm: decoded.__setitem__(0, decoded[0] + 1), lambda exc: None)
            heard.attach(transceiver.receiver)
            async with http.post(spec["url"] + "/api/v1/webrtc/sessions", headers=headers, json={
                    "type": "offer", "sdp": pc.localDescription.sdp, "number": spec["number"]}) as resp:
                body = await resp.json()
                if resp.status != 201:
                    results.append({"ok": False, "why": f"{resp.status} {body.get('message')}"})
                    return
            # Arrival = when the decrypted RTP packet reaches aiortc's router, before its decoder
            # thread and the hop back to the loop: less of the generator's own latency.
            dtls = pc.getTransceivers()[0].receiver.transport
            route = dtls._handle_rtp_data

            async def stamped(data: bytes, arrival_time_ms: int) -> None:
                arrivals.append(time.monotonic())
                stamps.append(int.from_bytes(data[4:8], "big"))
                await route(data, arrival_time_ms)

            dtls._handle_rtp_data = stamped
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
            await asyncio.sleep(duration)
            ok = pc.connectionState == "connected" and not done.done()
            results.append({"ok": ok, "why": None if ok else f"state {pc.connectionState}",
                            "arrivals": arrivals, "stamps": stamps, "decoded": decoded[0]})
        except Exception as exc:  # noqa: BLE001 - a failed call is a figure, not a crash
            results.append({"ok": False, "why": f"{type(exc).__name__}: {exc}"})
        finally:
            await pc.close()

    stalls: list[float] = []

    async def watch_clock(stop_at: float) -> None:
        clock, seen = None, 0
        while time.monotonic() < stop_at:
            await asyncio.sleep(0.1)
            clock = clock or media_clock()
            clock_lag.append(clock.late_ticks)
            if clock.late_ticks > seen:
                seen = clock.late_ticks
                stalls.append(time.monotonic())

    started = time.monotonic()
    cpu0 = time.process_time()
    watcher = asyncio.ensure_future(watch_clock(started + ramp + duration))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(one(i, http) for i in range(n)))
    watcher.cancel()
    wall = time.monotonic() - started
    gen_cpu = (time.process_time() - cpu0) / wall

    jitter, late, missing, measured = array("d"), 0, 0, 0
    late_at: dict[float, int] = {}  # seconds since the first call started -> late gaps then
    per_call = []
    samples_per_frame = 960 if codec == "opus" else 160
    for r in results:
        arr, pts = r.get("arrivals"), r.get("stamps")
        if not arr:
            continue
        keep = [k for k in range(len(arr)) if arr[k] - arr[0] >= WARMUP_S]
        if len(keep) < 2:
            continue
        a = [arr[k] for k in keep]
        p = [pts[k] for k in keep]
        gaps = [y - x for x, y in zip(a, a[1:], strict=False)]
        c_late = 0
        for k, g in enumerate(gaps):
            if g > LATE_S:
                c_late += 1
                at = round(a[k + 1] - started, 1)
                late_at[at] = late_at.get(at, 0) + 1
        c_missing = sum(max(0, ((y - x) % 2**32) // samples_per_frame - 1) for x, y in zip(p, p[1:], strict=False))
        jitter.extend(abs(g - FRAME_S) * 1000 for g in gaps)
        late += c_late
        missing += c_missing
        measured += len(a)
        per_call.append({"frames": len(a), "late": c_late, "missing": c_missing})
    return {
        "calls": n, "sustained": sum(1 for r in results if r["ok"]), "wall_s": round(wall, 2),
        "frames_measured": measured, "frames_decoded": sum(r.get("decoded", 0) for r in results),
        "late": late, "missing": missing,
        "jitter_p50_ms": _pct(jitter, 0.5), "jitter_p99_ms": _pct(jitter, 0.99),
        "jitter_max_ms": max(jitter) if jitter else None,
        "calls_with_late": sum(1 for c in per_call if c["late"]),
        "calls_with_missing": sum(1 for c in per_call if c["missing"]),
        "generator_cpu_share": round(gen_cpu, 3),
        "generator_late_ticks": int(clock_lag[-1]) if clock_lag else 0,
        "generator_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "errors": sorted({r["why"] for r in results if r.get("why")})[:5],
        "late_at_s": dict(sorted(late_at.items())[:30]),
        "generator_stalls_at_s": [round(t - started, 1) for t in stalls][:30],
    }


def _server_side(db: Path) -> dict:
    """The runtime's own counts, archived per call: caller audio missing/late at the runtime, and
    the agent audio it sent late (> 40 ms behind its clock) or dropped for a stalled sender."""
    import sqlite3

    time.sleep(1.0)  # the last calls' archive writes
    with sqlite3.connect(db) as conn:
        rows = [(json.loads(r[0] or "{}").get("media", {}), r[1])
                for r in conn.execute("SELECT summary, end_reason FROM voice_calls")]
    summaries = [s for s, _ in rows]
    total = lambda key: sum(int(s.get(key, 0)) for s in summaries)  # noqa: E731
    return {
        "server_calls_archived": len(rows), "server_end_reasons": sorted({r for _, r in rows if r}),
        "server_inbound_frames": total("inbound_frames"), "server_inbound_missing": total("inbound_missing"),
        "server_inbound_late": total("inbound_late"), "server_outbound_frames": total("outbound_frames"),
        "server_outbound_late": total("outbound_late"), "server_outbound_backlogged": total("outbound_backlogged"),
        "server_calls_late": sum(1 for s in summaries if s.get("outbound_late") or s.get("inbound_late")),
        "server_outbound_max_lag_ms": max((float(s.get("outbound_max_lag_ms", 0)) for s in summaries), default=0.0),
    }


async def _runtime_key(state: Path) -> str:
    from runtime.config import load_settings
    from runtime.control.plane import ControlPlane
    from runtime.control.schemas import ApiKeyCreate

    control = await ControlPlane.open(load_settings(state / "config.yaml", environ={}))
    try:
        tenant = await control.tenants.resolve("bench-twilio")
        _, key = await control.keys.create(ApiKeyCreate(scope="runtime", tenant_id=tenant.id))
        return key
    finally:
        await control.close()


def generator_main() -> int:
    spec = json.loads(sys.stdin.read())
    gc.disable()  # the load generator lives one run: no collector pauses in the arrival stamps
    print(json.dumps(asyncio.run(_generate(spec))), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--ramp", type=float, default=None, help="spread call starts over this many seconds")
    parser.add_argument("--codec", choices=("opus", "pcmu"), default="opus")
    parser.add_argument("--quick", action="store_true", help="5 s, 3 calls (a smoke run)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--profile", type=Path,
                        help="record the runtime with py-spy over the steady window (.svg: flame graph, .txt: raw stacks)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generator:
        return generator_main()
    if args.quick:
        args.calls, args.duration = min(args.calls, 3), 5.0
    ramp = args.ramp if args.ramp is not None else min(5.0, args.duration / 4)
    from calls import make_wav
    from twilio_common import NUMBER, Runtime, proc_cpu_s, proc_rss_kb, stall_figures

    with tempfile.TemporaryDirectory(prefix="voicectl-bench-wav-") as tmp:
        wav = Path(tmp) / "speech-like.wav"
        make_wav(wav, seconds=args.duration + ramp + 10, rate=16000)
        with Runtime(pin=not args.no_pin, clip=wav, webrtc={"silence_timeout_s": 10},
                     agent={"greeting": "Hello.", "turn": {"silence_reprompt_s": 120}}) as rt:
            pid = rt.proc.pid
            key = asyncio.run(_runtime_key(rt.state))
            rss0 = proc_rss_kb(pid)
            gen = rt.generator(Path(__file__), json.dumps(
                {"url": rt.url, "key": key, "number": NUMBER, "calls": args.calls, "duration": args.duration,
                 "ramp": ramp, "codec": args.codec}))
            time.sleep(ramp + 1.5)
            window = max(1.0, args.duration - ramp - 2)
            spy = None
            if args.profile:
                exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                raw = ["--format", "raw"] if args.profile.suffix == ".txt" else []  # collapsed stacks, to sum up
                spy = subprocess.Popen([exe, "record", "--gil", "-p", str(pid), "-d", str(int(window)), "-o",
                                        str(args.profile), "--nonblocking", *raw], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            cpu0, gcpu0, t0 = proc_cpu_s(pid), proc_cpu_s(gen.pid), time.monotonic()
            peak_rss = rss0
            while gen.poll() is None and time.monotonic() - t0 < window:
                peak_rss = max(peak_rss, proc_rss_kb(pid))
                time.sleep(0.5)
            cpu1, gcpu1, t1 = proc_cpu_s(pid), proc_cpu_s(gen.pid), time.monotonic()
            out = gen.stdout.read()
            gen.wait(args.duration + 120)
            if spy is not None:
                spy.wait(60)
            stalls = stall_figures(rt.url)
            server = _server_side(rt.state / "voicectl.db")
    res = json.loads(out.strip().splitlines()[-1])
    steady_cpu = (cpu1 - cpu0) / max(1e-6, t1 - t0)
    res.update(server)
    res["runtime_stalls"] = stalls
    res.update({
        "codec": args.codec, "duration_s": args.duration, "ramp_s": ramp,
        "server_cpu_core_share": round(steady_cpu, 3),
        "server_cpu_ms_per_call_s": round(steady_cpu * 1000 / max(1, args.calls), 2),
        "calls_per_core": round(args.calls / max(1e-6, steady_cpu), 1),
        "generator_cpu_steady_share": round((gcpu1 - gcpu0) / max(1e-6, t1 - t0), 3),
        "rss_idle_mb": round(rss0 / 1024, 1), "rss_peak_mb": round(peak_rss / 1024, 1),
        "rss_per_call_kb": round((peak_rss - rss0) / max(1, args.calls), 1),
    })
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    cols = ("calls", "sustained", "jitter_p99_ms", "late", "missing", "server_inbound_missing",
            "server_outbound_late", "server_cpu_core_share", "calls_per_core", "rss_per_call_kb",
            "generator_cpu_steady_share")
    print("\n" + "  ".join(f"{c[:13]:>13}" for c in cols))
    print("  ".join(f"{fmt(res[c]):>13}" for c in cols))
    print(f"codec {args.codec}; agent->caller frames measured {res['frames_measured']} (decoded by the callers "
          f"{res['frames_decoded']}; after {WARMUP_S:.0f} s "
          f"warm-up), jitter p50/p99/max {fmt(res['jitter_p50_ms'])}/{fmt(res['jitter_p99_ms'])}/"
          f"{fmt(res['jitter_max_ms'])} ms, calls with late/missing {res['calls_with_late']}/"
          f"{res['calls_with_missing']}; caller->agent frames at the runtime {res['server_inbound_frames']}, "
          f"missing {res['server_inbound_missing']}, late packets {res['server_inbound_late']}; runtime sent "
          f"{res['server_outbound_frames']} agent frames, late {res['server_outbound_late']}, backlogged "
          f"{res['server_outbound_backlogged']}, clock lag max {res['server_outbound_max_lag_ms']} ms; server {res['server_cpu_ms_per_call_s']} ms CPU per call-second, "
          f"RSS {res['rss_idle_mb']} -> {res['rss_peak_mb']} MB; generator late ticks "
          f"{res['generator_late_ticks']}; end reasons {res['server_end_reasons']}; errors {res['errors'] or 'none'}")
    print(f"runtime stalls (its /metrics, whole run): {stalls}")
    if res["late_at_s"]:
        print(f"late gaps at the caller by time since the first call started (s: count): {res['late_at_s']}")
    if res["generator_stalls_at_s"]:
        print(f"generator clock stalls > 40 ms at (s): {res['generator_stalls_at_s']}")
    if args.profile:
        print(f"profile: {args.profile}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    gaps = res["late"] + res["missing"] + res["server_inbound_missing"] + res["server_outbound_late"]
    held = res["sustained"] == res["calls"] and gaps == 0
    print(f"target (all sustained, no late or missing frames either way): {'held' if held else 'NOT held'}")
    return 0 if res["sustained"] == res["calls"] else 1


if __name__ == "__main__":
    sys.exit(main())
