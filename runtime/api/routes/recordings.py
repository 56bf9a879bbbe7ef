"""/api/v1/calls/{call_id}/recordings: a call's recordings, and the audio of one (tenant-scoped)."""

from __future__ import annotations

from aiohttp import web

from runtime.api.appkeys import SETTINGS
from runtime.api.endpoint import PAGE, Ctx, Route
from runtime.control.errors import NotFound
from runtime.control.pagination import Page
from runtime.recording.storage import LocalStorage, UnsafePath


async def list_recordings(ctx: Ctx):
    page = ctx.page()
    call_id = ctx.param("call_id")
    await ctx.control.calls.get(ctx.tenant, call_id)  # 404 for another tenant's call
    rows, total = await ctx.control.store.recordings.list(
        tenant_id=ctx.tenant, equals={"call_id": call_id}, limit=page.limit, offset=page.offset
    )
    return Page(rows, total, page.limit, page.offset)


async def recording_audio(ctx: Ctx) -> web.StreamResponse:
    call_id, recording_id = ctx.param("call_id"), ctx.param("recording_id")
    await ctx.control.calls.get(ctx.tenant, call_id)
    row = await ctx.control.store.recordings.get(recording_id, tenant_id=ctx.tenant)
    if row is None or row["call_id"] != call_id:
        raise NotFound(f"recording {recording_id} not found", {"recording_id": recording_id})
    if row["storage"] != "local":
        raise NotFound(f"recording {recording_id} is not stored locally", {"recording_id": recording_id})
    storage = LocalStorage(ctx.request.app[SETTINGS].recording_dir)
    try:
        path = storage.resolve(row["uri"])
    except UnsafePath:
        path = None
    if path is None or not path.is_file():
        raise NotFound(f"the audio of recording {recording_id} is gone", {"recording_id": recording_id})
    return web.FileResponse(path, headers={
        "Content-Type": "audio/wav",
        "Content-Disposition": f'attachment; filename="{call_id}-{row["kind"]}.wav"',
    })


ROUTES = [
    Route("GET", "/api/v1/calls/{call_id}/recordings", list_recordings,
          "A call's recordings (mixed, caller and agent WAVs)", paged=True, query=PAGE, tag="calls"),
    Route("GET", "/api/v1/calls/{call_id}/recordings/{recording_id}/audio", recording_audio,
          "Download a recording as WAV", tag="calls", rate_class="recording", errors=(404,),
          media_type="audio/wav"),
]
