"""A double of ``livekit.rtc.Room`` that lets the agent live in a room of the local peer.

No LiveKit server can run here, so the SDK's ``Room.connect`` can never succeed. ``RoomDouble``
takes its place behind RoomAgent's one seam (``bridge(app).room_factory``) and behaves as the
SDK's room does for what the agent uses (livekit/rtc/room.py, the installed SDK):

- it is the SDK's own ``EventEmitter`` and emits the SDK's events with the SDK's arguments
  (``Room.on``'s list; ``Room._on_room_event``): ``participant_connected(participant)``,
  ``participant_attributes_changed(changed_attributes, participant)`` after updating the
  participant's attributes, ``track_published(publication, participant)``,
  ``track_subscribed(track, publication, participant)`` after marking the publication
  subscribed, ``participant_disconnected(participant)`` after removing it, ``disconnected(reason)``;
  each on a later turn of the loop, as the SDK's FFI queue delivers them;
- its participants and publications are the SDK's real ``rtc.RemoteParticipant`` and
  ``rtc.RemoteTrackPublication`` built from the SDK's protobufs with no native handle (handle 0:
  nothing to drop); ``set_subscribed`` is the one method that would talk to the server, and asks
  the peer instead;
- a subscribed caller track is a real ``rtc.LocalAudioTrack`` fed by the peer's ``AudioSource``
  for that caller (the SDK's ``AudioStream`` reads it as it reads a remote track), and the agent's
  published track is the real local track, so a test can listen to what the agent says.

What the room does (who is in it, their ``sip.callStatus``, answering once the agent has published)
is the peer's (tests/livekit/support.py ``LiveKitPeer``), as it is LiveKit's.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from livekit import api, rtc
from livekit.protocol import models
from livekit.rtc._proto import handle_pb2, participant_pb2, track_pb2

if TYPE_CHECKING:
    from tests.livekit.support import LiveKitPeer

KINDS = {models.ParticipantInfo.Kind.STANDARD: participant_pb2.PARTICIPANT_KIND_STANDARD,
         models.ParticipantInfo.Kind.SIP: participant_pb2.PARTICIPANT_KIND_SIP,
         models.ParticipantInfo.Kind.AGENT: participant_pb2.PARTICIPANT_KIND_AGENT}
NO_HANDLE = handle_pb2.FfiOwnedHandle(id=0)  # the SDK's INVALID_HANDLE: never dropped natively


def remote_participant(info: models.ParticipantInfo) -> rtc.RemoteParticipant:
    """The SDK's participant for the server's ``ParticipantInfo`` (as the FFI would report it)."""
    owned = participant_pb2.OwnedParticipant(handle=NO_HANDLE, info=participant_pb2.ParticipantInfo(
        sid=info.sid, identity=info.identity, name=info.name, kind=KINDS.get(info.kind, 0),
        attributes=dict(info.attributes)))
    return rtc.RemoteParticipant(owned)


class PeerPublication(rtc.RemoteTrackPublication):
    """The SDK's remote publication; subscribing asks the peer, as the SDK asks the server."""

    def __init__(self, room: RoomDouble, identity: str, track: models.TrackInfo) -> None:
        super().__init__(track_pb2.OwnedTrackPublication(handle=NO_HANDLE, info=track_pb2.TrackPublicationInfo(
            sid=track.sid, name=track.name, kind=track_pb2.KIND_AUDIO, source=track_pb2.SOURCE_MICROPHONE,
            remote=True)))
        self.room, self.identity = room, identity
        self.subscribe_requests = 0

    def set_subscribed(self, subscribed: bool) -> None:
        self.subscribe_requests += 1
        if subscribed:
            self.room.later(self.room._subscribed, self)


class LocalParticipantDouble:
    def __init__(self, room: RoomDouble) -> None:
        self.room = room
        self.published: list[tuple[rtc.LocalAudioTrack, Any]] = []

    async def publish_track(self, track: rtc.LocalAudioTrack, options: Any) -> None:
        self.published.append((track, options))
        self.room.peer.agent_published(self.room.name)


class RoomDouble(rtc.EventEmitter):
    def __init__(self, peer: LiveKitPeer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.peer, self.loop = peer, loop
        self.name = ""
        self.identity = ""
        self.options: Any = None
        self.local_participant = LocalParticipantDouble(self)
        self._remote: dict[str, rtc.RemoteParticipant] = {}
        self._connected = False

    @property
    def remote_participants(self) -> dict[str, rtc.RemoteParticipant]:
        return self._remote

    def isconnected(self) -> bool:
        return self._connected

    async def connect(self, url: str, token: str, options: Any = None) -> None:
        """Checked by the peer as LiveKit checks a join (the token's key, grants and room)."""
        claims = self.peer.join(self, url, token)
        self.name, self.identity, self.options = claims.video.room, claims.identity, options
        self._connected = True
        for info in self.peer.rooms.get(self.name, {}).values():
            if info.identity != self.identity:
                self._add(info)

    async def disconnect(self, *, reason: int = rtc.DisconnectReason.CLIENT_INITIATED) -> None:
        if not self._connected:
            return
        self._connected = False
        self.peer.left(self)
        self.emit("disconnected", reason)

    def later(self, fn: Any, *args: Any) -> None:
        """Room events arrive on a later turn of the loop (the SDK's FFI queue)."""
        self.loop.call_soon(fn, *args)

    # What the peer tells the room (LiveKit's signal connection)

    def _add(self, info: models.ParticipantInfo) -> rtc.RemoteParticipant:
        participant = remote_participant(info)
        for track in info.tracks:
            publication = PeerPublication(self, info.identity, track)
            participant._track_publications[publication.sid] = publication
        self._remote[info.identity] = participant
        return participant

    def participant_joined(self, info: models.ParticipantInfo) -> None:
        def run() -> None:
            participant = self._add(info)
            self.emit("participant_connected", participant)
            for publication in participant.track_publications.values():
                self.emit("track_published", publication, participant)
        self.later(run)

    def attributes_changed(self, identity: str, changed: dict[str, str]) -> None:
        def run() -> None:
            participant = self._remote.get(identity)
            if participant is not None:
                participant._info.attributes.update(changed)
                self.emit("participant_attributes_changed", dict(changed), participant)
        self.later(run)

    def participant_left(self, identity: str, reason: int) -> None:
        def run() -> None:
            participant = self._remote.pop(identity, None)
            if participant is not None:
                participant._info.disconnect_reason = reason
                self.emit("participant_disconnected", participant)
        self.later(run)

    def lost(self, reason: int) -> None:
        """The server dropped the agent (room deleted, server shut down)."""
        def run() -> None:
            if self._connected:
                self._connected = False
                self.peer.left(self)
                self.emit("disconnected", reason)
        self.later(run)

    def _subscribed(self, publication: PeerPublication) -> None:
        participant = self._remote.get(publication.identity)
        if participant is None or not self._connected:
            return
        publication._subscribed = True
        publication._track = track = self.peer.caller_track(self.name, publication.identity)
        self.emit("track_subscribed", track, publication, participant)

    def published_track(self) -> rtc.LocalAudioTrack:
        return self.local_participant.published[0][0]


def verify(keys: dict[str, str], token: str) -> api.access_token.Claims:
    for key, secret in keys.items():
        try:
            return api.TokenVerifier(key, secret).verify(token)
        except Exception:
            continue
    raise rtc.ConnectError("invalid token")
