"""/api/v1/transcribes and /api/v1/speakings: the integrator's ears and mouth on a live call
(runtime.calls.integrator_control)."""

from __future__ import annotations

from typing import Any

from runtime.api.appkeys import PIPELINE, TRACKER
from runtime.api.endpoint import Ctx, Route
from runtime.calls.integrator_control import IntegratorControl, SayText, SpeakingCreate, TranscribeCreate
from runtime.calls.locator import LocalCalls


def _control(ctx: Ctx) -> IntegratorControl:
    app = ctx.request.app
    return IntegratorControl(LocalCalls(app[TRACKER]), ctx.control.store, app[PIPELINE].speaking_voice)


async def create_transcribe(ctx: Ctx) -> dict[str, Any]:
    return await _control(ctx).create_transcribe(ctx.tenant, ctx.body)


async def list_transcribes(ctx: Ctx) -> dict[str, Any]:
    return _control(ctx).list_transcribes(ctx.tenant)


async def get_transcribe(ctx: Ctx) -> dict[str, Any]:
    return _control(ctx).get_transcribe(ctx.tenant, ctx.param("transcribe_id"))


async def stop_transcribe(ctx: Ctx) -> dict[str, Any]:
    return await _control(ctx).stop_transcribe(ctx.tenant, ctx.param("transcribe_id"))


async def create_speaking(ctx: Ctx) -> dict[str, Any]:
    return await _control(ctx).create_speaking(ctx.tenant, ctx.body)


async def list_speakings(ctx: Ctx) -> dict[str, Any]:
    return _control(ctx).list_speakings(ctx.tenant)


async def get_speaking(ctx: Ctx) -> dict[str, Any]:
    return _control(ctx).get_speaking(ctx.tenant, ctx.param("speaking_id"))


async def say(ctx: Ctx) -> dict[str, Any]:
    return _control(ctx).say(ctx.tenant, ctx.param("speaking_id"), ctx.body.text)


async def flush(ctx: Ctx) -> dict[str, Any]:
    return _control(ctx).flush(ctx.tenant, ctx.param("speaking_id"))


async def stop_speaking(ctx: Ctx) -> dict[str, Any]:
    return await _control(ctx).stop_speaking(ctx.tenant, ctx.param("speaking_id"))


_LIVE = (404, 409)
ROUTES = [
    Route("POST", "/api/v1/transcribes", create_transcribe, "Start a transcribe session on a live call",
          body=TranscribeCreate, status=201, tag="integrator", rate_class="control", errors=_LIVE),
    Route("GET", "/api/v1/transcribes", list_transcribes, "The transcribe sessions of the tenant's live calls",
          tag="integrator", rate_class="control"),
    Route("GET", "/api/v1/transcribes/{transcribe_id}", get_transcribe, "A transcribe session", tag="integrator",
          rate_class="control", errors=(404,)),
    Route("POST", "/api/v1/transcribes/{transcribe_id}/stop", stop_transcribe, "Stop a transcribe session",
          tag="integrator", rate_class="control", errors=(404,)),
    Route("POST", "/api/v1/speakings", create_speaking, "Start a speaking session on a connected call",
          body=SpeakingCreate, status=201, tag="integrator", rate_class="control", errors=(*_LIVE, 422)),
    Route("GET", "/api/v1/speakings", list_speakings, "The speaking sessions of the tenant's live calls",
          tag="integrator", rate_class="control"),
    Route("GET", "/api/v1/speakings/{speaking_id}", get_speaking, "A speaking session", tag="integrator",
          rate_class="control", errors=(404,)),
    Route("POST", "/api/v1/speakings/{speaking_id}/say", say,
          "Queue text to speak as the agent's own line (many times; in order)", body=SayText, status=202,
          tag="integrator", rate_class="control", errors=_LIVE),
    Route("POST", "/api/v1/speakings/{speaking_id}/flush", flush,
          "Cut what is being said and drop the queued lines (the session stays active)", tag="integrator",
          rate_class="control", errors=_LIVE),
    Route("POST", "/api/v1/speakings/{speaking_id}/stop", stop_speaking, "Stop a speaking session",
          tag="integrator", rate_class="control", errors=(404,)),
]
