"""/api/v1/calls/{call_id}/recordings: a call's recordings, and the audio of one (tenant-scoped).

Audio in the tenant's S3-compatible storage is streamed through this route with the tenant's own
credential, not handed out as a presigned URL: the runtime key stays the only way in (a presigned URL is
a bearer link that works for anyone until it expires) and the storage endpoint need not be public.
"""

from __future__ import annotations

from aiohttp import web

from runtime.api.appkeys import SETTINGS
from runtime.api.endpoint import PAGE, Ctx, Route
from runtime.control.errors import NotFound
from runtime.control.pagination import Page
from runtime.recording.objects import RECORDING_OBJECTS
from runtime.recording.s3 import S3, S3Download
from runtime.recording.storage import LOCAL, LocalStorage, UnsafePath


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
    disposition = f'attachment; filename="{call_id}-{row["kind"]}.wav"'
    if row["storage"] == S3:
        download = await ctx.request.app[RECORDING_OBJECTS].open(ctx.tenant, row["uri"])
        return _ObjectResponse(download, {"Content-Type": "audio/wav", "Content-Disposition": disposition})
    if row["storage"] != LOCAL:
        raise NotFound(f"recording {recording_id} is not stored locally", {"recording_id": recording_id})
    storage = LocalStorage(ctx.request.app[SETTINGS].recording_dir)
    try:
        path = storage.resolve(row["uri"])
    except UnsafePath:
        path = None
    if path is None or not path.is_file():
        raise NotFound(f"the audio of recording {recording_id} is gone", {"recording_id": recording_id})
    return web.FileResponse(path, headers={"Content-Type": "audio/wav", "Content-Disposition": disposition})


class _ObjectResponse(web.StreamResponse):
    """Streams an opened S3 object when aiohttp prepares the response (as FileResponse does with a
    file), so the endpoint's headers (rate limits, request id) still go out with it."""

    def __init__(self, download: S3Download, headers: dict[str, str]) -> None:
        super().__init__(headers=headers)
        self._download = download
        if download.length is not None:
            self.content_length = download.length

    async def prepare(self, request: web.BaseRequest):  # type: ignore[override]
        try:
            writer = await super().prepare(request)
            if request.method != "HEAD":
                async for chunk in self._download.chunks():
                    await self.write(chunk)
            return writer
        finally:
            await self._download.aclose()


ROUTES = [
    Route("GET", "/api/v1/calls/{call_id}/recordings", list_recordings,
          "A call's recordings (mixed, caller and agent WAVs)", paged=True, query=PAGE, tag="calls"),
    Route("GET", "/api/v1/calls/{call_id}/recordings/{recording_id}/audio", recording_audio,
          "Download a recording as WAV", tag="calls", rate_class="recording", errors=(404, 503),
          media_type="audio/wav"),
]
