"""S3-compatible object storage for recordings (DigitalOcean Spaces, AWS S3, MinIO, moto) via aiobotocore.

Objects live at ``s3://<bucket>/<tenant_id>/<call_id>/<file>``; the ``recordings`` row keeps that URI.
Requests use path addressing (``https://<region>.digitaloceanspaces.com/<bucket>/<key>``): Spaces serves
it as well as virtual hosts, and a loopback test server has no per-bucket host names. Checksums are sent
only where an operation requires them: S3-compatible stores refuse the newer flexible-checksum headers
that botocore adds by default. Each operation makes one attempt; retries are the caller's (with backoff
and a status on the row), so a bad key fails at once instead of after botocore's own retries.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runtime.egress.policy import REFUSED, EgressPolicy, refused
from runtime.egress.resolve import check_literal
from runtime.providers.registry import MissingExtra, require_extra

S3 = "s3"
URI_SCHEME = "s3://"
CHUNK = 64 * 1024
# HTTP statuses and error codes that another attempt cannot fix (bad key, no bucket, no permission).
_PERMANENT_STATUS = frozenset({400, 401, 403, 404, 405})
_TRANSIENT_CODES = frozenset({"BadDigest", "RequestTimeout", "IncompleteBody", "SlowDown", "InternalError"})


class InvalidTarget(ValueError):
    """The tenant's ``s3`` credential cannot be used as is (say, an endpoint that is not a URL)."""


class UploadNotVerified(RuntimeError):
    """The stored object is not the file that was sent (size or MD5 differ)."""


def spaces_endpoint(region: str) -> str:
    """The DigitalOcean Spaces endpoint of a region slug, e.g. ``nyc3``."""
    return f"https://{region}.digitaloceanspaces.com"


def normalize_endpoint(endpoint: str, bucket: str) -> str:
    """``scheme://host[:port]``; a bare host gets https, and a bucket's own origin
    (``https://<bucket>.<region>.digitaloceanspaces.com``, what the Spaces panel shows) becomes the
    regional endpoint that path addressing needs."""
    value = endpoint.strip()
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path.rstrip("/") or parts.query
            or parts.username):
        raise InvalidTarget("the s3 endpoint must be like https://<region>.digitaloceanspaces.com")
    host = parts.netloc
    if bucket and host.lower().startswith(bucket.lower() + "."):
        host = host[len(bucket) + 1:]
    return f"{parts.scheme}://{host}"


@dataclass(frozen=True)
class S3Target:
    """Where one tenant's recordings go; built from its ``s3`` credential. The secret never prints."""

    endpoint: str
    region: str
    bucket: str
    access_key_id: str
    secret_access_key: str = field(repr=False)

    @classmethod
    def from_credential(cls, fields: dict[str, Any], secret: str) -> S3Target:
        missing = [k for k in ("endpoint", "region", "bucket", "access_key_id") if not fields.get(k)]
        if missing or not secret:
            raise InvalidTarget(f"the s3 credential lacks {', '.join(missing) or 'its secret access key'}")
        bucket = str(fields["bucket"]).strip()
        return cls(normalize_endpoint(str(fields["endpoint"]), bucket), str(fields["region"]).strip(), bucket,
                   str(fields["access_key_id"]).strip(), secret)

    def uri(self, key: str) -> str:
        return f"{URI_SCHEME}{self.bucket}/{key}"


def object_key(tenant_id: str, call_id: str, name: str) -> str:
    return f"{tenant_id}/{call_id}/{name}"


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not uri.startswith(URI_SCHEME):
        raise ValueError(f"not an s3 uri: {uri!r}")
    bucket, _, key = uri[len(URI_SCHEME):].partition("/")
    if not bucket or not key:
        raise ValueError(f"not an s3 uri: {uri!r}")
    return bucket, key


def _is_client_error(exc: BaseException) -> bool:
    """botocore's ClientError (False where the s3 extra is not installed: nothing can have raised it)."""
    try:
        from botocore.exceptions import ClientError
    except ImportError:
        return False
    return isinstance(exc, ClientError)


def describe_error(exc: BaseException, secret: str | None = None) -> str:
    """A short reason for the row and the log: the store's error code and status, never a secret."""
    if _is_client_error(exc):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = f"{error.get('Code') or 'error'} (HTTP {status}): {error.get('Message') or ''}".rstrip(": ")
    elif refused(exc):
        text = REFUSED
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    else:
        text = f"{type(exc).__name__}: {exc}"
    if secret:
        text = text.replace(secret, "***")
    return text[:500]


