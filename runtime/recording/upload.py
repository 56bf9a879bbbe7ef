"""Recordings to the tenant's S3-compatible bucket after the call, off the call's teardown path.

``schedule()`` (the tracker's end hook) only starts a task, so teardown never waits for storage. For a
tenant with an ``s3`` credential each file is uploaded and verified (Content-MD5, then size and ETag),
up to ``attempts`` times with exponential backoff and jitter, each attempt bounded by
``attempt_timeout_s``; errors another attempt cannot fix (wrong key, no bucket) stop at once, and once
one file has used all its attempts the call's other files get one each (bounded time when the store is
down). The row
records the outcome in ``upload_status``: pending, then uploaded (storage ``s3``, uri
``s3://<bucket>/<tenant>/<call>/<file>``, and only then is the local file deleted) or failed (the file
stays local and is still served from disk; ``upload_error`` says why, ``upload_attempts`` how often).
Tenants without the credential: nothing happens and ``upload_status`` stays NULL (local is the default).
``start()`` retries, in the background, rows left pending by a restart or failed, whose file is on this box.
"""

from __future__ import annotations

import asyncio
import logging
import random
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from runtime.ids import now_iso
from runtime.recording.objects import RecordingObjects
from runtime.recording.s3 import (
    S3,
    InvalidTarget,
    S3Target,
    describe_error,
    is_permanent,
    object_key,
    put_verified,
)
from runtime.recording.storage import LOCAL, LocalStorage, UnsafePath
from runtime.store.store import Store
from runtime.store.tables import ALL_TENANTS

log = logging.getLogger("voicectl.recording")

PENDING, UPLOADED, FAILED = "pending", "uploaded", "failed"
MAX_CONCURRENT_CALLS = 4  # a drain or a restart must not open hundreds of uploads at once
CLOSE_WAIT_S = 5.0  # on shutdown; what is cut short stays pending and resumes on the next start
BACKOFF_CAP_S = 60.0


