"""The WebRTC bridge's parts on their own: offer checks, browser tokens, the agent's encoders and
the caller's audio conversion, the transport's generations and the shared 20 ms media clock."""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from runtime.config import OpusSettings, WebRTCSettings, build_settings
from runtime.control.errors import Unauthorized
from runtime.telephony.webrtc.codecs import OPUS_SILENCE, G711AgentEncoder, OpusAgentEncoder
from runtime.telephony.webrtc.ice import browser_ice_servers, rtc_configuration, with_candidates
from runtime.telephony.webrtc.inbound import MAX_FILL, RESYNC_LATE, CallerAudio
from runtime.telephony.webrtc.media import AgentAudioTrack, MediaClock, WebRtcTransport
from runtime.telephony.webrtc.sdp import SdpRejected, check_offer, with_static_rtpmaps
from runtime.telephony.webrtc.tokens import BrowserGrant, BrowserTokens


async def _offer(codecs: list[str] | None = None, data_channel: bool = False) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("audio", direction="sendrecv")
    if codecs:
        from aiortc import RTCRtpSender

        caps = RTCRtpSender.getCapabilities("audio").codecs
        transceiver.setCodecPreferences([c for c in caps if c.mimeType.split("/")[1].lower() in codecs])
    if data_channel:
        pc.createDataChannel("voicectl")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def _tone(rate: int, ms: int, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude).astype("<i2").tobytes()


def _rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)
    return math.sqrt(float(np.mean(samples * samples))) if len(samples) else 0.0


# Offers


async def test_a_browser_like_offer_is_accepted_and_opus_is_preferred() -> None:
    info = check_offer(await _offer(data_channel=True))
    assert info.codec == "opus" and info.data_channel


async def test_a_pcmu_only_offer_answers_pcmu() -> None:
    info = check_offer(await _offer(["pcmu"]))
    assert info.codec == "pcmu" and not info.data_channel


@pytest.mark.parametrize(("sdp", "reason"), [
    ("", "bad_sdp"),
    ("hello", "bad_sdp"),
    ("v=0\r\nm=audio x RTP/AVP 0\r\n", "bad_sdp"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no_audio"),
])
def test_malformed_offers_are_refused_with_a_reason(sdp: str, reason: str) -> None:
    with pytest.raises(SdpRejected) as caught:
        check_offer(sdp)
    assert caught.value.reason == reason and caught.value.message


async def test_an_offer_without_supported_codecs_names_what_it_offered() -> None:
    with pytest.raises(SdpRejected) as caught:
        check_offer(await _offer(["g722"]))
    assert caught.value.reason == "unsupported_codec" and "g722" in caught.value.message


async def test_an_offer_without_ice_or_dtls_is_refused() -> None:
    sdp = await _offer()
    no_ice = "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=ice-pwd"))
    with pytest.raises(SdpRejected, match="ICE credentials"):
        check_offer(no_ice)
    no_dtls = "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=fingerprint"))
    with pytest.raises(SdpRejected, match="DTLS"):
        check_offer(no_dtls)


async def test_video_and_inactive_audio_are_refused() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    pc.addTransceiver("video")
    await pc.setLocalDescription(await pc.createOffer())
    video = pc.localDescription.sdp
    await pc.close()
    with pytest.raises(SdpRejected) as caught:
        check_offer(video)
    assert caught.value.reason == "video_unsupported"
    inactive = (await _offer()).replace("a=sendrecv", "a=inactive")
    with pytest.raises(SdpRejected) as caught:
        check_offer(inactive)
    assert caught.value.reason == "no_audio"


async def test_an_offer_with_static_pcmu_and_no_rtpmap_is_answered_in_pcmu() -> None:
    sdp = await _offer(["pcmu"])
    bare = "".join(line + "\r\n" for line in sdp.split("\r\n") if line and not line.startswith("a=rtpmap:0 "))
    assert "PCMU" not in bare
    info = check_offer(bare)
    assert (info.codec, info.payload_type) == ("pcmu", 0) and "a=rtpmap:0 PCMU/8000" in info.sdp


def test_static_payload_types_get_their_rtpmap() -> None:
    sdp = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:8 PCMA/8000\r\n"
    out = with_static_rtpmaps(sdp)
    assert "a=rtpmap:0 PCMU/8000" in out and out.count("a=rtpmap:8") == 1 and out.count("a=rtpmap:111") == 1


