"""The live operations (runtime.calls.live_ops) of an app: its calls, and its peers' in cluster mode."""

from __future__ import annotations

import functools

from aiohttp import web

from runtime.api.appkeys import CONTROL, METRICS, PIPELINE, TRACKER
from runtime.calls.live_ops import LiveOps
from runtime.calls.locator import LocalCalls
from runtime.cluster.link import CLUSTER
from runtime.cluster.remote_calls import REMOTE_CALLS, RemoteCalls


def local_live_ops(app: web.Application) -> LiveOps:
    """Operations on this process's calls only (what a holder runs for its peers)."""
    return LiveOps(LocalCalls(app[TRACKER]), app[CONTROL].store, app[PIPELINE].speaking_voice)


def live_ops(app: web.Application) -> LiveOps:
    """Operations on the tenant's calls wherever they are held."""
    return LiveOps(LocalCalls(app[TRACKER]), app[CONTROL].store, app[PIPELINE].speaking_voice,
                   app.get(REMOTE_CALLS))


def remote_calls_ctx(timeout_s: float):
    """cleanup_ctx (cluster mode, after the call engine): serve this instance's calls to its peers over
    its NATS link, and reach theirs."""

    async def ctx(app: web.Application):
        from runtime.telephony.twilio import outbound as twilio_outbound

        remote = RemoteCalls(app[CLUSTER], app[TRACKER], local_live_ops(app), timeout_s, app[METRICS].registry)
        remote.serve(twilio_outbound.FORWARDED_OP, twilio_outbound.TwilioCallback,
                     functools.partial(twilio_outbound.answer_forwarded, app))
        await remote.start()
        app[REMOTE_CALLS] = remote
        try:
            yield
        finally:
            await remote.close()

    return ctx