@dataclass(frozen=True)
class UploadPolicy:
    attempts: int = 4
    backoff_s: float = 1.0
    attempt_timeout_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: Any) -> UploadPolicy:
        """``settings``: the ``recording.s3`` section."""
        return cls(settings.attempts, settings.backoff_s, settings.attempt_timeout_s)

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1-based): doubling, jittered to half..full, capped."""
        return min(BACKOFF_CAP_S, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class UploadOutcome:
    recording_id: str
    status: str
    attempts: int
    error: str | None = None


class RecordingUploader:
    def __init__(self, store: Store, local: LocalStorage, objects: RecordingObjects,
                 policy: UploadPolicy | None = None) -> None:
        self.store = store
        self.local = local
        self.objects = objects
        self.policy = policy or UploadPolicy()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gate = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        self._in_flight: set[str] = set()  # recording ids a task is uploading: never two at once
        self.closed = False

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def schedule(self, tenant_id: str, call_id: str, rows: list[dict[str, Any]],
                 reread: bool = False) -> asyncio.Task[Any] | None:
        """Upload a finished call's recordings in the background (a no-op for tenants without s3).
        ``reread``: the rows may be stale (read a while ago): fetch them again first."""
        if self.closed or not rows:
            return None
        return self._spawn(self.upload_call(tenant_id, call_id, rows, reread), f"recording-upload-{call_id}")

    def start(self) -> None:
        self._spawn(self._resume(), "recording-upload-resume")

    async def upload_call(self, tenant_id: str, call_id: str, rows: list[dict[str, Any]],
                          reread: bool = False) -> list[UploadOutcome]:
        # Claimed before the first await, so a resume racing a call's own upload skips its rows.
        rows = [r for r in rows if r["tenant_id"] == tenant_id and r["id"] not in self._in_flight]
        claimed = {r["id"] for r in rows}
        self._in_flight |= claimed
        try:
            if reread:
                fresh = [await self.store.recordings.get(r["id"], tenant_id=tenant_id) for r in rows]
                rows = [r for r in fresh if r is not None]
            rows = [r for r in rows if r["storage"] == LOCAL]
            return await self._upload_call(tenant_id, call_id, rows)
        finally:
            self._in_flight -= claimed

    async def _upload_call(self, tenant_id: str, call_id: str, rows: list[dict[str, Any]]) -> list[UploadOutcome]:
        try:
            try:
                target = await self.objects.target(tenant_id)
            except InvalidTarget as exc:
                return [await self._failed(row, None, 0, str(exc)) for row in rows]
            if target is None or not rows:
                return []
            for row in rows:  # a restart before the upload finishes resumes these
                if row.get("upload_status") != PENDING:
                    await self._set(row, {"upload_status": PENDING})
            async with self._gate, AsyncExitStack() as stack:
                try:
                    s3 = await stack.enter_async_context(self.objects.client.client(target))
                except Exception as exc:  # say, a region name botocore refuses
                    error = describe_error(exc, target.secret_access_key)
                    return [await self._failed(row, target, 0, error) for row in rows]
                outcomes: list[UploadOutcome] = []
                attempts = self.policy.attempts
                for row in rows:
                    outcomes.append(await self._upload_row(s3, target, row, attempts))
                    if outcomes[-1].status == FAILED and outcomes[-1].attempts >= attempts:
                        attempts = 1  # the store is down or refusing: one try each for the call's other files
                return outcomes
        except Exception:
            log.exception("recording upload crashed; the files stay local",
                          extra={"tenant_id": tenant_id, "call_id": call_id})
            return []

    async def _upload_row(self, s3: Any, target: S3Target, row: dict[str, Any], attempts: int) -> UploadOutcome:
        try:
            path = self.local.resolve(row["uri"])
        except UnsafePath:
            path = None
        if path is None or not path.is_file():
            return await self._failed(row, target, 0, "the local file is missing")
        key = object_key(row["tenant_id"], row["call_id"], path.name)
        attempt, error = 0, None
        while attempt < attempts:
            attempt += 1
            try:
                async with asyncio.timeout(self.policy.attempt_timeout_s):
                    stored = await put_verified(s3, target.bucket, key, path)
            except Exception as exc:
                error = describe_error(exc, target.secret_access_key)
                if is_permanent(exc) or attempt >= attempts:
                    break
                log.info("recording upload attempt failed; retrying",
                         extra={**_fields(row, target), "attempt": attempt, "error": error})
                await asyncio.sleep(self.policy.delay(attempt))
            else:
                # The row first, then the file: a crash in between leaves a spare local copy, never a
                # row that points at nothing.
                await self._set(row, {"storage": S3, "uri": target.uri(key), "upload_status": UPLOADED,
                                      "upload_attempts": attempt, "upload_error": None, "uploaded_at": now_iso()})
                try:
                    await asyncio.to_thread(self.local.remove, row["uri"])
                except OSError:
                    log.warning("uploaded recording's local file could not be removed", extra=_fields(row, target))
                log.info("recording uploaded",
                         extra={**_fields(row, target), "key": key, "attempts": attempt, "size_bytes": stored.size})
                return UploadOutcome(row["id"], UPLOADED, attempt)
        return await self._failed(row, target, attempt, error or "unknown error")

    async def _failed(self, row: dict[str, Any], target: S3Target | None, attempts: int, error: str) -> UploadOutcome:
        await self._set(row, {"upload_status": FAILED, "upload_attempts": attempts, "upload_error": error})
        log.warning("recording upload failed; the file stays local",
                    extra={**_fields(row, target), "attempts": attempts, "error": error})
        return UploadOutcome(row["id"], FAILED, attempts, error)

    async def _set(self, row: dict[str, Any], changes: dict[str, Any]) -> None:
        await self.store.recordings.set(row["id"], changes, tenant_id=row["tenant_id"])

    async def _resume(self) -> int:
        """Schedule the calls whose rows are pending or failed and whose local files are on this box
        (with several runtimes on one database, another box's files are not ours to upload)."""
        try:
            calls: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for status in (PENDING, FAILED):
                offset = 0
                while True:
                    rows, _ = await self.store.recordings.list(
                        tenant_id=ALL_TENANTS, equals={"upload_status": status, "storage": LOCAL},
                        limit=200, offset=offset, count=False,
                    )
                    if not rows:
                        break
                    offset += len(rows)
                    for row in rows:
                        if await asyncio.to_thread(self._on_disk, row["uri"]):
                            calls.setdefault((row["tenant_id"], row["call_id"]), []).append(row)
            for (tenant_id, call_id), rows in calls.items():
                self.schedule(tenant_id, call_id, rows, reread=True)
            if calls:
                log.info("resuming recording uploads", extra={"calls": len(calls)})
            return len(calls)
        except Exception:
            log.exception("could not resume recording uploads")
            return 0

    def _on_disk(self, uri: str) -> bool:
        try:
            return self.local.resolve(uri).is_file()
        except UnsafePath:
            return False

    async def wait_idle(self) -> None:
        """Until no upload is running (tests, and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Stop taking work; give running uploads ``wait_s``, then cancel them (they stay pending)."""
        self.closed = True
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=wait_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("recording uploads cut short by shutdown; they resume on the next start",
                        extra={"calls": len(pending)})


def _fields(row: dict[str, Any], target: S3Target | None) -> dict[str, Any]:
    """Structured log fields: ids and where to, never the key pair."""
    fields = {"tenant_id": row["tenant_id"], "call_id": row["call_id"], "recording_id": row["id"], "kind": row["kind"]}
    if target is not None:
        fields.update(bucket=target.bucket, endpoint=target.endpoint)
    return fields


RECORDING_UPLOADS: web.AppKey[RecordingUploader] = web.AppKey("recording_uploads", RecordingUploader)