# Browser tokens


def test_a_token_carries_its_grant_until_it_expires() -> None:
    now = [1000.0]
    tokens = BrowserTokens(clock=lambda: now[0])
    grant = BrowserGrant("ten_1", "key_1", "agt_1", None, 1060)
    token = tokens.mint(grant)
    assert token.startswith("wrtc_") and tokens.verify(token) == grant
    now[0] = 1060.0
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(token)


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature
    lambda t: t.replace("wrtc_", "wrtc_e", 1),  # body
    lambda t: "vk_rt_" + t[5:],
    lambda t: t + ".x",
    lambda t: "wrtc_" + "A" * 2000,
])
def test_forged_tokens_are_refused(mutate) -> None:
    tokens = BrowserTokens(clock=lambda: 0.0)
    token = tokens.mint(BrowserGrant("ten_1", "key_1", "agt_1", None, 10))
    with pytest.raises(Unauthorized, match="invalid browser token"):
        tokens.verify(mutate(token))


def test_another_processes_tokens_are_not_valid_here() -> None:
    token = BrowserTokens().mint(BrowserGrant("ten_1", "key_1", None, "+15550100000", int(time.time()) + 60))
    with pytest.raises(Unauthorized):
        BrowserTokens().verify(token)


# Codecs


def _decode_opus(packets: list[av.Packet]) -> bytes:
    decoder = av.CodecContext.create("libopus", "r")
    decoder.format, decoder.layout, decoder.sample_rate = "s16", "mono", 48000
    out = b""
    for packet in packets:
        fresh = av.Packet(bytes(packet))
        fresh.pts, fresh.time_base = packet.pts, fractions.Fraction(1, 48000)
        for frame in decoder.decode(fresh):
            out += bytes(frame.planes[0])[:frame.samples * 2]
    return out


