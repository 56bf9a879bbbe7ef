"""The agent in a call's LiveKit room, through the real-time SDK (``livekit.rtc``).

``RoomAgent.run`` joins the room as participant ``<agent_name>-<call id>`` (kind agent, token
signed with the project's key), publishes the agent's microphone track, waits for the caller's
audio track and hands both to ``LiveKitMedia``, which connects the call and starts the
conversation. The caller leaving (room event or webhook) ends the call; a room lost under the
agent fails it. ``LiveKitControl`` lets the engine hang up (RemoveParticipant: for a SIP caller,
the phone call ends) or transfer (TransferSIPParticipant) without knowing LiveKit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from runtime.telephony.livekit.bridge import LiveKitCall, bridge
from runtime.telephony.livekit.media import LiveKitMedia
from runtime.telephony.livekit.server import LiveKitUnavailable
from runtime.telephony.services import services

if TYPE_CHECKING:
    from aiohttp import web

    from runtime.calls.session import CallSession

log = logging.getLogger("voicectl.livekit")

# After the join gave up, a connect still under way in the SDK gets this long to finish (then left).
LATE_CONNECT_S = 10.0


def agent_identity(agent_name: str, call_id: str) -> str:
    return f"{agent_name}-{call_id}"


class RoomAgent:
    def __init__(self, app: web.Application, call: LiveKitCall) -> None:
        self.app, self.call = app, call
        self.identity = agent_identity(services(app).settings.telephony.livekit.agent_name, call.session.id)
        self.room: Any = None
        self.media: LiveKitMedia | None = None
        self._caller_track: asyncio.Future[Any] | None = None
        self._left = False
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = bridge(self.app).spawn(self.run())

    async def run(self) -> None:
        """The join task of one call: join, then start the media; fail the call if that cannot be done."""
        session = self.call.session
        timeout = services(self.app).settings.telephony.livekit.join_timeout_s
        try:
            async with asyncio.timeout(timeout):
                track = await self._join(timeout)
        except asyncio.CancelledError:
            await self.leave()
            raise
        except Exception as exc:
            reason = "the agent did not hear the caller in time" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("the agent could not join the LiveKit room",
                        extra={"call_id": session.id, "room": self.call.room, "error": type(exc).__name__})
            await self.leave()
            if session.live:
                await session.fail("agent_join_failed", reason[:300])
            return
        if not session.live:
            await self.leave()
            return
        try:
            await self.media.start(track)  # type: ignore[union-attr]
        except Exception:
            log.exception("the call's conversation could not be set up", extra={"call_id": session.id})
            await self.leave()
            if session.live:
                await session.fail("pipeline_unavailable", "the agent could not be started")

    async def _join(self, timeout: float) -> Any:
        from livekit import rtc

        call = self.call
        await call.server.check_destination()  # a tenant's LiveKit server: where tenants' URLs may go
        loop = asyncio.get_running_loop()
        self._caller_track = loop.create_future()
        room = self.room = rtc.Room(loop=loop)
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("participant_disconnected", self._on_participant_disconnected)
        room.on("disconnected", self._on_disconnected)
        token = call.server.agent_token(call.room, self.identity)
        connect = loop.create_task(room.connect(call.server.rtc_url, token,
                                                rtc.RoomOptions(auto_subscribe=True, connect_timeout=timeout)))
        try:
            await asyncio.shield(connect)
        except asyncio.CancelledError:
            connect.add_done_callback(self._leave_late_connect)
            raise
        self.media = LiveKitMedia(self.app, call.session)
        track = rtc.LocalAudioTrack.create_audio_track("voicectl-agent", self.media.source)
        options = rtc.TrackPublishOptions()
        options.source = rtc.TrackSource.SOURCE_MICROPHONE
        await room.local_participant.publish_track(track, options)
        for participant in room.remote_participants.values():  # published before the agent arrived
            if participant.identity == call.identity:
                for publication in participant.track_publications.values():
                    if publication.track is not None and publication.kind == rtc.TrackKind.KIND_AUDIO:
                        return publication.track
        return await self._caller_track

    def _leave_late_connect(self, connect: asyncio.Task) -> None:
        if not connect.cancelled() and connect.exception() is None and self.room is not None:
            bridge(self.app).spawn(self.room.disconnect())

    # Room events (sync callbacks of the SDK's event emitter)

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
        elif session.live:
            await session.fail("room_disconnected", f"the agent lost the LiveKit room (reason {reason})")

    async def leave(self) -> None:
        """Stop the media (its counts go to the call's summary) and leave the room; idempotent."""
        if self._left:
            return
        self._left = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()  # still joining
        if self._caller_track is not None and not self._caller_track.done():
            self._caller_track.cancel()
        if self.media is not None:
            await self.media.close()
        room = self.room
        if room is not None and room.isconnected():
            try:
                await room.disconnect()
            except Exception:
                log.exception("leaving the LiveKit room failed", extra={"call_id": self.call.session.id})


async def end_call(call: LiveKitCall, reason: str, hangup_by: str | None = None) -> None:
    """The caller left or the room closed: stop the agent, then archive (transferred when a transfer
    was under way: the SIP caller leaves the room once LiveKit has handed the call over)."""
    session = call.session
    if not session.live:
        return
    if call.agent is not None:
        await call.agent.leave()
    if session.state == "transferring":
        await session.end("transferred")
    else:
        await session.end(reason, hangup_by=hangup_by)


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
        call, session = self.call, self.call.session
        if not call.sip:
            await self._failed(session, "transfer_unsupported", "only SIP callers can be transferred")
            return
        try:
            await call.server.transfer_sip(call.room, call.identity, target)
        except LiveKitUnavailable as exc:
            await self._failed(session, "transfer_failed", exc.message)

    async def _failed(self, session: CallSession, reason: str, message: str) -> None:
        """The caller cannot be handed over and the conversation has stopped: end the call cleanly."""
        log.warning("livekit transfer failed", extra={"call_id": session.id, "reason": reason})
        if self.call.agent is not None:
            await self.call.agent.leave()
        await session.fail(reason, message)
        try:
            await self.call.server.remove_participant(self.call.room, self.call.identity)
        except LiveKitUnavailable:
            pass  # the caller may already be gone


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
