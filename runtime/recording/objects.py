"""A tenant's recording bucket: its ``s3`` credential (fields in the database, secret in the keyring).

Used by the uploader, the download route, retention and the CLI; the secret is read per use through
the credential service and lives only in the S3Target it builds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.control.credentials import CredentialService
from runtime.control.errors import ControlError, NotFound
from runtime.files import private_opener
from runtime.recording.s3 import (
    S3,
    DeleteIncomplete,
    InvalidTarget,
    S3Client,
    S3Download,
    S3Target,
    describe_error,
    is_missing,
    object_key,
    parse_uri,
)

log = logging.getLogger("voicectl.recording")


class StorageUnavailable(ControlError):
    status = 503
    code = "storage_unavailable"
    exit_code = 1


class RecordingObjects:
    def __init__(self, credentials: CredentialService, client: S3Client) -> None:
        self.credentials = credentials
        self.client = client

    @classmethod
    def from_settings(cls, credentials: CredentialService, settings: Any) -> RecordingObjects:
        """``settings``: the ``recording.s3`` section."""
        return cls(credentials, S3Client(connect_timeout_s=settings.connect_timeout_s,
                                         read_timeout_s=settings.attempt_timeout_s, egress=credentials.egress))

    async def target(self, tenant_id: str) -> S3Target | None:
        """The tenant's bucket, or None without an ``s3`` credential (recordings stay local).
        Raises InvalidTarget for a credential that cannot be used."""
        row = await self.credentials.store.credentials.find(tenant_id=tenant_id, provider=S3)
        if row is None:
            return None
        secret = await self.credentials.secret(tenant_id, S3)
        return S3Target.from_credential(row["fields"], secret or "")

    async def open(self, tenant_id: str, uri: str) -> S3Download:
        """Open a tenant's stored recording for reading; NotFound (404) when it or its bucket is gone,
        StorageUnavailable (503) when the store cannot be reached or refuses."""
        bucket, key = _own_object(tenant_id, uri)
        try:
            target = await self.target(tenant_id)
        except InvalidTarget as exc:
            raise StorageUnavailable(f"the tenant's s3 credential cannot be used: {exc}", {"storage": S3}) from None
        if target is None:
            raise NotFound("this recording is in object storage and the tenant has no s3 credential any more",
                           {"storage": S3})
        try:
            return await self.client.open(target, bucket, key)
        except Exception as exc:
            if is_missing(exc):
                raise NotFound("the audio of this recording is gone from object storage", {"storage": S3}) from None
            raise StorageUnavailable("recording storage is unavailable; try again shortly",
                                     {"storage": S3, "endpoint": target.endpoint}) from None

    async def download_to(self, tenant_id: str, uri: str, path: Path) -> int:
        """Copy a stored recording to a local file (written to a temporary name, then renamed)."""
        download = await self.open(tenant_id, uri)
        partial = path.with_name(f".{path.name}.part")
        size = 0
        try:
            with open(partial, "wb", opener=private_opener) as out:
                async for chunk in download.chunks():
                    out.write(chunk)
                    size += len(chunk)
            os.replace(partial, path)
        finally:
            await download.aclose()
            partial.unlink(missing_ok=True)
        return size


    async def delete_rows(self, tenant_id: str, rows: list[dict[str, Any]]) -> int:
        """Retention: delete the objects of a tenant's purged recordings rows; the number of objects
        that rows said were stored and that are gone now. Failures are logged, never raised."""
        stored, guessed = _objects_of(tenant_id, rows)
        if not stored and not guessed:
            return 0
        try:
            target = await self.target(tenant_id)
            reason = "the tenant has no s3 credential"
        except Exception as exc:
            target, reason = None, describe_error(exc)
        if target is None:
            if stored:
                log.warning("recording objects of purged calls left in storage",
                            extra={"tenant_id": tenant_id, "objects": len(stored), "error": reason})
            return 0
        deleted = 0
        for bucket, keys in _by_bucket(stored, target.bucket).items():
            try:
                deleted += await self.client.delete(target, bucket, keys)
            except Exception as exc:
                first = exc.first if isinstance(exc, DeleteIncomplete) else exc
                deleted += exc.deleted if isinstance(exc, DeleteIncomplete) else 0
                log.warning("recording objects of purged calls could not all be deleted",
                            extra={"tenant_id": tenant_id, "bucket": bucket, "objects": len(keys),
                                   "error": describe_error(first, target.secret_access_key)})
        for bucket, keys in _by_bucket(guessed, target.bucket).items():
            try:
                await self.client.delete(target, bucket, keys)
            except Exception:
                log.debug("no objects of unfinished uploads deleted", extra={"tenant_id": tenant_id})
        return deleted


def _objects_of(tenant_id: str, rows: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(bucket, key) of rows stored in S3, and ("", key) of uploads that were pending or failed (an
    object may have got there before the row was updated; "" is the tenant's current bucket)."""
    stored, guessed = [], []
    for row in rows:
        if row["tenant_id"] != tenant_id:
            continue
        if row["storage"] == S3:
            try:
                stored.append(_own_object(tenant_id, row["uri"]))
            except NotFound:
                continue
        elif row.get("upload_status") is not None:
            guessed.append(("", object_key(tenant_id, row["call_id"], row["uri"].rsplit("/", 1)[-1])))
    return stored, guessed


def _by_bucket(items: list[tuple[str, str]], default: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for bucket, key in items:
        out.setdefault(bucket or default, []).append(key)
    return out


def _own_object(tenant_id: str, uri: str) -> tuple[str, str]:
    """(bucket, key) of a row's URI, refusing keys outside the tenant's prefix (rows are tenant-scoped
    already; this keeps a bad row from reaching another tenant's objects in a shared bucket)."""
    try:
        bucket, key = parse_uri(uri)
    except ValueError:
        raise NotFound("this recording has no valid storage location", {"storage": S3}) from None
    if not key.startswith(f"{tenant_id}/"):
        raise NotFound("this recording has no valid storage location", {"storage": S3})
    return bucket, key


RECORDING_OBJECTS: web.AppKey[RecordingObjects] = web.AppKey("recording_objects", RecordingObjects)
