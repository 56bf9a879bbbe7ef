"""ICE for the runtime's WebRTC peers: the configured STUN/TURN servers, and host candidates on
extra local addresses.

With no ICE server configured the peer gets an explicit empty list: aiortc otherwise falls back
to Google's public STUN server, and on a box without Internet access every answer would wait
for that query to time out.

aioice gathers host candidates on the interface addresses except 127.0.0.1. For
``telephony.webrtc.host_candidates`` (e.g. 127.0.0.1 for a caller on the same box) the peer's
ICE agent binds one more socket per address with aioice's own
``Connection.get_component_candidates`` before the answer is made, so connectivity checks on
those addresses are answered like any other; their candidates are then written into the answer's
media sections. Nothing of aioice is replaced or patched.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcicetransport import RTCIceGatherer, candidate_from_aioice
from aiortc.sdp import candidate_to_sdp

from runtime.config import IceServer, WebRTCSettings

COMPONENT_RTP = 1  # rtcp-mux: one ICE component


def ice_servers(settings: WebRTCSettings) -> list[RTCIceServer]:
    servers = []
    for item in settings.ice_servers:
        if isinstance(item, IceServer):
            servers.append(RTCIceServer(urls=list(item.urls), username=item.username, credential=item.credential))
        else:
            servers.append(RTCIceServer(urls=item))
    return servers


def rtc_configuration(settings: WebRTCSettings) -> RTCConfiguration:
    return RTCConfiguration(iceServers=ice_servers(settings))


def browser_ice_servers(settings: WebRTCSettings) -> list[dict[str, Any]]:
    """The same servers in the shape of the browser's ``RTCPeerConnection({iceServers})``."""
    out: list[dict[str, Any]] = []
    for item in settings.ice_servers:
        if isinstance(item, IceServer):
            entry: dict[str, Any] = {"urls": list(item.urls)}
            if item.username is not None:
                entry["username"] = item.username
            if item.credential is not None:
                entry["credential"] = item.credential
            out.append(entry)
        else:
            out.append({"urls": [item]})
    return out


def _gatherers(pc: RTCPeerConnection) -> list[RTCIceGatherer]:
    """The peer's ICE gatherers (one when the offer bundles its sections), after setRemoteDescription."""
    found: dict[int, RTCIceGatherer] = {}
    transports = [t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for dtls in transports:
        if dtls is not None:
            gatherer = dtls.transport.iceGatherer
            found[id(gatherer)] = gatherer
    return list(found.values())


async def add_host_candidates(pc: RTCPeerConnection, addresses: list[str]) -> list[str]:
    """Bind the peer's ICE agent(s) on ``addresses`` too; the SDP ``a=candidate`` values to add
    to the answer. Call after setRemoteDescription and before setLocalDescription."""
    if not addresses:
        return []
    lines: list[str] = []
    for gatherer in _gatherers(pc):
        connection = gatherer._connection  # aiortc keeps its aioice Connection here
        # STUN and TURN make no sense from these addresses (loopback): host candidates only.
        stun, turn = connection.stun_server, connection.turn_server
        connection.stun_server = connection.turn_server = None
        try:
            candidates = await connection.get_component_candidates(COMPONENT_RTP, addresses)
        finally:
            connection.stun_server, connection.turn_server = stun, turn
        lines += [candidate_to_sdp(candidate_from_aioice(c)) for c in candidates]
    return lines


def with_candidates(sdp: str, candidates: list[str]) -> str:
    """``sdp`` with ``a=candidate:`` lines added to every media section (before end-of-candidates)."""
    if not candidates:
        return sdp
    extra = "".join(f"a=candidate:{c}\r\n" for c in candidates)
    out: list[str] = []
    sections = sdp.split("\r\nm=")
    for index, section in enumerate(sections):
        if index == 0:
            out.append(section)
            continue
        marker = "a=end-of-candidates"
        if marker in section:
            section = section.replace(marker, extra + marker, 1)
        else:
            section = section.rstrip("\r\n") + "\r\n" + extra.rstrip("\r\n")
        out.append(section)
    text = "\r\nm=".join(out)
    return text if text.endswith("\r\n") else text + "\r\n"
