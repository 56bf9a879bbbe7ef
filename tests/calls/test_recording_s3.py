"""Recordings in S3-compatible storage (both backends): aiobotocore against moto in server mode.

The moto server checks signatures: an IAM user with an s3:* policy and an access key are made while
auth is off, then auth is switched on (``/moto-api/reset-auth``), so a wrong secret is really refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import secrets
import time
import urllib.request
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import boto3
import pytest
import pytest_asyncio
from botocore.config import Config
from moto.server import ThreadedMotoServer

from runtime.api.appkeys import SETTINGS, TRACKER
from runtime.calls.retention import RETENTION, purge_expired
from runtime.calls.tracker import CallTracker
from runtime.control.schemas import CredentialSet
from runtime.events.bus import EventBus
from runtime.recording.objects import RECORDING_OBJECTS, RecordingObjects
from runtime.recording.s3 import InvalidTarget, S3Target, describe_error, normalize_endpoint, spaces_endpoint
from runtime.recording.storage import LocalStorage
from runtime.recording.upload import FAILED, PENDING, RECORDING_UPLOADS, UPLOADED, RecordingUploader
from tests.api.support import high_limits, start_live_api, stop_live_api, with_overrides
from tests.calls.support import provision
from tests.calls.test_recording import _recorded_call, _runtime_key, frame

REGION = "nyc3"
# Small waits so failure paths finish in well under a second.
FAST = {"attempts": 3, "backoff_s": 0.02, "attempt_timeout_s": 5.0, "connect_timeout_s": 1.0}


@dataclass
class Moto:
    endpoint: str
    access_key_id: str
    secret: str

    def client(self, secret: str | None = None):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=secret or self.secret,
                            config=Config(s3={"addressing_style": "path"}))

    def new_bucket(self) -> str:
        name = f"rec-{secrets.token_hex(5)}"
        self.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        s3 = self.client()
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}

    def fields(self, bucket: str, **extra: str) -> dict[str, str]:
        return {"endpoint": self.endpoint, "region": REGION, "bucket": bucket,
                "access_key_id": self.access_key_id, **extra}


def _reset_auth(endpoint: str, count: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="voicectl")
        iam.put_user_policy(UserName="voicectl", PolicyName="recordings", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="voicectl")["AccessKey"]
        _reset_auth(endpoint, "0")  # from here on every request must be signed with a known key
        yield Moto(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        _reset_auth(endpoint, "inf")
        server.stop()


@pytest_asyncio.fixture
async def live(settings):
    api, runner = await start_live_api(with_overrides(settings, limits=high_limits(), recording={"s3": FAST}))
    try:
        yield api
    finally:
        await stop_live_api(api, runner)


async def _s3_tenant(api, moto: Moto, *, name: str = "acme", e164: str = "+15550100001",
                     bucket: str | None = None, secret: str | None = None, **fields: str):
    world = await provision(api.control, name=name, e164=e164, recording=True)
    bucket = bucket or moto.new_bucket()
    await api.control.credentials.set(world.tenant_id, "s3", CredentialSet(
        fields=moto.fields(bucket, **fields), secret=secret or moto.secret))
    return world, bucket


async def _rows(control, tenant_id: str, call_id: str) -> dict[str, dict]:
    rows, _ = await control.store.recordings.list(tenant_id=tenant_id, equals={"call_id": call_id})
    return {r["kind"]: r for r in rows}


def test_spaces_endpoint_forms_and_the_secret_never_prints():
    assert spaces_endpoint("nyc3") == "https://nyc3.digitaloceanspaces.com"
    for given in ("https://nyc3.digitaloceanspaces.com", "nyc3.digitaloceanspaces.com/",
                  "https://calls.nyc3.digitaloceanspaces.com"):  # the bucket's origin, as the panel shows it
        assert normalize_endpoint(given, "calls") == "https://nyc3.digitaloceanspaces.com"
    assert normalize_endpoint("http://127.0.0.1:9000", "calls") == "http://127.0.0.1:9000"
    for bad in ("ftp://x", "https://nyc3.digitaloceanspaces.com/calls", "https://"):
        with pytest.raises(InvalidTarget):
            normalize_endpoint(bad, "calls")
    target = S3Target.from_credential({"endpoint": "nyc3.digitaloceanspaces.com", "region": "nyc3",
                                       "bucket": "calls", "access_key_id": "DO00KEY"}, "s3cr3t-value")
    assert "s3cr3t-value" not in repr(target) and target.uri("t/c/mixed.wav") == "s3://calls/t/c/mixed.wav"
    with pytest.raises(InvalidTarget):
        S3Target.from_credential({"endpoint": "nyc3.digitaloceanspaces.com", "region": "nyc3"}, "x")
    assert describe_error(RuntimeError("echoed s3cr3t-value back"), "s3cr3t-value") == "RuntimeError: echoed *** back"


async def test_recordings_upload_after_the_call_and_download_for_the_tenant_only(live, moto):
    world, bucket = await _s3_tenant(live, moto)
    _, key = await _runtime_key(live, world.tenant_id)
    other_id, other_key = await live.tenant_with_key("other")
    local_world = await provision(live.control, name="local", e164="+15550100003", recording=True)

    call = await _recorded_call(live.control, live.app[TRACKER], world)
    local_call = await _recorded_call(live.control, live.app[TRACKER], local_world)
    await live.app[RECORDING_UPLOADS].wait_idle()

    rows = await _rows(live.control, world.tenant_id, call.id)
    stored = moto.objects(bucket)
    assert set(stored) == {f"{world.tenant_id}/{call.id}/{kind}.wav" for kind in ("mixed", "caller", "agent")}
    for kind, row in rows.items():
        object_key = f"{world.tenant_id}/{call.id}/{kind}.wav"
        assert (row["storage"], row["uri"]) == ("s3", f"s3://{bucket}/{object_key}")
        assert (row["upload_status"], row["upload_attempts"], row["upload_error"]) == (UPLOADED, 1, None)
        assert row["uploaded_at"] and row["size_bytes"] == len(stored[object_key])
    # Verified, so the local copies (and the call's folder) are gone.
    assert not (live.app[SETTINGS].recording_dir / world.tenant_id / call.id).exists()

    # The API streams the object: the same bytes, a valid WAV.
    path = f"/api/v1/calls/{call.id}/recordings/{rows['mixed']['id']}/audio"
    async with live.http.get(live.base_url + path, headers=live.auth(key)) as resp:
        assert resp.status == 200 and resp.content_type == "audio/wav"
        assert "X-RateLimit-Limit" in resp.headers and "X-Request-ID" in resp.headers
        body = await resp.read()
    assert body == stored[f"{world.tenant_id}/{call.id}/mixed.wav"]
    with wave.open(io.BytesIO(body)) as wav:
        assert wav.getframerate() == 8000 and wav.getnframes() == 1600

    # Another tenant, by runtime key or admin key naming it: as if the call did not exist.
    for headers in (live.auth(other_key), live.auth(live.admin_key, other_id)):
        for url in (f"/api/v1/calls/{call.id}/recordings", path):
            async with live.http.get(live.base_url + url, headers=headers) as resp:
                assert resp.status == 404 and set(await resp.json()) == {"error", "message", "details"}

    # A tenant without an s3 credential keeps local files (the default), untouched by the uploader.
    local_rows = await _rows(live.control, local_world.tenant_id, local_call.id)
    assert {(r["storage"], r["upload_status"]) for r in local_rows.values()} == {("local", None)}
    assert all((live.app[SETTINGS].recording_dir / r["uri"]).is_file() for r in local_rows.values())

    # The object gone from the bucket: 404; the store unreachable: 503, both in the JSON error shape.
    moto.client().delete_object(Bucket=bucket, Key=f"{world.tenant_id}/{call.id}/mixed.wav")
    status, err, _ = await live.call("GET", path, key)
    assert status == 404 and "gone" in err["message"]
    await live.control.credentials.set(world.tenant_id, "s3", CredentialSet(
        fields=moto.fields(bucket, endpoint=f"http://127.0.0.1:{_closed_port()}"), secret=None))
    status, err, _ = await live.call("GET", f"/api/v1/calls/{call.id}/recordings/{rows['agent']['id']}/audio", key)
    assert status == 503 and err["error"] == "storage_unavailable"


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:  # bound, never listening: connections are refused at once
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_secret_absent(secret: str, caplog, *values: object) -> None:
    for record in caplog.records:
        assert secret not in record.getMessage() and secret not in repr(vars(record)), record
    for value in values:
        assert secret not in repr(value)


async def test_a_wrong_secret_keeps_the_recording_local_and_records_why(live, moto, caplog):
    caplog.set_level(logging.INFO, logger="voicectl")
    wrong = "wrong-" + secrets.token_hex(16)
    world, bucket = await _s3_tenant(live, moto, secret=wrong)
    _, key = await _runtime_key(live, world.tenant_id)
    call = await _recorded_call(live.control, live.app[TRACKER], world)
    await live.app[RECORDING_UPLOADS].wait_idle()

    rows = await _rows(live.control, world.tenant_id, call.id)
    for row in rows.values():
        assert (row["storage"], row["upload_status"]) == ("local", FAILED)
        assert row["upload_attempts"] == 1  # refused credentials are not retried
        assert "SignatureDoesNotMatch" in row["upload_error"] and "403" in row["upload_error"]
        assert (live.app[SETTINGS].recording_dir / row["uri"]).is_file()
    assert moto.objects(bucket) == {}
    failures = [r for r in caplog.records if r.getMessage() == "recording upload failed; the file stays local"]
    assert {r.kind for r in failures} == {"mixed", "caller", "agent"}
    assert all(r.tenant_id == world.tenant_id and r.call_id == call.id and r.bucket == bucket
               and "SignatureDoesNotMatch" in r.error for r in failures)
    _assert_secret_absent(wrong, caplog, rows)
    # Still served, from disk.
    url = f"{live.base_url}/api/v1/calls/{call.id}/recordings/{rows['mixed']['id']}/audio"
    async with live.http.get(url, headers=live.auth(key)) as resp:
        assert resp.status == 200
        assert await resp.read() == (live.app[SETTINGS].recording_dir / rows["mixed"]["uri"]).read_bytes()


async def test_an_unreachable_endpoint_is_retried_then_recorded_as_failed(live, moto, caplog):
    caplog.set_level(logging.INFO, logger="voicectl")
    world, _ = await _s3_tenant(live, moto, endpoint=f"http://127.0.0.1:{_closed_port()}")
    call = await _recorded_call(live.control, live.app[TRACKER], world)
    await live.app[RECORDING_UPLOADS].wait_idle()
    rows = await _rows(live.control, world.tenant_id, call.id)
    # The first file uses every attempt; then the store counts as down: one try for each other file.
    assert {k: r["upload_attempts"] for k, r in rows.items()} == {"mixed": FAST["attempts"], "caller": 1, "agent": 1}
    for row in rows.values():
        assert (row["storage"], row["upload_status"]) == ("local", FAILED)
        assert "EndpointConnectionError" in row["upload_error"]
        assert (live.app[SETTINGS].recording_dir / row["uri"]).is_file()
    retries = [r for r in caplog.records if r.getMessage() == "recording upload attempt failed; retrying"]
    assert sorted(r.attempt for r in retries if r.kind == "mixed") == [1, 2]
    _assert_secret_absent(moto.secret, caplog)


async def test_a_hanging_store_never_holds_up_the_call_teardown(settings, moto):
    """A store that accepts connections and never answers: the call ends at once; each upload
    attempt is cut at attempt_timeout_s and the row says so."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    slow = {**FAST, "attempts": 2, "attempt_timeout_s": 0.25}
    api, runner = await start_live_api(with_overrides(settings, limits=high_limits(), recording={"s3": slow}))
    try:
        world, _ = await _s3_tenant(api, moto, endpoint=f"http://127.0.0.1:{port}")
        call = await api.app[TRACKER].open_call(to_number=world.e164, from_number="+15550000001", provider="twilio")
        await call.connect()
        for _ in range(10):
            call.tap_inbound(frame(1000), 8000)
            call.tap_outbound(frame(-1000), 8000)
        started = time.perf_counter()
        await call.end("hangup", hangup_by="caller")
        assert time.perf_counter() - started < 0.2  # the uploads (4 attempts of 0.25 s) run after the teardown
        await api.app[RECORDING_UPLOADS].wait_idle()
        assert time.perf_counter() - started >= 1.0
        rows = await _rows(api.control, world.tenant_id, call.id)
        assert {k: r["upload_attempts"] for k, r in rows.items()} == {"mixed": 2, "caller": 1, "agent": 1}
        for row in rows.values():
            assert (row["storage"], row["upload_status"], row["upload_error"]) == ("local", FAILED, "timed out")
    finally:
        await stop_live_api(api, runner)
        for writer in held:
            writer.close()
        server.close()


