"""The aiohttp application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from runtime.api.appkeys import (
    BUS,
    CONTROL,
    DELIVERY,
    EVENT_SOCKETS,
    INSTANCE_ID,
    INSTANCE_PORT,
    METRICS,
    PIPELINE,
    RATE_LIMITER,
    ROUTES,
    SETTINGS,
    TRACKER,
)
from runtime.api.endpoint import make_handler
from runtime.api.event_socket import close_event_sockets
from runtime.api.key_watch import KEY_WATCH, KeyWatch
from runtime.api.middlewares import errors_and_ids
from runtime.api.routes import all_routes
from runtime.calls.tracker import CallTracker
from runtime.config import Settings
from runtime.control.plane import ControlPlane
from runtime.events.bus import EventBus
from runtime.events.delivery import DeliveryWorker
from runtime.providers.chains import ProviderChains
from runtime.telephony.services import SERVICES, BridgeServices
from runtime.web.metrics import Metrics
from runtime.web.ratelimit import RateLimiter

log = logging.getLogger("voicectl.api")


def name_instance(app: web.Application, instance_id: str, port: int | None = None) -> None:
    """The id /readyz, /metrics and the instances table carry (`serve --port` may differ from server.port)."""
    app[INSTANCE_ID] = instance_id
    app[INSTANCE_PORT] = port
    app[METRICS].name_instance(instance_id)


async def _start_event_relay(app: web.Application):
    """Cluster mode: events to and from the other instances; event sockets closed 1013 when NATS is lost."""
    from runtime.api.event_socket import close_for_retry
    from runtime.cluster.event_relay import EventRelay
    from runtime.cluster.link import CLUSTER

    link = app[CLUSTER]
    relay = EventRelay(link, app[BUS], app[SETTINGS].events.nats.max_age_s, app[METRICS].registry)
    await relay.start()
    link.on_lost(lambda: close_for_retry(app))
    return relay


def create_app(settings: Settings, control: ControlPlane | None = None,
               providers: ProviderChains | None = None) -> web.Application:
    """Build the app; without ``control`` one is opened (and migrated) on startup and closed on cleanup.
    ``providers``: the engines calls get (default: the registry for ``settings``; the offline
    models are loaded at startup)."""
    app = web.Application(middlewares=[errors_and_ids], client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    name_instance(app, settings.instance_id(settings.server.port), settings.server.port)
    app[RATE_LIMITER] = RateLimiter(settings.limits.rate_limits)
    routes = all_routes()
    app[ROUTES] = routes
    app[EVENT_SOCKETS] = set()
    app[KEY_WATCH] = KeyWatch(app)  # open event sockets follow their key and tenant
    app.on_shutdown.append(close_event_sockets)
    for route in routes:
        app.router.add_route(route.method, route.path, make_handler(route))

    async def control_plane(app: web.Application) -> AsyncIterator[None]:
        owned = control is None
        app[CONTROL] = await ControlPlane.open(settings) if owned else control
        yield
        if owned:
            await app[CONTROL].close()

    async def call_engine(app: web.Application) -> AsyncIterator[None]:
        store = app[CONTROL].store
        app[BUS] = EventBus(store)
        app[CONTROL].callbacks.bus = app[BUS]  # callback events reach this runtime's subscribers too
        app[CONTROL].events.bus = app[BUS]  # the control plane's events reach subscribers at once
        app[DELIVERY] = DeliveryWorker(store, app[CONTROL].secrets, settings.events.webhooks,
                                       egress=settings.security.egress.policy, bus=app[BUS])
        app[BUS].on_outbox = app[DELIVERY].wake
        await app[DELIVERY].start()
        relay = await _start_event_relay(app) if settings.cluster_mode else None
        from runtime.recording.objects import RECORDING_OBJECTS, RecordingObjects
        from runtime.recording.storage import LocalStorage
        from runtime.recording.upload import RECORDING_UPLOADS, RecordingUploader, UploadPolicy

        app[RECORDING_OBJECTS] = RecordingObjects.from_settings(app[CONTROL].credentials, settings.recording.s3)
        app[RECORDING_UPLOADS] = RecordingUploader(store, LocalStorage(settings.recording_dir), app[RECORDING_OBJECTS],
                                                   UploadPolicy.from_settings(settings.recording.s3))
        from runtime.pipeline.engine import ConversationEngine

        app[PIPELINE] = ConversationEngine(providers or ProviderChains(settings), app[CONTROL],
                                           app[METRICS].registry)
        from runtime.calls.admission import ClusterAdmission
        from runtime.calls.call_record import CallRecordWriter
        from runtime.cluster.instances import INSTANCE_LEASE, InstanceLease

        # Runtimes sharing the database count their calls together (an in-process count is the whole
        # truth with one runtime); PostgreSQL is what several can share.
        shared = store.db.dialect == "postgres"
        app[TRACKER] = CallTracker(store, app[BUS], max_calls=settings.limits.max_calls,
                                   recording_dir=settings.recording_dir, uploader=app[RECORDING_UPLOADS],
                                   local_calls=settings.limits.local_capacity(settings.providers.local.stt_model),
                                   local_load=app[PIPELINE].local_load,
                                   recorder=CallRecordWriter(app[CONTROL].callbacks), instance_id=app[INSTANCE_ID],
                                   admission=ClusterAdmission(settings.limits.max_calls_cluster)
                                   if settings.cluster_mode else None)
        app[INSTANCE_LEASE] = InstanceLease(store, app[TRACKER], app[INSTANCE_ID], lease_s=settings.server.lease_s,
                                            port=app[INSTANCE_PORT], shared=shared)
        await app[INSTANCE_LEASE].start()
        recovered = await app[TRACKER].recover(shared=shared)
        if recovered:
            log.warning("calls left live by a previous run marked failed", extra={"calls": recovered})
        from runtime.calls.retention import RETENTION, RetentionJob
        from runtime.calls.rollout_watch import ROLLOUT_WATCH, RolloutWatch
        from runtime.calls.scheduler import SCHEDULER, new_scheduler

        scheduler = app[SCHEDULER] = new_scheduler()
        app[RETENTION] = RetentionJob(store, settings.recording_dir, objects=app[RECORDING_OBJECTS],
                                      scheduler=scheduler)
        app[RETENTION].start()
        app[ROLLOUT_WATCH] = RolloutWatch(store, app[CONTROL].rollouts, scheduler,
                                          interval_s=settings.rollout.check_interval_s)
        app[ROLLOUT_WATCH].start()
        app[RECORDING_UPLOADS].start()  # background: uploads a restart interrupted
        await app[PIPELINE].start()
        from runtime.api.evaluations import EVAL_JOBS, EvalJobs

        app[EVAL_JOBS] = EvalJobs(store, settings.evaluations.max_running_per_tenant)
        if stale := await app[EVAL_JOBS].recover(app[INSTANCE_ID] if shared else None):
            log.warning("evaluations left running by a previous run marked failed", extra={"evaluations": stale})
        from runtime.signing_keys import SigningKeys

        app[SERVICES] = BridgeServices(settings, app[CONTROL], app[TRACKER], app[BUS], app[PIPELINE], app[METRICS],
                                       app[RATE_LIMITER], SigningKeys.from_settings(settings))
        from runtime.telephony.callbacks import CALLBACK_JOB, CallbackJob

        app[CALLBACK_JOB] = CallbackJob(app)
        app[CALLBACK_JOB].start(scheduler)
        if settings.cluster_mode:
            from runtime.telephony.twilio.bridge import follow_take_overs

            await follow_take_overs(app)  # calls this instance answered and another took over
        yield
        await app[CALLBACK_JOB].stop()
        await app[EVAL_JOBS].stop()
        await app[RETENTION].stop()
        await app[ROLLOUT_WATCH].stop()
        scheduler.shutdown(wait=False)
        await app[TRACKER].drain(settings.server.shutdown_grace_s)
        await app[INSTANCE_LEASE].stop()  # after the drain: no call of ours is left to reap
        await app[RECORDING_UPLOADS].close()
        await app[PIPELINE].stop()
        if relay is not None:
            await relay.stop()
        await app[DELIVERY].stop()

    async def rate_limits(app: web.Application) -> AsyncIterator[None]:
        await app[RATE_LIMITER].open()  # Redis unreachable here is logged; requests then count locally
        yield
        await app[RATE_LIMITER].close()

    app.cleanup_ctx.append(rate_limits)
    app.cleanup_ctx.append(control_plane)
    if settings.cluster_mode:
        from runtime.cluster.link import cluster_link_ctx

        app.cleanup_ctx.append(cluster_link_ctx(settings.events.nats, lambda: app[INSTANCE_ID]))
    app.cleanup_ctx.append(call_engine)
    if settings.cluster_mode:
        from runtime.api.live import remote_calls_ctx

        app.cleanup_ctx.append(remote_calls_ctx(settings.events.nats.request_timeout_s))
    return app