def is_permanent(exc: BaseException) -> bool:
    """True for errors another attempt cannot fix; timeouts, connection errors and 5xx are retried."""
    if isinstance(exc, InvalidTarget | MissingExtra) or refused(exc):
        return True
    if _is_client_error(exc):
        code = exc.response.get("Error", {}).get("Code")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status in _PERMANENT_STATUS and code not in _TRANSIENT_CODES
    return False


def is_missing(exc: BaseException) -> bool:
    return _is_client_error(exc) and (
        exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")
    )


def _md5_and_size(path: Path) -> tuple[bytes, int]:
    digest, size = hashlib.md5(usedforsecurity=False), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.digest(), size


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    etag: str


async def put_verified(s3: Any, bucket: str, key: str, path: Path, content_type: str = "audio/wav") -> StoredObject:
    """Upload a file with its Content-MD5 (the store checks the bytes it got), then HEAD it and check size
    and ETag (the MD5 of a single-part upload) before anyone deletes the local copy. ``s3``: an open
    client from ``S3Client.client``."""
    md5, size = await asyncio.to_thread(_md5_and_size, path)
    with path.open("rb") as body:
        await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=size,
                            ContentMD5=base64.b64encode(md5).decode(), ContentType=content_type)
    head = await s3.head_object(Bucket=bucket, Key=key)
    etag = str(head.get("ETag", "")).strip('"')
    if head.get("ContentLength") != size or etag != md5.hex():
        raise UploadNotVerified(f"stored object differs from the file (size {head.get('ContentLength')} "
                                f"vs {size}, etag {etag} vs {md5.hex()})")
    return StoredObject(key, size, etag)


class S3Download:
    """An open GET: ``length``, then ``chunks()``; ``aclose()`` releases the connection and client."""

    def __init__(self, response: dict[str, Any], stack: AsyncExitStack) -> None:
        self.length: int | None = response.get("ContentLength")
        self._body = response["Body"]
        self._stack = stack

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        async for chunk in self._body.iter_chunks(size):
            yield chunk

    async def aclose(self) -> None:
        self._body.close()
        await self._stack.aclose()


class S3Client:
    """Makes aiobotocore clients for tenants' buckets. One botocore session per process, made on first
    use: it caches the loaded service model, so later clients are cheap."""

    def __init__(self, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                 egress: EgressPolicy | None = None) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.egress = egress or EgressPolicy()  # tenants' endpoints: where security.egress lets them connect
        self._session: Any = None
        self._config: Any = None

    def client(self, target: S3Target) -> Any:
        """An async context manager yielding an aiobotocore S3 client for ``target``."""
        if self._session is None:
            require_extra("s3")  # MissingExtra (permanent) on an install without the s3 extra
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            from runtime.egress.aiohttp_client import GuardedResolver

            self._session = get_session()
            self._config = AioConfig(
                signature_version="s3v4", s3={"addressing_style": "path"},
                connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s,
                retries={"total_max_attempts": 1, "mode": "standard"},  # one request; retries are ours
                request_checksum_calculation="when_required", response_checksum_validation="when_required",
                # Names resolve only to addresses the egress guard permits (a literal is checked below).
                connector_args={"resolver": GuardedResolver(self.egress)},
            )
        endpoint = urlsplit(target.endpoint)
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        check_literal(self.egress, endpoint.hostname or "", port)
        return self._session.create_client(
            "s3", region_name=target.region, endpoint_url=target.endpoint,
            aws_access_key_id=target.access_key_id, aws_secret_access_key=target.secret_access_key,
            config=self._config,
        )

    async def open(self, target: S3Target, bucket: str, key: str) -> S3Download:
        """GET an object; raises before anything is streamed when it is missing or the store refuses."""
        stack = AsyncExitStack()
        try:
            s3 = await stack.enter_async_context(self.client(target))
            response = await s3.get_object(Bucket=bucket, Key=key)
        except BaseException:
            await stack.aclose()
            raise
        return S3Download(response, stack)

    async def delete(self, target: S3Target, bucket: str, keys: list[str], *, concurrency: int = 8) -> int:
        """Delete objects one by one (DeleteObjects needs a Content-MD5 that some S3-compatible stores
        insist on and botocore no longer sends); the number deleted. Missing objects count as deleted."""
        if not keys:
            return 0
        gate = asyncio.Semaphore(concurrency)
        async with self.client(target) as s3:

            async def one(key: str) -> None:
                async with gate:
                    await s3.delete_object(Bucket=bucket, Key=key)

            results = await asyncio.gather(*(one(k) for k in keys), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise DeleteIncomplete(len(keys) - len(failures), failures[0])
        return len(keys)


class DeleteIncomplete(RuntimeError):
    def __init__(self, deleted: int, first: BaseException) -> None:
        super().__init__(f"{deleted} deleted; first failure: {type(first).__name__}")
        self.deleted = deleted
        self.first = first
