"""/api/v1/transcribes and /api/v1/speakings: the integrator's ears and mouth on a live call
(runtime.calls.integrator_control), run on the instance holding the call (runtime.calls.live_ops)."""

from __future__ import annotations

from typing import Any

from runtime.api.endpoint import Ctx, Route
from runtime.api.live import live_ops
from runtime.calls.integrator_control import SayText, SpeakingCreate, TranscribeCreate


def _run(ctx: Ctx, op: str, target_id: str) -> Any:
    return live_ops(ctx.request.app).run(op, ctx.tenant, target_id, ctx.body)


async def create_transcribe(ctx: Ctx) -> dict[str, Any]:
    return await _run(ctx, "transcribe.create", ctx.body.reference_id)


async def list_transcribes(ctx: Ctx) -> dict[str, Any]:
    return await live_ops(ctx.request.app).list("transcribes", ctx.tenant)


async def get_transcribe(ctx: Ctx) -> dict[str, Any]:
    return await _run(ctx, "transcribe.get", ctx.param("transcribe_id"))


async def stop_transcribe(ctx: Ctx) -> dict[str, Any]:
    return await _run(ctx, "transcribe.stop", ctx.param("transcribe_id"))


async def create_speaking(ctx: Ctx) -> dict[str, Any]:
    return await _run(ctx, "speaking.create", ctx.body.reference_id)


async def list_speakings(ctx: Ctx) -> dict[str, Any]:
    return await live_ops(ctx.request.app).list("speakings", ctx.tenant)


async def get_speaking(ctx: Ctx) -> dict[str, Any]:
    return await _run(ctx, "speaking.get", ctx.param("speaking_id"))


async def say(ctx: Ctx) -> dict[str, Any]:
    return await _run(ctx, "speaking.say", ctx.param("speaking_id"))


async def flush(ctx: Ctx) -> dict[str, Any]:
    return await _run(ctx, "speaking.flush", ctx.param("speaking_id"))


async def stop_speaking(ctx: Ctx) -> dict[str, Any]:
    return await _run(ctx, "speaking.stop", ctx.param("speaking_id"))


# 503/504: cluster mode, the instance holding the call is out of reach (NATS lost, or it did not answer in time).
_REACH = (503, 504)
_LIVE = (404, 409, *_REACH)
ROUTES = [
    Route("POST", "/api/v1/transcribes", create_transcribe, "Start a transcribe session on a live call",
          body=TranscribeCreate, status=201, tag="integrator", rate_class="control", errors=_LIVE),
    Route("GET", "/api/v1/transcribes", list_transcribes, "The transcribe sessions of the tenant's live calls",
          tag="integrator", rate_class="control", errors=_REACH),
    Route("GET", "/api/v1/transcribes/{transcribe_id}", get_transcribe, "A transcribe session", tag="integrator",
          rate_class="control", errors=(404, *_REACH)),
    Route("POST", "/api/v1/transcribes/{transcribe_id}/stop", stop_transcribe, "Stop a transcribe session",
          tag="integrator", rate_class="control", errors=(404, *_REACH)),
    Route("POST", "/api/v1/speakings", create_speaking, "Start a speaking session on a connected call",
          body=SpeakingCreate, status=201, tag="integrator", rate_class="control", errors=(*_LIVE, 422)),
    Route("GET", "/api/v1/speakings", list_speakings, "The speaking sessions of the tenant's live calls",
          tag="integrator", rate_class="control", errors=_REACH),
    Route("GET", "/api/v1/speakings/{speaking_id}", get_speaking, "A speaking session", tag="integrator",
          rate_class="control", errors=(404, *_REACH)),
    Route("POST", "/api/v1/speakings/{speaking_id}/say", say,
          "Queue text to speak as the agent's own line (many times; in order)", body=SayText, status=202,
          tag="integrator", rate_class="control", errors=_LIVE),
    Route("POST", "/api/v1/speakings/{speaking_id}/flush", flush,
          "Cut what is being said and drop the queued lines (the session stays active)", tag="integrator",
          rate_class="control", errors=_LIVE),
    Route("POST", "/api/v1/speakings/{speaking_id}/stop", stop_speaking, "Stop a speaking session",
          tag="integrator", rate_class="control", errors=(404, *_REACH)),
]
