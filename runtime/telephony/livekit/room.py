"""The agent in a call's LiveKit room, through the real-time SDK (``livekit.rtc``).

``RoomAgent.run`` joins the room as participant ``<agent_name>-<call id>`` (kind agent, token
signed with the project's key) and publishes the agent's microphone track. LiveKit SIP answers
the phone call only once it has subscribed to a track in the room, and reports it in the SIP
participant's ``sip.callStatus`` attribute ("ringing" when it joins, then "active"; livekit/sip
pkg/sip/inbound.go: joinRoom with CallRinging, waitSubscribe, acceptCall -> setStatus(CallActive)).
So the agent waits for "active" before it speaks (a greeting sent earlier loses its first words)
or transfers (LiveKit refuses to transfer a call not yet established). It subscribes to its own
caller's audio only (auto-subscribe off): any other track in the room is not the call's.
Then ``LiveKitMedia`` connects the call and starts the conversation, or, after hours, the caller is
handed to the escalation target. The caller leaving (room event or webhook) ends the call; a room
lost under the agent, or a join that fails, fails it and removes the caller.

The room comes from ``bridge(app).room_factory`` (the SDK's ``rtc.Room``); tests replace it with a
double that emits the SDK's events (livekit/rtc/room.py ``Room.on``: participant_connected,
participant_attributes_changed(changed, participant), track_published(publication, participant),
track_subscribed(track, publication, participant), participant_disconnected(participant),
disconnected(reason)).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from runtime.telephony.livekit.bridge import LiveKitCall, bridge
from runtime.telephony.livekit.ending import end_call, fail_call
from runtime.telephony.livekit.media import LIVEKIT_RATE, LiveKitMedia
from runtime.telephony.livekit.transfer import transfer_call
from runtime.telephony.services import services

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("voicectl.livekit")

# After the join gave up, a connect still under way in the SDK gets this long to finish (then left).
LATE_CONNECT_S = 10.0
CALL_STATUS = "sip.callStatus"  # livekit/protocol livekit/attrs.go AttrSIPCallStatus


def agent_identity(agent_name: str, call_id: str) -> str:
    return f"{agent_name}-{call_id}"


class RoomAgent:
    """``transfer_to``: after hours, hand the caller to this target once LiveKit has answered, with
    no conversation."""

    def __init__(self, app: web.Application, call: LiveKitCall, transfer_to: str | None = None) -> None:
        self.app, self.call, self.transfer_to = app, call, transfer_to
        self.identity = agent_identity(services(app).settings.telephony.livekit.agent_name, call.session.id)
        self.room: Any = None
        self.media: LiveKitMedia | None = None
        self._source: Any = None  # the agent's track's source when there is no media (after hours)
        self._caller_track: asyncio.Future[Any] | None = None
        self._answered: asyncio.Future[None] | None = None
        self._left = False
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = bridge(self.app).spawn(self.run())

    async def run(self) -> None:
        """The join task of one call: join, wait for the answer, then converse (or transfer)."""
        session = self.call.session
        timeout = services(self.app).settings.telephony.livekit.join_timeout_s
        track = None
        phase = "the agent did not join the room in time"
        try:
            async with asyncio.timeout(timeout):
                await self._join(timeout)
                phase = "LiveKit did not answer the SIP call in time (sip.callStatus never became active)"
                await self._answered  # type: ignore[misc]
                phase = "the agent did not hear the caller in time"
                if self.transfer_to is None:
                    track = await self._caller_track  # type: ignore[misc]
        except asyncio.CancelledError:
            await self.leave()
            raise
        except Exception as exc:
            reason = phase if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
            log.warning("the agent could not join the LiveKit room",
                        extra={"call_id": session.id, "room": self.call.room, "error": type(exc).__name__})
            await fail_call(self.call, "agent_join_failed", reason[:300])
            return
        if not session.live:
            await self.leave()
            return
        if self.transfer_to is not None:
            await transfer_call(self.call, self.transfer_to, after_hours=True)
            return
        try:
            await self.media.start(track)  # type: ignore[union-attr]
        except Exception:
            log.exception("the call's conversation could not be set up", extra={"call_id": session.id})
            await fail_call(self.call, "pipeline_unavailable", "the agent could not be started")

    async def _join(self, timeout: float) -> None:
        from livekit import rtc

        call = self.call
        await call.server.check_destination()  # a tenant's LiveKit server: where tenants' URLs may go
        loop = asyncio.get_running_loop()
        self._caller_track = loop.create_future()
        self._answered = loop.create_future()
        if not call.sip:
            self._answered.set_result(None)  # a browser or app: connected when it joined
        room = self.room = bridge(self.app).room_factory(loop)
        room.on("participant_connected", self._on_participant_connected)
        room.on("participant_attributes_changed", self._on_attributes_changed)
        room.on("track_published", self._on_track_published)
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("participant_disconnected", self._on_participant_disconnected)
        room.on("disconnected", self._on_disconnected)
        token = call.server.agent_token(call.room, self.identity)
        options = rtc.RoomOptions(auto_subscribe=False, connect_timeout=timeout)
        connect = loop.create_task(room.connect(call.server.rtc_url, token, options))
        try:
            await asyncio.shield(connect)
        except asyncio.CancelledError:
            connect.add_done_callback(self._leave_late_connect)
            raise
        if self.transfer_to is None:
            self.media = LiveKitMedia(self.app, call.session)
            source = self.media.source
        else:  # a silent track: LiveKit SIP answers once it has subscribed to one
            source = self._source = rtc.AudioSource(LIVEKIT_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("voicectl-agent", source)
        publish = rtc.TrackPublishOptions()
        publish.source = rtc.TrackSource.SOURCE_MICROPHONE
        await room.local_participant.publish_track(track, publish)
        caller = room.remote_participants.get(call.identity)  # in the room before the agent
        if caller is not None:
            self._caller_present(caller)

    def _leave_late_connect(self, connect: asyncio.Task) -> None:
        if not connect.cancelled() and connect.exception() is None and self.room is not None:
            bridge(self.app).spawn(self.room.disconnect())

    # The caller

    def _caller_present(self, participant: Any) -> None:
        self._call_status(participant)
        if self.transfer_to is None:
            for publication in list(participant.track_publications.values()):
                self._subscribe(publication)

    def _call_status(self, participant: Any) -> None:
        """Answered once the SIP participant reports "active"; "hangup": the caller has gone."""
        if not self.call.sip:
            return
        status = participant.attributes.get(CALL_STATUS)
        answered = self._answered
        if status == "active" and answered is not None and not answered.done():
            answered.set_result(None)
        elif status == "hangup" and self.call.session.live:
            bridge(self.app).spawn(end_call(self.call, "caller_hangup", hangup_by="caller"))

    def _subscribe(self, publication: Any) -> None:
        from livekit import rtc

        if publication.kind == rtc.TrackKind.KIND_AUDIO and not publication.subscribed:
            publication.set_subscribed(True)

    # Room events (sync callbacks of the SDK's event emitter)

    def _on_participant_connected(self, participant: Any) -> None:
        if participant.identity == self.call.identity:
            self._caller_present(participant)

    def _on_attributes_changed(self, changed: dict[str, str], participant: Any) -> None:
        if participant.identity == self.call.identity and CALL_STATUS in changed:
            self._call_status(participant)

    def _on_track_published(self, publication: Any, participant: Any) -> None:
        if participant.identity == self.call.identity and self.transfer_to is None:
            self._subscribe(publication)

    def _on_track_subscribed(self, track: Any, publication: Any, participant: Any) -> None:
        from livekit import rtc

        future = self._caller_track
        if (participant.identity == self.call.identity and track.kind == rtc.TrackKind.KIND_AUDIO
                and future is not None and not future.done()):
            future.set_result(track)

    def _on_participant_disconnected(self, participant: Any) -> None:
        if participant.identity == self.call.identity:
            bridge(self.app).spawn(end_call(self.call, "caller_hangup", hangup_by="caller"))

    def _on_disconnected(self, reason: Any) -> None:
        if not self._left and self.call.session.live:
            bridge(self.app).spawn(self._room_lost(reason))

    async def _room_lost(self, reason: Any) -> None:
        await self.leave()
        session = self.call.session
        if session.state == "transferring":
            await session.end("transferred")
        else:
            await fail_call(self.call, "room_disconnected", f"the agent lost the LiveKit room (reason {reason})")

    async def leave(self) -> None:
        """Stop the media (its counts go to the call's summary) and leave the room; idempotent."""
        if self._left:
            return
        self._left = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()  # still joining
        for future in (self._caller_track, self._answered):
            if future is not None and not future.done():
                future.cancel()
        if self.media is not None:
            await self.media.close()
        if self._source is not None:
            await self._source.aclose()
        room = self.room
        if room is not None and room.isconnected():
            try:
                await room.disconnect()
            except Exception:
                log.exception("leaving the LiveKit room failed", extra={"call_id": self.call.session.id})


class LiveKitControl:
    """CallControl for a caller in a LiveKit room."""

    def __init__(self, call: LiveKitCall) -> None:
        self.call = call

    async def hangup(self, reason: str) -> None:
        call = self.call
        if call.agent is not None:
            await call.agent.leave()
        await call.server.remove_participant(call.room, call.identity)

    async def transfer(self, target: str) -> None:
        if not self.call.sip:
            await fail_call(self.call, "transfer_unsupported", "only SIP callers can be transferred")
            return
        await transfer_call(self.call, target)


def release_sdk() -> None:
    """Shut the LiveKit SDK's native runtime down while the interpreter is still whole (when the
    SDK was loaded at all). The SDK's own atexit hook runs during interpreter teardown, and a room
    connect still retrying in a native thread then calls back into it and aborts the process
    (exit 134). Call once the event loop is done with LiveKit."""
    import sys

    ffi = sys.modules.get("livekit.rtc._ffi_client")
    client = getattr(getattr(ffi, "FfiClient", None), "_instance", None)
    if client is not None:
        client._dispose()  # what the SDK's atexit hook calls; idempotent
