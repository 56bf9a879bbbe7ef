"""The tracker of live calls: box and tenant limits, crash recovery, drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from runtime.calls.admission import ClusterAdmission, DailyOutbound
from runtime.calls.call_record import CallRecordWriter
from runtime.calls.integrator_sessions import Speaking, Transcribe
from runtime.calls.outbound import OutboundCall
from runtime.calls.routing import CallRoute, RouteRejected, route_call
from runtime.calls.session import LIVE_STATES, QUEUED, CallSession
from runtime.calls.stale_calls import fail_stale_call
from runtime.events.bus import EventBus
from runtime.ids import new_id
from runtime.recording.recorder import CallRecorder
from runtime.recording.storage import LocalStorage
from runtime.recording.upload import RecordingUploader
from runtime.store.errors import UniqueViolation
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS

log = logging.getLogger("voicectl.calls")
# At shutdown: provider hangups in flight at once, and how long one may take.
HANGUP_CONCURRENCY = 64
HANGUP_TIMEOUT_S = 3.0
ENDED_SESSIONS_KEPT = 10_000  # integrator sessions of ended calls still answered 409 (not 404)
# At shutdown: how long the records of the last calls (and their analyses) may still take.
RECORDS_GRACE_S = 5.0


class Holdings(Protocol):
    """Cluster mode (runtime.cluster.remote_calls): the ids this instance answers for to its peers."""

    def hold(self, target_id: str) -> None: ...
    def release(self, target_id: str) -> None: ...
    def ended(self, session_id: str) -> None:
        """A session that stopped with its call: still answered for a while (``say`` is a 409, not a 404)."""


class DuplicateCall(Exception):
    """A call with this provider call id exists already (a retried webhook that reached this
    instance while another opened the call): nothing was stored."""

    def __init__(self, provider: str, provider_call_id: str | None) -> None:
        super().__init__(f"{provider} call {provider_call_id} has a call already")
        self.provider, self.provider_call_id = provider, provider_call_id


class LiveCalls(dict[str, CallSession]):
    """call id -> live session, with a count per tenant kept as calls come and go, so the
    tenant limit check on every new call is O(1) (a scan was O(live calls) per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.per_tenant: dict[str, int] = {}

    def _added(self, session: CallSession) -> None:
        self.per_tenant[session.tenant_id] = self.per_tenant.get(session.tenant_id, 0) + 1

    def _removed(self, session: CallSession) -> None:
        left = self.per_tenant.get(session.tenant_id, 0) - 1
        if left > 0:
            self.per_tenant[session.tenant_id] = left
        else:
            self.per_tenant.pop(session.tenant_id, None)

    def __setitem__(self, call_id: str, session: CallSession) -> None:
        old = self.get(call_id)
        if old is not None:
            self._removed(old)
        super().__setitem__(call_id, session)
        self._added(session)

    def __delitem__(self, call_id: str) -> None:
        session = self[call_id]
        super().__delitem__(call_id)
        self._removed(session)

    _MISSING = object()

    def pop(self, call_id: str, default: object = _MISSING) -> object:
        if call_id in self:
            session = super().pop(call_id)
            self._removed(session)
            return session
        if default is LiveCalls._MISSING:
            raise KeyError(call_id)
        return default

    def popitem(self) -> tuple[str, CallSession]:
        call_id, session = super().popitem()
        self._removed(session)
        return call_id, session

    def clear(self) -> None:
        super().clear()
        self.per_tenant.clear()

    def setdefault(self, call_id: str, session: CallSession) -> CallSession:  # type: ignore[override]
        if call_id not in self:
            self[call_id] = session
        return self[call_id]

    def update(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        for call_id, session in dict(*args, **kwargs).items():
            self[call_id] = session


class CallTracker:
    def __init__(self, store: Store, bus: EventBus, *, max_calls: int, recording_dir: Path | None = None,
                 uploader: RecordingUploader | None = None, local_calls: int | None = None,
                 local_load: Callable[[CallRoute], Awaitable[float]] | None = None,
                 recorder: CallRecordWriter | None = None, instance_id: str | None = None,
                 admission: ClusterAdmission | None = None) -> None:
        self.store = store
        # This runtime among several (kept on each call's row), and the limits that hold across
        # them (cluster mode; None: this process's own counts are the whole truth).
        self.instance_id = instance_id
        self.admission = admission
        self.bus = bus
        self.max_calls = max_calls
        # Calls whose speech runs on this box's own engines, with what each takes of the budget
        # (``limits.local_calls``, in calls of the appliance's Whisper model); ``local_load`` tells a
        # routed call's share (0: its speech runs elsewhere; more than 1: a heavier model).
        self.local_calls = local_calls
        self.local_load = local_load
        self.local_live: dict[str, float] = {}
        # Where recordings go (tenants with recording_enabled); None: nothing is recorded.
        self.recording = LocalStorage(recording_dir) if recording_dir is not None else None
        # Copies finished recordings to tenants' S3 storage in the background; None: local only.
        self.uploader = uploader
        self.live: LiveCalls = LiveCalls()
        # Transcribe and speaking sessions of calls that ended here, newest last (bounded): a
        # ``say`` on one is a 409 ``session_stopped``, not a 404.
        self.ended_sessions: OrderedDict[str, Transcribe | Speaking] = OrderedDict()
        # Cluster mode: told of every call and integrator session held here, and of their release.
        self.holdings: Holdings | None = None
        self.accepting = True
        # Writes each ended call's operations record (outcome, follow-up, summary) in a task of its own.
        self.recorder = recorder
        self.records: set[asyncio.Task[None]] = set()

    @property
    def at_capacity(self) -> bool:
        return len(self.live) >= self.max_calls

    @property
    def local_in_use(self) -> float:
        return sum(self.local_live.values())

    @property
    def local_at_capacity(self) -> bool:
        return self.local_calls is not None and self.local_in_use >= self.local_calls

    def local_fits(self, load: float) -> bool:
        """One more call taking ``load`` of the local budget fits (any load fits an idle box, so a
        call of a model heavier than the whole budget is still answered alone)."""
        return self.local_calls is None or not self.local_live or self.local_in_use + load <= self.local_calls + 1e-9

    async def _local_load(self, route: CallRoute) -> float:
        if self.local_load is None or self.local_calls is None:
            return 0.0
        return await self.local_load(route)

    def live_for(self, tenant_id: str) -> int:
        return self.live.per_tenant.get(tenant_id, 0)

    def get(self, call_id: str) -> CallSession | None:
        return self.live.get(call_id)

    async def open_call(
        self, *, to_number: str | None, from_number: str | None, provider: str, direction: str = "inbound",
        provider_call_id: str | None = None, tenant_hint: str | None = None, now: datetime | None = None,
        routing: dict | None = None, route: CallRoute | None = None, tags: dict[str, Any] | None = None,
    ) -> CallSession:
        """Route and register a call (``route``: already routed, e.g. pinned to a version). A
        rejected call whose tenant is known keeps a failed row and a voice.call.failed event;
        RouteRejected is raised for the bridge to answer the caller. ``tags``: kept in the call's
        metadata (an evaluation's id)."""
        try:
            if not self.accepting:
                raise RouteRejected("shutting_down", "the runtime is shutting down", tenant_hint)
            if self.at_capacity:
                raise RouteRejected("busy", "the runtime is at its call limit", tenant_hint)
            if route is None:
                route = await route_call(self.store, to_number, now or datetime.now(UTC), routing, from_number)
            if self.live_for(route.tenant_id) >= route.tenant["max_concurrent_calls"]:
                raise RouteRejected("tenant_call_limit", "the tenant is at its concurrent-call limit",
                                    route.tenant_id, route.number["id"])
            local = await self._local_load(route)
            if local and not self.local_fits(local):  # busy now, not a silent line later
                raise RouteRejected("busy", "the local speech engines are at capacity", route.tenant_id,
                                    route.number["id"])
            session = self._session(route.tenant_id, route, provider, direction, from_number, to_number,
                                    provider_call_id)
            session.tags.update(tags or {})
            await self._register(session, route, local, route.number["id"])  # the cluster's limits
        except RouteRejected as rejected:
            tenant_id = rejected.tenant_id or tenant_hint
            if tenant_id is not None:
                session = self._session(tenant_id, None, provider, direction, from_number, to_number,
                                        provider_call_id)
                session.tags.update(tags or {})
                try:  # stored already failed: the refused call never holds a slot of any limit
                    await session.refuse(rejected.reason, rejected.message)
                except UniqueViolation:
                    raise DuplicateCall(provider, provider_call_id) from None
            raise
        return session

    async def adopt(self, row: dict[str, Any], route: CallRoute, outbound: OutboundCall | None = None) -> CallSession:
        """Run here a call another instance opened and still awaits its media (its stream token was
        spent here): the session continues the row and its events (sequence numbers go on);
        ``outbound``: an outbound call's request and progress, rebuilt by its bridge."""
        session = self._session(row["tenant_id"], route, row["provider"], row["direction"], row["from_number"],
                                row["to_number"], row["provider_call_id"])
        session.id, session.trace_id, session.state = row["id"], row["trace_id"], row["status"]
        session.started_at = row["started_at"]
        session.tags.update(row.get("metadata") or {})
        if outbound is not None:
            outbound.attach(session)
        session._seq = int(await self.store.max_event_seq(session.id) or 0)
        # The call's media is held here from now on: this instance's lease covers it (and counts it).
        await self.store.voice_calls.set(session.id, {"instance_id": self.instance_id}, tenant_id=session.tenant_id)
        local = await self._local_load(route)
        await self._register(session, route, local, insert=False)
        return session

    def forget(self, session: CallSession) -> None:
        """Drop a call another instance has taken over: nothing is written, no event, no end hook
        (that instance runs the call and ends it)."""
        if self.live.get(session.id) is session:
            self._release(session)

    async def open_outbound(self, route: CallRoute, outbound: OutboundCall, *, provider: str, from_number: str,
                            to_number: str, daily: DailyOutbound | None = None) -> CallSession:
        """Register an outbound call, ``queued``: it counts against the box's and the tenant's
        limits from now on. RouteRejected (nothing stored) when a limit is reached."""
        if not self.accepting:
            raise RouteRejected("shutting_down", "the runtime is shutting down", route.tenant_id)
        if self.at_capacity:
            raise RouteRejected("busy", "the runtime is at its call limit", route.tenant_id)
        if self.live_for(route.tenant_id) >= route.tenant["max_concurrent_calls"]:
            raise RouteRejected("tenant_call_limit", "the tenant is at its concurrent-call limit", route.tenant_id)
        local = await self._local_load(route)
        if local and not self.local_fits(local):
            raise RouteRejected("busy", "the local speech engines are at capacity", route.tenant_id)
        session = self._session(route.tenant_id, route, provider, "outbound", from_number, to_number, None)
        session.state = QUEUED
        outbound.attach(session)
        await self._register(session, route, local, daily=daily)
        return session

    async def _register(self, session: CallSession, route: CallRoute, local: float, number_id: str | None = None,
                        *, insert: bool = True, daily: DailyOutbound | None = None) -> None:
        """Count the call live here and store it (``insert`` False: adopted, its row exists):
        RouteRejected when the cluster's limits refuse it, DuplicateCall when its provider call id
        has a call already; nothing is stored then."""
        self.live[session.id] = session
        if local:
            self.local_live[session.id] = local
        session.on_end.append(self._release)
        session.on_session.append(self._hold_session)
        self.hold_call(session)
        if insert:
            admit = (self.admission.check(session.id, route.tenant_id, route.tenant["max_concurrent_calls"],
                                          number_id, daily) if self.admission is not None else None)
            try:
                await session.insert_row(admit)
            except UniqueViolation:  # its provider call id has a call already (cluster mode: maybe elsewhere)
                self._release(session)
                raise DuplicateCall(session.provider, session.provider_call_id) from None
            except BaseException:
                self._release(session)
                raise
        if self.recording is not None and route.tenant.get("recording_enabled"):
            self._record(session)

    def _record(self, session: CallSession) -> None:
        recorder = CallRecorder(self.recording, session.tenant_id, session.id)
        session.audio_sinks.append(recorder)

        async def finalize(ended: CallSession) -> None:
            rows = await recorder.finalize(self.store)
            if self.uploader is not None:
                self.uploader.schedule(ended.tenant_id, ended.id, rows)  # starts a task; never waits

        session.on_end.append(finalize)

    def _session(self, tenant_id: str, route: CallRoute | None, provider: str, direction: str,
                 from_number: str | None, to_number: str | None, provider_call_id: str | None) -> CallSession:
        session = CallSession(
            id=new_id("call"), tenant_id=tenant_id, provider=provider, direction=direction,
            from_number=from_number, to_number=to_number, store=self.store, bus=self.bus, route=route,
            provider_call_id=provider_call_id, instance_id=self.instance_id,
        )
        if self.recorder is not None:
            session.after_end.append(self._spawn_record)
        return session

    def _spawn_record(self, session: CallSession) -> None:
        if self.recorder is None:
            return
        task = asyncio.get_running_loop().create_task(self.recorder.record(session))
        self.records.add(task)
        task.add_done_callback(self.records.discard)

    async def finish_records(self, grace_s: float = RECORDS_GRACE_S) -> None:
        """Let the records being written finish (up to ``grace_s``), then stop them."""
        if not self.records:
            return
        _, pending = await asyncio.wait(list(self.records), timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def hold_call(self, session: CallSession) -> None:
        """Peers reach the call, and its integrator sessions, here (cluster mode; else nothing to do)."""
        if self.holdings is not None:
            self.holdings.hold(session.id)
            for held in (*session.transcribes.values(), *session.speakings.values()):
                self.holdings.hold(held.id)

    def _hold_session(self, started: Transcribe | Speaking) -> None:
        if self.holdings is not None:
            self.holdings.hold(started.id)

    def _release(self, session: CallSession) -> None:
        self.live.pop(session.id, None)
        self.local_live.pop(session.id, None)
        holdings = self.holdings
        if holdings is not None:
            holdings.release(session.id)
        ended = self.ended_sessions
        for stopped in (*session.transcribes.values(), *session.speakings.values()):
            ended[stopped.id] = stopped
            if holdings is not None:
                holdings.ended(stopped.id)
        while len(ended) > ENDED_SESSIONS_KEPT:
            ended.popitem(last=False)

    async def drain(self, grace_s: float) -> None:
        """Stop accepting; let live calls finish for up to ``grace_s``, then end them (reason=shutdown)."""
        self.accepting = False
        if self.live:
            log.info("draining live calls", extra={"calls": len(self.live), "grace_s": grace_s})
            waits = [s.ended.wait() for s in self.live.values()]
            try:
                await asyncio.wait_for(asyncio.gather(*waits), grace_s)
            except TimeoutError:
                pass
        await self._hang_up_all(list(self.live.values()))
        await self.finish_records()

    async def give_up_lost_calls(self) -> int:
        """This instance's lease ran out and a survivor failed the calls it held (instance_lost):
        stop their media here without writing over that record; how many."""
        lost = []
        for session in list(self.live.values()):
            row = await self.store.voice_calls.get(session.id, tenant_id=session.tenant_id)
            if row is not None and row["status"] == "failed" and row["end_reason"] == "instance_lost":
                session.failed_elsewhere = True
                lost.append(session)
        await self._hang_up_all(lost, "instance_lost")
        return len(lost)

    async def _hang_up_all(self, sessions: list[CallSession], reason: str = "shutdown") -> None:
        """Hang up the remaining calls side by side: each hangup may be a provider request (Twilio,
        LiveKit, GoTo) that takes seconds when the provider is unreachable; past a bound the call is
        archived without waiting for its provider."""
        gate = asyncio.Semaphore(HANGUP_CONCURRENCY)

        async def one(session: CallSession) -> None:
            async with gate:
                await session.hangup(reason, bridge_timeout_s=HANGUP_TIMEOUT_S)

        await asyncio.gather(*(one(s) for s in sessions))

    async def recover(self, *, shared: bool = False) -> int:
        """Calls left live by a previous run become failed (reason=runtime_restart), with events.
        ``shared``: other runtimes use this database too, so only this instance's own calls (and
        calls of no instance, from before instances were recorded) are its to fail; a lost peer's
        calls are the reaper's (runtime.cluster.instances)."""
        owners: tuple[str | None, ...] = (self.instance_id, None) if shared else ()
        count = 0
        while True:
            if shared:
                rows = [row for owner in owners for row in await self.store.live_calls_left_by(owner, 200)]
            else:
                rows = [row for status in LIVE_STATES for row in (await self.store.voice_calls.list(
                    tenant_id=ALL_TENANTS, equals={"status": status}, limit=200, count=False))[0]]
            if not rows:
                return count
            for row in rows:
                # False: moved on meanwhile (cannot happen to a call no process holds; counted anyway).
                await fail_stale_call(self.store, self.bus, row, "runtime_restart")
                count += 1
