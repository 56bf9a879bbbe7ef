"""WebRTC offers: what is checked before a peer is built, and the codec the answer will use.

An offer we cannot answer is refused here with a stable ``reason`` (bad_sdp, no_audio,
unsupported_codec, video_unsupported) and a message that says what to change, so the API answers
400 and no aiortc object is ever made for it. aiortc's own parser asserts on malformed lines;
every such failure is a ``bad_sdp`` here, never an exception escaping to the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SDP_BYTES = 64 * 1024
# Codecs the bridge answers with, in order of preference (lower-case SDP encoding names).
CODEC_PREFERENCE = ("opus", "pcmu", "pcma")
# RFC 3551 static payload types an offer may list without an rtpmap line.
STATIC_RTPMAPS = {0: "PCMU/8000", 8: "PCMA/8000"}
_MLINE = re.compile(r"^m=audio [0-9]+ [A-Z/]+ (?P<fmt>[0-9 ]+)$")
_RTPMAP = re.compile(r"^a=rtpmap:([0-9]+) ")


class SdpRejected(ValueError):
    """The offer cannot be answered; ``reason`` is a stable word for the call's end reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class OfferInfo:
    sdp: str  # the offer as aiortc will be given it (static payload types made explicit)
    codec: str  # the codec our answer sends with: opus, pcmu or pcma
    payload_type: int  # the RTP payload type the caller sends it with
    data_channel: bool  # the offer negotiates an SCTP data channel (the /call page's events)


def with_static_rtpmaps(sdp: str) -> str:
    """Add ``a=rtpmap`` lines for static payload types 0 and 8 listed without one: RFC 3551 lets
    an offer omit them (SIP gateways do), aiortc only knows codecs from rtpmap lines."""
    sections: list[list[str]] = [[]]
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            sections.append([])
        if line:
            sections[-1].append(line)
    for section in sections[1:]:
        match = _MLINE.match(section[0].strip())
        if match is None:
            continue
        mapped = {int(m.group(1)) for line in section if (m := _RTPMAP.match(line))}
        section.extend(f"a=rtpmap:{pt} {STATIC_RTPMAPS[pt]}" for pt in map(int, match.group("fmt").split())
                       if pt in STATIC_RTPMAPS and pt not in mapped)
    return "".join(line + "\r\n" for section in sections for line in section)


def check_offer(sdp: object) -> OfferInfo:
    """The offer checked as a WebRTC audio offer we can answer; SdpRejected otherwise."""
    from aiortc.sdp import SessionDescription

    if not isinstance(sdp, str) or not sdp.strip():
        raise SdpRejected("bad_sdp", "the offer is empty: send the SDP of an RTCPeerConnection offer")
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise SdpRejected("bad_sdp", f"the offer is larger than {MAX_SDP_BYTES} bytes")
    if not sdp.lstrip().startswith("v=0"):
        raise SdpRejected("bad_sdp", "the offer is not an SDP description (it must start with v=0)")
    if "\x00" in sdp:
        raise SdpRejected("bad_sdp", "the offer contains a NUL character")
    normalized = with_static_rtpmaps(sdp.strip())
    try:
        parsed = SessionDescription.parse(normalized)
    except Exception as exc:  # aiortc's parser asserts / indexes on malformed lines
        raise SdpRejected("bad_sdp", f"the offer's SDP cannot be parsed ({type(exc).__name__})") from None
    if any(m.kind == "video" and m.port != 0 for m in parsed.media):
        raise SdpRejected("video_unsupported", "the offer has a video section: voicectl calls are audio only")
    audio = [m for m in parsed.media if m.kind == "audio" and m.port != 0 and m.direction != "inactive"]
    if not audio:
        raise SdpRejected("no_audio", "the offer has no active audio section (m=audio)")
    if len(audio) > 1:
        raise SdpRejected("bad_sdp", "the offer has more than one audio section: send one microphone track")
    media = audio[0]
    if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
        raise SdpRejected("bad_sdp", "the offer has no ICE credentials (a=ice-ufrag / a=ice-pwd)")
    if media.dtls is None or not media.dtls.fingerprints:
        raise SdpRejected("bad_sdp", "the offer has no DTLS fingerprint and setup role (a=fingerprint, "
                                     "a=setup): WebRTC media is DTLS-SRTP")
    if not media.rtcp_mux:
        raise SdpRejected("bad_sdp", "the offer does not multiplex RTCP (a=rtcp-mux is required)")
    offered = {}
    for c in media.rtp.codecs:
        offered.setdefault(c.mimeType.split("/", 1)[-1].lower(), c.payloadType)
    for name in CODEC_PREFERENCE:
        if name in offered:
            codec = name
            break
    else:
        shown = ", ".join(dict.fromkeys(offered)) or "none"
        raise SdpRejected("unsupported_codec", f"no supported audio codec offered (got {shown}; voicectl "
                                               "answers opus, PCMU or PCMA)")
    channel = any(m.kind == "application" and m.port != 0 for m in parsed.media)
    return OfferInfo(normalized, codec, offered[codec], channel)