async def test_retention_deletes_the_objects_too(live, moto):
    world, bucket = await _s3_tenant(live, moto)
    old = await _recorded_call(live.control, live.app[TRACKER], world)
    recent = await _recorded_call(live.control, live.app[TRACKER], world)
    await live.app[RECORDING_UPLOADS].wait_idle()
    assert len(moto.objects(bucket)) == 6
    # An upload that failed after (say) the object got there: its key goes too, uncounted.
    stray = f"{world.tenant_id}/{old.id}/stray.wav"
    moto.client().put_object(Bucket=bucket, Key=stray, Body=b"RIFF")
    await live.control.store.recordings.insert({
        "id": "rec_stray", "tenant_id": world.tenant_id, "call_id": old.id, "kind": "stray", "storage": "local",
        "uri": f"{world.tenant_id}/{old.id}/stray.wav", "format": "wav", "created_at": "2000-01-01T00:00:00.000000Z",
        "upload_status": FAILED, "upload_attempts": 4, "upload_error": "timed out",
    })
    now = datetime.now(UTC)
    long_ago = (now - timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await live.control.store.voice_calls.update(old.id, {"created_at": long_ago}, tenant_id=world.tenant_id)

    counts = await live.app[RETENTION].run()  # the app's scheduled job, wired to the tenant's storage
    assert counts["calls"] == 1 and counts["recordings"] == 4 and counts["files"] == 3
    assert set(moto.objects(bucket)) == {f"{world.tenant_id}/{recent.id}/{k}.wav" for k in ("mixed", "caller", "agent")}
    assert await _rows(live.control, world.tenant_id, old.id) == {}
    # Without the tenant's credential the objects are left (and logged), the rows still go.
    await live.control.credentials.delete(world.tenant_id, "s3")
    await live.control.store.voice_calls.update(recent.id, {"created_at": long_ago}, tenant_id=world.tenant_id)
    counts = await purge_expired(live.control.store, live.app[SETTINGS].recording_dir, now,
                                 objects=live.app[RECORDING_OBJECTS])
    assert counts["calls"] == 1 and counts["files"] == 0 and len(moto.objects(bucket)) == 3


async def test_uploads_cut_short_by_a_restart_resume(control, settings, moto):
    """Rows left pending (the runtime stopped mid-upload) are uploaded by the next start."""
    world = await provision(control, recording=True)
    bucket = moto.new_bucket()
    await control.credentials.set(world.tenant_id, "s3", CredentialSet(fields=moto.fields(bucket), secret=moto.secret))
    tracker = CallTracker(control.store, EventBus(control.store), max_calls=10, recording_dir=settings.recording_dir)
    call = await _recorded_call(control, tracker, world)  # no uploader: like a stop right after the call
    for row in (await _rows(control, world.tenant_id, call.id)).values():
        await control.store.recordings.set(row["id"], {"upload_status": PENDING}, tenant_id=world.tenant_id)
    uploader = RecordingUploader(control.store, LocalStorage(settings.recording_dir),
                                 RecordingObjects.from_settings(control.credentials, settings.recording.s3))
    uploader.start()
    await uploader.wait_idle()
    rows = await _rows(control, world.tenant_id, call.id)
    assert {(r["storage"], r["upload_status"]) for r in rows.values()} == {("s3", UPLOADED)}
    assert len(moto.objects(bucket, f"{world.tenant_id}/{call.id}/")) == 3
    await uploader.close()


async def test_a_resume_racing_the_calls_own_upload_uploads_once_and_keeps_the_outcome(control, settings, moto):
    """The resume lists a pending row, the call's own upload finishes it, then the resume's stale
    copy of the row comes up: it must neither upload again nor mark the uploaded row failed."""
    world = await provision(control, recording=True)
    bucket = moto.new_bucket()
    await control.credentials.set(world.tenant_id, "s3", CredentialSet(fields=moto.fields(bucket), secret=moto.secret))
    tracker = CallTracker(control.store, EventBus(control.store), max_calls=10, recording_dir=settings.recording_dir)
    call = await _recorded_call(control, tracker, world)
    stale = list((await _rows(control, world.tenant_id, call.id)).values())
    uploader = RecordingUploader(control.store, LocalStorage(settings.recording_dir),
                                 RecordingObjects.from_settings(control.credentials, settings.recording.s3))
    own = uploader.schedule(world.tenant_id, call.id, stale)
    racing = uploader.schedule(world.tenant_id, call.id, stale, reread=True)  # claimed: nothing to do
    assert await racing == []
    assert {o.status for o in await own} == {UPLOADED}
    late = uploader.schedule(world.tenant_id, call.id, stale, reread=True)  # the rows are in s3 now
    assert await late == []
    rows = await _rows(control, world.tenant_id, call.id)
    assert {(r["storage"], r["upload_status"], r["upload_attempts"]) for r in rows.values()} == {("s3", UPLOADED, 1)}
    await uploader.close()


async def test_cli_copies_a_recording_from_s3(control, settings, moto, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from voicectl.cli import app

    world = await provision(control, recording=True)
    bucket = moto.new_bucket()
    await control.credentials.set(world.tenant_id, "s3", CredentialSet(fields=moto.fields(bucket), secret=moto.secret))
    uploader = RecordingUploader(control.store, LocalStorage(settings.recording_dir),
                                 RecordingObjects.from_settings(control.credentials, settings.recording.s3))
    tracker = CallTracker(control.store, EventBus(control.store), max_calls=10,
                          recording_dir=settings.recording_dir, uploader=uploader)
    call = await _recorded_call(control, tracker, world)
    await uploader.wait_idle()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": settings.database.url},
                                      "secrets": {"backend": "cryptfile"},
                                      "security": {"egress": {"allow": settings.security.egress.allow}}}))
    out = tmp_path / "agent.wav"
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, app, ["--config", str(config), "calls", "recording", call.id,
                                                          "--kind", "agent", "--out", str(out)])
    assert result.exit_code == 0, result.output
    stored = moto.objects(bucket)[f"{world.tenant_id}/{call.id}/agent.wav"]
    assert out.read_bytes() == stored and hashlib.md5(stored).hexdigest()
    assert out.stat().st_mode & 0o777 == 0o600  # a recording's copy is as private as the recording
    result = await asyncio.to_thread(runner.invoke, app, ["--config", str(config), "calls", "recording", call.id])
    assert result.exit_code == 0 and f"s3://{bucket}/{world.tenant_id}/{call.id}/mixed.wav" in result.stdout
    assert moto.secret not in result.output
