"""The live operations (runtime.calls.live_ops) of an app: its calls, and its peers' in cluster mode."""

from __future__ import annotations

from aiohttp import web

from runtime.api.appkeys import CONTROL, PIPELINE, TRACKER
from runtime.calls.live_ops import LiveOps
from runtime.calls.locator import LocalCalls


def local_live_ops(app: web.Application) -> LiveOps:
    """Operations on this process's calls only (what a holder runs for its peers)."""
    return LiveOps(LocalCalls(app[TRACKER]), app[CONTROL].store, app[PIPELINE].speaking_voice)


def live_ops(app: web.Application) -> LiveOps:
    """Operations on the tenant's calls wherever they are held."""
    from runtime.cluster.remote_calls import REMOTE_CALLS

    return LiveOps(LocalCalls(app[TRACKER]), app[CONTROL].store, app[PIPELINE].speaking_voice,
                   app.get(REMOTE_CALLS))
