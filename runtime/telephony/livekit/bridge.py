"""Per-app state of the LiveKit bridge: live calls by room and participant, recently seen rooms,
webhook event ids (de-duplication), egress -> call, background tasks and the bridge's metrics."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import Counter

from runtime.calls.routing import ROUTE_TABLES, ReadCache
from runtime.ids import now_iso
from runtime.one_per import OnePer
from runtime.store.errors import UniqueViolation
from runtime.store.tables import ALL_TENANTS
from runtime.telephony.services import services

if TYPE_CHECKING:
    from runtime.calls.session import CallSession
    from runtime.store.store import Store
    from runtime.telephony.livekit.room import RoomAgent
    from runtime.telephony.livekit.server import LiveKitServer

# Webhook events counted by name; anything else is counted as "other" (a bounded label set).
KNOWN_EVENTS = ("room_started", "room_finished", "participant_joined", "participant_left",
                "participant_connection_aborted", "track_published", "track_unpublished", "egress_started",
                "egress_updated", "egress_ended", "ingress_started", "ingress_ended", "agent_job_started",
                "agent_job_ended")
REFUSALS = ("missing_token", "bad_token", "unknown_key", "bad_signature", "stale", "bad_body_hash", "bad_body",
            "malformed")
# Rooms and egresses are remembered this long after their call ends (room_finished, egress_ended
# usually arrive after participant_left).
RECENT_TTL_S = 3600.0
MAX_REMEMBERED = 100_000
# The livekit key map is re-read this often (credential writes by this process drop it at once;
# another process's, e.g. the CLI's, apply within this).
KEY_MAP_TTL_S = 1.0
KEY_PAGE = 200


class ExpiringSet:
    """Keys remembered for ``ttl_s`` (insertion order = expiry order), at most ``max_entries``."""

    def __init__(self, ttl_s: float, max_entries: int = MAX_REMEMBERED) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def _purge(self, now: float) -> None:
        entries = self._entries
        while entries and (next(iter(entries.values()))[0] <= now or len(entries) > self.max_entries):
            entries.popitem(last=False)

    def add(self, key: Any, value: Any = True) -> bool:
        """False when ``key`` is already there (and not expired)."""
        now = time.monotonic()
        self._purge(now)
        if key in self._entries:
            return False
        self._entries[key] = (now + self.ttl_s, value)
        return True

    def put(self, key: Any, value: Any) -> None:
        self._entries.pop(key, None)
        self.add(key, value)

    def get(self, key: Any) -> Any:
        found = self._entries.get(key)
        if found is None or found[0] <= time.monotonic():
            return None
        return found[1]

    def discard(self, key: Any) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(eq=False)
class LiveKitCall:
    """One caller in one room, served by one call session."""

    session: CallSession
    server: LiveKitServer  # the project the room lives on (whose key signed the webhook)
    room: str
    identity: str  # the caller's participant identity
    participant_sid: str
    sip: bool
    agent: RoomAgent | None = None
    tracks: list[str] = field(default_factory=list)
    egress_ids: list[str] = field(default_factory=list)  # every egress of the call (its summary)
    recording: list[str] = field(default_factory=list)  # those not stopped or ended yet
    egress_starting: bool = False  # an API start is waiting for LiveKit
    # A TransferSIPParticipant request is waiting for LiveKit's answer: the caller leaving meanwhile
    # is noted in ``left`` and the answer decides how the call ends (transferred or hung up).
    transfer_in_flight: bool = False
    left: tuple[str, str | None] | None = None  # (reason, hangup_by)


def sdk_room(loop: asyncio.AbstractEventLoop) -> Any:
    """A room of the real-time SDK (what RoomAgent joins with, unless a test gives its double)."""
    from livekit import rtc

    return rtc.Room(loop=loop)


class LiveKitBridge:
    def __init__(self, app: web.Application) -> None:
        self.room_factory: Callable[[asyncio.AbstractEventLoop], Any] = sdk_room
        self.rooms: dict[str, dict[str, LiveKitCall]] = {}  # room -> caller identity -> live call
        self.by_call: dict[str, LiveKitCall] = {}  # call id -> live call
        self.opening: set[tuple[str, str]] = set()  # (room, identity) whose call is being set up
        self.recent_rooms = ExpiringSet(RECENT_TTL_S)  # room -> tenant id of its last call
        self.egress = ExpiringSet(RECENT_TTL_S)  # egress id -> (tenant id, call id)
        self.tasks: set[asyncio.Task] = set()
        self._routes: ReadCache | None = None
        self._keys: ReadCache | None = None
        self._keys_lock = asyncio.Lock()
        registry = services(app).metrics.registry
        self.refused = Counter("voicectl_livekit_webhooks_refused",
                               "LiveKit webhooks refused before any work, by reason", ("reason",), registry=registry)
        for reason in REFUSALS:
            self.refused.labels(reason)
        self.received = Counter("voicectl_livekit_webhooks", "Verified LiveKit webhooks by event", ("event",),
                                registry=registry)
        self.duplicates = Counter("voicectl_livekit_webhook_duplicates",
                                  "Verified LiveKit webhooks dropped as repeats of an event id", registry=registry)
        self.dropped = Counter("voicectl_livekit_webhooks_dropped",
                               "Webhooks LiveKit reports it dropped (num_dropped of the deliveries that came)",
                               registry=registry)
        self.seen: ExpiringSet | None = None  # sized from the config on first use

    def seen_ids(self, max_age_s: float) -> ExpiringSet:
        # An id must be remembered at least as long as a delivery of it can still verify.
        if self.seen is None:
            self.seen = ExpiringSet(max_age_s + 120.0)
        return self.seen

    def routes(self, store: Store) -> ReadCache:
        """Dialled number -> ``store.route_by_e164`` (None: unknown), cached as the Twilio bridge does."""
        if self._routes is None:
            self._routes = ReadCache(store.route_by_e164, ROUTE_TABLES)
        return self._routes

    async def key_tenants(self, store: Store, api_key: str) -> tuple[str, ...]:
        """Ids of the tenants whose livekit credential has ``api_key``, the unverified ``iss`` of a
        delivery: looked up in one cached map of every livekit key, so forged deliveries with ever
        new keys cost no query while the map is fresh (and one scan per KEY_MAP_TTL_S at most)."""
        if self._keys is None:
            self._keys = ReadCache(lambda _: _key_map(store), ("credentials", "tenants"), ttl_s=KEY_MAP_TTL_S)
        async with self._keys_lock:  # concurrent deliveries wait for one refresh instead of each scanning
            keys = await self._keys.get(None)
        return keys.get(api_key, ())

    # Calls

    def add(self, call: LiveKitCall) -> None:
        self.rooms.setdefault(call.room, {})[call.identity] = call
        self.by_call[call.session.id] = call
        self.recent_rooms.put(call.room, call.session.tenant_id)

    def forget(self, call: LiveKitCall) -> None:
        if self.by_call.get(call.session.id) is call:
            del self.by_call[call.session.id]
        in_room = self.rooms.get(call.room)
        if in_room is not None and in_room.get(call.identity) is call:
            del in_room[call.identity]
            if not in_room:
                del self.rooms[call.room]

    def call(self, room: str, identity: str, scope: str | None) -> LiveKitCall | None:
        """The live call of ``identity`` in ``room``, if it belongs to ``scope`` (None: any tenant)."""
        found = self.rooms.get(room, {}).get(identity)
        if found is None or (scope is not None and found.session.tenant_id != scope):
            return None
        return found

    def in_room(self, room: str, scope: str | None) -> list[LiveKitCall]:
        return [c for c in self.rooms.get(room, {}).values() if scope is None or c.session.tenant_id == scope]

    def knows_room(self, room: str, scope: str | None) -> bool:
        tenant = self.recent_rooms.get(room)
        return tenant is not None and (scope is None or tenant == scope)

    # Room egress

    def egress_started(self, call: LiveKitCall, egress_id: str) -> None:
        """Note a running egress of ``call`` (started through the API or announced by egress_started)."""
        if egress_id not in call.recording:
            call.recording.append(egress_id)
        if egress_id not in call.egress_ids:
            call.egress_ids.append(egress_id)
            call.session.summary.setdefault("livekit", {})["egress_ids"] = list(call.egress_ids)
        self.egress.put(egress_id, (call.session.tenant_id, call.session.id))

    async def record_egress(self, store: Store, call: LiveKitCall, egress_id: str) -> None:
        """``egress_started``, and the egress -> call link stored: its egress_ended may come after
        a restart, or after the call and this process's memory of it are gone."""
        self.egress_started(call, egress_id)
        try:
            await store.livekit_egresses.insert({"id": egress_id, "tenant_id": call.session.tenant_id,
                                                 "call_id": call.session.id, "created_at": now_iso()})
        except UniqueViolation:  # a redelivered egress_started, or the API start's own
            pass

    async def egress_call(self, store: Store, egress_id: str, scope: str | None) -> tuple[str, str] | None:
        """(tenant id, call id) of an egress this runtime recorded (memory, then the store);
        ``scope``: the tenant whose key signed the delivery (None: the appliance's)."""
        known = self.egress.get(egress_id)
        if known is None:
            row = await store.livekit_egresses.get(egress_id, tenant_id=scope or ALL_TENANTS)
            known = (row["tenant_id"], row["call_id"]) if row is not None else None
        if known is None or (scope is not None and known[0] != scope):
            return None
        return known

    def egress_stopped(self, call_id: str, egress_id: str) -> None:
        """Stopped or ended: the call (if still live) may be recorded again."""
        call = self.by_call.get(call_id)
        if call is not None and egress_id in call.recording:
            call.recording.remove(egress_id)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


async def _key_map(store: Store) -> dict[str, tuple[str, ...]]:
    """API key -> ids of the tenants whose livekit credential has it (read-only: shared)."""
    found: dict[str, list[str]] = {}
    offset = 0
    while True:
        rows, _ = await store.credentials.list(tenant_id=ALL_TENANTS, equals={"provider": "livekit"},
                                               limit=KEY_PAGE, offset=offset, count=False)
        for row in rows:
            api_key = (row.get("fields") or {}).get("api_key")
            if isinstance(api_key, str) and api_key:
                found.setdefault(api_key, []).append(row["tenant_id"])
        if len(rows) < KEY_PAGE:
            return {k: tuple(v) for k, v in found.items()}
        offset += KEY_PAGE


# The app's bridge: bridge(app).
bridge: OnePer[web.Application, LiveKitBridge] = OnePer(LiveKitBridge)
