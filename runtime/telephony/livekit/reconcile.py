"""A safety net for lost webhooks: SIP callers in rooms this runtime never heard of.

LiveKit posts webhooks from a bounded queue that drops deliveries when it is full, and retries a
failed delivery a few times only (livekit/protocol webhook/url_notifier.go: QueueSize 100,
DropWhenFull, go-retryablehttp); the next delivery that gets through carries ``num_dropped``. A
lost ``participant_joined`` would leave a SIP caller ringing until LiveKit gives up (3 minutes).
So rooms that may hold such a caller are checked with RoomService.ListParticipants once every
``telephony.livekit.reconcile_interval_s``: a room announced by ``room_started`` (or a SIP
participant's ``track_published``) that still has no call, and every room of a project
(ListRooms) after it reported dropped deliveries. Each SIP participant without a call there is
admitted as its ``participant_joined`` would have been. The task runs only while there is
something to check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from aiohttp import web
from prometheus_client import Counter

from runtime.one_per import OnePer
from runtime.telephony.livekit.auth import VerifiedEvent
from runtime.telephony.livekit.bridge import bridge
from runtime.telephony.livekit.callers import KIND_SIP, participant_joined
from runtime.telephony.livekit.server import LiveKitServer, LiveKitUnavailable
from runtime.telephony.services import services

log = logging.getLogger("voicectl.livekit")

MAX_WATCHED = 10_000  # rooms waiting for their check; more are not watched
ROOMS_PER_SWEEP = 200  # ListParticipants requests in one sweep (the rest wait for the next)


class Reconciler:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        # (project url, api key, room) -> (project, monotonic time the room is due)
        self.rooms: OrderedDict[tuple[str, str, str], tuple[LiveKitServer, float]] = OrderedDict()
        self.gaps: dict[tuple[str, str], LiveKitServer] = {}  # projects that reported dropped webhooks
        self.task: asyncio.Task | None = None
        self.found = Counter("voicectl_livekit_reconciled_callers",
                             "SIP callers found in a room without a call (their participant_joined was lost)",
                             registry=services(app).metrics.registry)

    @property
    def interval_s(self) -> float:
        return services(self.app).settings.telephony.livekit.reconcile_interval_s

    def watch(self, server: LiveKitServer, room: str) -> None:
        """Check ``room`` one interval from now, unless it has a call by then."""
        key = (server.url, server.api_key, room)
        if not self.interval_s or key in self.rooms or len(self.rooms) >= MAX_WATCHED:
            return
        self.rooms[key] = (server, time.monotonic() + self.interval_s)
        self._ensure_running()

    def gap(self, server: LiveKitServer) -> None:
        """``server`` dropped webhooks: check all its rooms at the next sweep."""
        if self.interval_s:
            self.gaps[(server.url, server.api_key)] = server
            self._ensure_running()

    def _ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = bridge(self.app).spawn(self._run())

    async def _run(self) -> None:
        while self.rooms or self.gaps:
            await asyncio.sleep(self.interval_s)
            if not services(self.app).tracker.accepting:
                return  # shutting down
            try:
                await self.sweep()
            except Exception:
                log.exception("checking LiveKit rooms for lost callers failed")

    async def sweep(self) -> None:
        gaps, self.gaps = self.gaps, {}
        for server in gaps.values():
            try:
                names = await server.list_rooms()
            except LiveKitUnavailable:
                continue  # logged by the server client
            for name in names:
                if len(self.rooms) < MAX_WATCHED:
                    self.rooms.setdefault((server.url, server.api_key, name), (server, 0.0))
        now, due = time.monotonic(), []
        for key, (server, at) in list(self.rooms.items()):
            if len(due) >= ROOMS_PER_SWEEP:
                break
            if at <= now:
                del self.rooms[key]
                due.append((server, key[2]))
        for server, room in due:
            await self._check(server, room)

    async def _check(self, server: LiveKitServer, room: str) -> None:
        from livekit.protocol.models import Room
        from livekit.protocol.webhook import WebhookEvent

        br = bridge(self.app)
        if any(c.server.url == server.url and c.server.api_key == server.api_key for c in br.in_room(room, None)):
            return  # the room's call is known
        try:
            participants = await server.list_participants(room)
        except LiveKitUnavailable:
            return
        for participant in participants:
            if participant.kind != KIND_SIP or br.call(room, participant.identity, server.tenant_id) is not None:
                continue
            if participant.attributes.get("sip.callStatus") == "hangup":
                continue
            event = WebhookEvent(event="participant_joined", room=Room(name=room), participant=participant,
                                 created_at=int(time.time()))
            answer = await participant_joined(self.app, br, VerifiedEvent(event, server))
            self.found.inc()
            log.warning("a SIP caller without a call found in a LiveKit room (its participant_joined was lost)",
                        extra={"room": room, "status": answer.status})


# The app's reconciler: reconciler(app).
reconciler: OnePer[web.Application, Reconciler] = OnePer(Reconciler)