@pytest.mark.parametrize("rate", [8000, 16000])
def test_opus_frames_decode_back_to_the_agents_audio(rate: int) -> None:
    encoder = OpusAgentEncoder(rate, OpusSettings())
    tone = _tone(rate, 400)
    packets = [encoder.encode(tone[i:i + encoder.frame_bytes], n * 960)
               for n, i in enumerate(range(0, len(tone), encoder.frame_bytes))]
    assert [p.pts for p in packets] == [n * 960 for n in range(20)]
    assert all(p.time_base == fractions.Fraction(1, 48000) for p in packets)
    decoded = _decode_opus(packets)
    assert len(decoded) == 48000 * 2 * 400 // 1000
    assert _rms(decoded[len(decoded) // 2:]) > 0.5 * _rms(tone)  # the tone survives (past the codec's delay)
    first_silence = encoder.silence(20 * 960)  # flushes the encoder's lookahead
    assert bytes(first_silence) != OPUS_SILENCE
    constant = encoder.silence(21 * 960)
    assert bytes(constant) == OPUS_SILENCE and constant.pts == 21 * 960
    assert _rms(_decode_opus([constant])) == 0.0


@pytest.mark.parametrize(("codec", "silence"), [("pcmu", 0xFF), ("pcma", 0xD5)])
def test_g711_frames(codec: str, silence: int) -> None:
    encoder = G711AgentEncoder(codec)
    assert (encoder.rate, encoder.frame_bytes, encoder.clock_step) == (8000, 320, 160)
    packet = encoder.encode(_tone(8000, 20), 160)
    assert packet.size == 160 and packet.pts == 160 and packet.time_base == fractions.Fraction(1, 8000)
    assert bytes(encoder.silence(320)) == bytes([silence]) * 160
    with pytest.raises(ValueError):
        G711AgentEncoder("g722")


# The caller's audio


def _opus_packets(frames: int, rate: int = 48000) -> list[bytes]:
    encoder = OpusAgentEncoder(rate, OpusSettings())
    tone = _tone(rate, 20 * frames, amplitude=6000)
    return [bytes(encoder.encode(tone[i:i + encoder.frame_bytes], 0))
            for i in range(0, len(tone), encoder.frame_bytes)]


def _rtp(seq: int, payload: bytes, pt: int = 111, ssrc: int = 1234):
    from aiortc.rtp import RtpPacket

    return RtpPacket(payload_type=pt, sequence_number=seq % 65536, timestamp=seq * 960, ssrc=ssrc, payload=payload)


def _caller(codec: str = "opus", pt: int = 111, rate: int = 16000):
    got: list[bytes] = []
    errors: list[Exception] = []
    return CallerAudio(codec, pt, rate, got.append, errors.append), got, errors


async def test_caller_opus_is_decoded_in_order_to_the_pipeline_rate() -> None:
    audio, got, errors = _caller()
    packets = _opus_packets(10)
    for seq, payload in enumerate(packets, start=65530):  # across the 16-bit wrap
        await audio.handle_rtp_packet(_rtp(seq, payload), 0)
    assert not errors and len(got) == 10 and audio.stats.packets == 10 and audio.stats.missing == 0
    assert all(len(pcm) == 640 for pcm in got[1:])  # 20 ms at 16 kHz (the first carries the codec delay)
    assert _rms(b"".join(got[3:])) > 0.5 * 6000 / math.sqrt(2)
    assert audio.last_packet > 0


async def test_lost_packets_become_silence_and_late_ones_are_dropped() -> None:
    audio, got, _ = _caller()
    packets = _opus_packets(8)
    for seq in (0, 1, 4, 5, 3, 5, 6):  # 2 and 3 lost (3 then comes late), 5 twice
        await audio.handle_rtp_packet(_rtp(seq, packets[seq]), 0)
    assert audio.stats.missing == 2 and audio.stats.late == 2
    assert len(got) == 7 and got[2] == got[3] == bytes(640)  # 0 1 [gap gap] 4 5 6
    await audio.handle_rtp_packet(_rtp(7 + MAX_FILL + 5, packets[7]), 0)  # a long gap is not filled
    assert len(got) == 8 and audio.stats.missing == 2 + MAX_FILL + 5


async def test_another_payload_type_is_ignored_and_a_new_stream_is_followed() -> None:
    audio, got, _ = _caller()
    packets = _opus_packets(4)
    await audio.handle_rtp_packet(_rtp(100, packets[0]), 0)
    await audio.handle_rtp_packet(_rtp(101, packets[1], pt=126), 0)  # e.g. telephone-event
    assert audio.stats.ignored == 1 and len(got) == 1
    await audio.handle_rtp_packet(_rtp(5, packets[1], ssrc=999), 0)  # the sender restarted its stream
    await audio.handle_rtp_packet(_rtp(6, packets[2], ssrc=999), 0)
    assert len(got) == 3 and audio.stats.late == 0 and audio.stats.missing == 0


async def test_a_sequence_that_jumps_back_is_followed_after_a_while() -> None:
    audio, got, _ = _caller("pcmu", pt=0, rate=8000)
    await audio.handle_rtp_packet(_rtp(30000, b"\xff" * 160, pt=0), 0)
    for seq in range(RESYNC_LATE):  # same SSRC, far behind: late until it is clearly a restart
        await audio.handle_rtp_packet(_rtp(seq, b"\xff" * 160, pt=0), 0)
    assert audio.stats.late == RESYNC_LATE and len(got) == 2
    await audio.handle_rtp_packet(_rtp(RESYNC_LATE, b"\xff" * 160, pt=0), 0)
    assert len(got) == 3


@pytest.mark.parametrize(("codec", "pt", "byte"), [("pcmu", 0, 0xFF), ("pcma", 8, 0xD5)])
async def test_g711_is_decoded_with_audioop(codec: str, pt: int, byte: int) -> None:
    audio, got, _ = _caller(codec, pt, 8000)
    await audio.handle_rtp_packet(_rtp(1, bytes([byte]) * 160, pt=pt), 0)
    assert got == [bytes(320)] or max(abs(v) for v in np.frombuffer(got[0], "<i2")) < 16


async def test_undecodable_audio_is_reported_once_and_then_ignored() -> None:
    audio, got, errors = _caller()
    await audio.handle_rtp_packet(_rtp(1, b"\xff" * 200), 0)  # not an Opus packet FFmpeg accepts
    await audio.handle_rtp_packet(_rtp(2, _opus_packets(1)[0]), 0)
    assert len(errors) == 1 and not got and audio.stats.decode_errors == 1
    with pytest.raises(ValueError):
        CallerAudio("g722", 9, 16000, got.append, errors.append)


async def test_the_aiortc_receiver_seam_exists() -> None:
    """CallerAudio takes over the receiver's ``_handle_rtp_packet``: this aiortc still has it."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = pc.addTransceiver("audio").receiver
    audio, _, _ = _caller()
    audio.attach(receiver)
    assert receiver._handle_rtp_packet == audio.handle_rtp_packet
    await pc.close()
    with pytest.raises(RuntimeError, match="_handle_rtp_packet"):
        audio.attach(object())


# The transport and the clock


class _Encoder:
    rate, frame_bytes, clock_step = 8000, 320, 160

    def encode(self, pcm: bytes, ts: int) -> av.Packet:
        packet = av.Packet(pcm[:4])
        packet.pts = ts
        return packet

    def silence(self, ts: int) -> av.Packet:
        packet = av.Packet(b"\x00")
        packet.pts = ts
        return packet


def test_the_transport_keeps_only_the_current_generation() -> None:
    sent: list[bytes] = []
    transport = WebRtcTransport(_Encoder())
    transport.on_audio = sent.append
    transport.send_audio(b"\x01\x00" * 200, 1)  # 400 bytes: 2 frames, the second padded
    assert transport.queued_ms() == 40
    transport.send_audio(b"\x02\x00" * 160, 2)  # a newer reply: the older frames are stale
    transport.send_audio(b"\x01\x00" * 160, 1)  # a stale chunk arriving late is never queued
    assert transport.queued_ms() == 60
    packet = transport.next_packet(160, 0.0)
    assert bytes(packet) == b"\x02\x00\x02\x00" and transport.stats.dropped == 2
    assert transport.sent_ms(2) == 20 and transport.sent_ms(1) == 0 and len(sent) == 1
    assert bytes(transport.next_packet(320, 0.0)) == b"\x00" and transport.stats.silence_sent == 1
    transport.send_audio(b"\x03\x00" * 320, 3)
    transport.drop_stale(4)
    assert transport.queued_ms() == 0 and transport.generation == 4
    transport.send_audio(b"\x04\x00" * 320, 4)
    asyncio.run(transport.clear())
    assert transport.queued_ms() == 0 and transport.stats.dropped == 6


def test_a_late_frame_is_counted() -> None:
    transport = WebRtcTransport(_Encoder())
    transport.send_audio(bytes(640), 1)
    transport.next_packet(160, 0.005)
    transport.next_packet(320, 0.060)
    assert transport.stats.late == 1 and transport.stats.max_lag_s == pytest.approx(0.060)


async def test_the_clock_paces_every_track_at_20_ms_without_bursts() -> None:
    loop = asyncio.get_running_loop()
    clock = MediaClock(loop)
    tracks = [AgentAudioTrack(WebRtcTransport(_Encoder())) for _ in range(3)]
    for track in tracks:
        track.transport.send_audio(bytes(320 * 100), 1)
        track._clock = clock
        clock.add(track)
    got: list[list[tuple[float, int]]] = [[] for _ in tracks]

    async def read(i: int, track: AgentAudioTrack) -> None:
        while len(got[i]) < 25:
            packet = await track.recv()
            got[i].append((time.monotonic(), packet.pts))

    await asyncio.wait_for(asyncio.gather(*(read(i, t) for i, t in enumerate(tracks))), 5)
    for track in tracks:
        track.stop()
    for series in got:
        times = [t for t, _ in series]
        assert [pts for _, pts in series] == [160 * (n + 1) for n in range(25)]
        span = times[-1] - times[0]
        assert 0.44 <= span <= 0.56, span  # 24 intervals of 20 ms
        # never two at once (half a frame apart at least: a busy box delays single ticks by a few ms)
        assert min(b - a for a, b in zip(times, times[1:], strict=False)) > 0.005
    assert clock.ticks >= 25 and not clock.tracks


async def test_the_clock_spreads_tracks_over_its_phases() -> None:
    clock = MediaClock(asyncio.get_running_loop())
    tracks = [AgentAudioTrack(WebRtcTransport(_Encoder())) for _ in range(8)]
    for track in tracks:
        track._clock = clock
        clock.add(track)
    assert [len(slot) for slot in clock.slots] == [2, 2, 2, 2] and clock.tracks == 8
    first: dict[int, float] = {}

    async def read(track: AgentAudioTrack) -> None:
        await track.recv()
        first[track._phase] = min(first.get(track._phase, math.inf), track._last_due)

    await asyncio.wait_for(asyncio.gather(*(read(t) for t in tracks)), 2)
    for track in tracks:
        track.stop()
    # Phase p is due 5 ms after phase p - 1 on the grid (by when each was due, not when a loaded
    # box woke it: a tick it had to skip moves a phase by whole frames only).
    dues = [first[p] for p in range(4)]
    assert all(abs((b - a) % 0.02 - 0.005) < 1e-6 for a, b in zip(dues, dues[1:], strict=False)), dues
    assert clock.tracks == 0


async def test_a_broken_encoder_fails_its_own_track_only() -> None:
    class Broken(_Encoder):
        def silence(self, ts: int) -> av.Packet:
            raise RuntimeError("encoder gone")

    clock = MediaClock(asyncio.get_running_loop())
    good, bad = AgentAudioTrack(WebRtcTransport(_Encoder())), AgentAudioTrack(WebRtcTransport(Broken()))
    failures: list[Exception] = []
    bad.on_failure = failures.append
    for track in (good, bad):
        track._clock = clock
        clock.add(track)
    from aiortc.mediastreams import MediaStreamError

    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(bad.recv(), 1)
    assert isinstance(failures[0], RuntimeError)
    packets = [await asyncio.wait_for(good.recv(), 1) for _ in range(3)]
    assert [p.pts for p in packets][-1] > 0
    good.stop()


async def test_a_stopped_track_ends_its_sender() -> None:
    track = AgentAudioTrack(WebRtcTransport(_Encoder()))
    from aiortc.mediastreams import MediaStreamError

    reader = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)  # waiting for the next tick
    track.stop()
    with pytest.raises(MediaStreamError):
        await reader
    with pytest.raises(MediaStreamError):
        await track.recv()


# ICE settings


def test_no_ice_server_configured_means_none_at_all(tmp_path) -> None:
    settings = build_settings({}, tmp_path).telephony.webrtc
    assert rtc_configuration(settings).iceServers == []  # not aiortc's default public STUN server


def test_ice_servers_for_the_peer_and_the_browser() -> None:
    settings = WebRTCSettings(ice_servers=["stun:stun.example.com:3478", {
        "urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "c"}])
    servers = rtc_configuration(settings).iceServers
    assert servers[0].urls == "stun:stun.example.com:3478" and servers[1].username == "u"
    assert browser_ice_servers(settings) == [
        {"urls": ["stun:stun.example.com:3478"]},
        {"urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "c"}]


def test_bad_webrtc_settings_are_refused() -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="not an IP address"):
        WebRTCSettings(host_candidates=["localhost"])
    with pytest.raises(pydantic.ValidationError, match="stun:"):
        WebRTCSettings(ice_servers=["http://stun.example.com"])


def test_candidates_are_added_to_every_media_section() -> None:
    sdp = ("v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=candidate:1 1 udp 1 192.0.2.1 5000 typ host\r\n"
           "a=end-of-candidates\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n")
    out = with_candidates(sdp, ["9 1 udp 2130706431 127.0.0.1 40000 typ host"])
    audio, application = out.split("m=application")
    assert "127.0.0.1 40000 typ host\r\na=end-of-candidates" in audio
    assert application.endswith("a=mid:1\r\na=candidate:9 1 udp 2130706431 127.0.0.1 40000 typ host\r\n")
    assert with_candidates(sdp, []) == sdp


# Packaging


def test_the_page_files_ship_in_the_package() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["runtime"]
    for name in ("call.html", "call.js", "call.css"):
        path = root / "runtime" / "api" / "static" / name
        assert path.exists() and any(path.match(pattern.replace("**/", "")) for pattern in data), name


def test_a_missing_chromium_fails_under_ci_and_skips_locally(monkeypatch) -> None:
    from tests.webrtc import support as webrtc_support

    monkeypatch.setattr(webrtc_support.shutil, "which", lambda name: None)
    monkeypatch.setattr(webrtc_support, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        webrtc_support.require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        webrtc_support.require_chromium()
