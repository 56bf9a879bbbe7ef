"""Recording: the recorder's alignment and mixing, the tracker hook, rows, and the API (both backends)."""

from __future__ import annotations

import array
import io
import wave

import pytest

from runtime.api.appkeys import SETTINGS, TRACKER
from runtime.api.routes.recordings import ROUTES
from runtime.recording.recorder import CallRecorder
from runtime.recording.storage import LocalStorage, UnsafePath
from tests.calls.support import engine, provision

FRAME = 160  # 20 ms at 8 kHz


def frame(value: int, samples: int = FRAME) -> bytes:
    return array.array("h", [value] * samples).tobytes()


def samples_of(path) -> tuple[int, array.array]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        data = array.array("h", wav.readframes(wav.getnframes()))
        return wav.getframerate(), data


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_legs_line_up_on_the_wall_clock_and_mix_with_clipping(tmp_path):
    clock = Clock()
    rec = CallRecorder(LocalStorage(tmp_path), "ten_a", "call_1", clock=clock)
    for i in range(50):  # one second of caller audio, 20 ms frames in real time
        clock.now = 100.0 + i * 0.02
        rec.inbound(frame(1000), 8000)
        if 25 <= i < 38:  # the agent speaks from 0.50 s to 0.76 s
            rec.outbound(frame(2000 if i < 35 else 32000), 8000)
    files = {f.kind: f for f in rec.finish()}
    assert set(files) == {"mixed", "caller", "agent"}
    for kind in files:
        rate, data = samples_of(files[kind].path)
        assert rate == 8000 and len(data) == 8000, kind  # all three 1.0 s long
        assert files[kind].duration_ms == 1000
    _, agent = samples_of(files["agent"].path)
    assert agent[0] == 0 and agent[4000] == 2000 and agent[5600] == 32000 and agent[7999] == 0
    _, mixed = samples_of(files["mixed"].path)
    assert mixed[2000] == 1000 and mixed[4100] == 3000 and mixed[7000] == 1000
    assert mixed[5700] == 32767  # 1000 + 32000 clips
    assert rec.finish() == []  # finishing twice is harmless


def test_a_gap_in_the_caller_leg_is_padded_and_memory_stays_small(tmp_path):
    clock = Clock()
    rec = CallRecorder(LocalStorage(tmp_path), "ten_a", "call_1", clock=clock)
    for i in range(500):  # 10 s: agent talks throughout, the caller only in the first and last second
        clock.now = 100.0 + i * 0.02
        rec.outbound(frame(500), 8000)
        if i < 50 or i >= 450:
            rec.inbound(frame(700), 8000)
        assert len(rec.caller.pending) + len(rec.agent.pending) <= 2 * 2 * FRAME * 8  # ~0.16 s, never the call
    files = {f.kind: f for f in rec.finish()}
    _, caller = samples_of(files["caller"].path)
    assert len(caller) == 80000 and caller[8000 * 5] == 0 and caller[8000 * 9 + 800] == 700
    _, mixed = samples_of(files["mixed"].path)
    assert len(mixed) == 80000 and mixed[100] == 1200 and mixed[8000 * 5] == 500 and mixed[79000] == 1200


def test_legs_at_different_rates(tmp_path):
    clock = Clock()
    rec = CallRecorder(LocalStorage(tmp_path), "ten_a", "call_1", clock=clock)
    for i in range(50):
        clock.now = 100.0 + i * 0.02
        rec.inbound(frame(1000), 8000)
        rec.outbound(frame(1000, 320), 16000)  # 20 ms at 16 kHz
    files = {f.kind: f for f in rec.finish()}
    assert samples_of(files["agent"].path)[0] == 16000 and files["agent"].frames == 16000
    rate, mixed = samples_of(files["mixed"].path)
    assert rate == 8000 and abs(len(mixed) - 8000) <= 2 and abs(mixed[4000] - 2000) <= 2


def test_no_audio_no_files(tmp_path):
    rec = CallRecorder(LocalStorage(tmp_path), "ten_a", "call_1")
    assert rec.finish() == [] and not any(tmp_path.iterdir())


def test_storage_refuses_paths_outside_the_recording_dir(tmp_path):
    storage = LocalStorage(tmp_path)
    for uri in ("../x.wav", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(UnsafePath):
            storage.resolve(uri)
    with pytest.raises(UnsafePath):
        storage.call_dir("..", "call")


async def _recorded_call(control, tracker, world, seconds: float = 0.2):
    call = await tracker.open_call(to_number=world.e164, from_number="+15550000001", provider="twilio")
    await call.connect()
    for _ in range(int(seconds / 0.02)):
        call.tap_inbound(frame(1000), 8000)
        call.tap_outbound(frame(-1000), 8000)
    await call.end("hangup", hangup_by="caller")
    return call


async def test_tracker_records_calls_of_tenants_with_recording_on(control, tmp_path):
    world = await provision(control, recording=True)
    quiet = await provision(control, name="quiet", e164="+15550100002")
    tracker = engine(control, recording_dir=tmp_path / "rec")
    call = await _recorded_call(control, tracker, world)
    rows, total = await control.store.recordings.list(tenant_id=world.tenant_id, equals={"call_id": call.id})
    assert total == 3 and {r["kind"] for r in rows} == {"mixed", "caller", "agent"}
    for row in rows:
        path = tmp_path / "rec" / row["uri"]
        assert row["uri"] == f"{world.tenant_id}/{call.id}/{row['kind']}.wav"
        assert (row["storage"], row["format"]) == ("local", "wav")
        assert row["size_bytes"] == path.stat().st_size and row["size_bytes"] > 44
        assert row["duration_ms"] == 200
    unrecorded = await _recorded_call(control, tracker, quiet)
    assert unrecorded.audio_sinks == []
    _, total = await control.store.recordings.list(tenant_id=quiet.tenant_id)
    assert total == 0


async def test_recordings_api_is_tenant_scoped(api):
    world = await provision(api.control, recording=True)
    _, key = await _runtime_key(api, world.tenant_id)
    _, other_key = await api.tenant_with_key("other")
    call = await _recorded_call(api.control, api.app[TRACKER], world)
    status, page, _ = await api.call("GET", f"/api/v1/calls/{call.id}/recordings", key)
    assert status == 200 and page["total"] == 3
    mixed = next(r for r in page["items"] if r["kind"] == "mixed")
    path = f"/api/v1/calls/{call.id}/recordings/{mixed['id']}/audio"
    async with api.http.get(api.base_url + path, headers=api.auth(key)) as resp:
        assert resp.status == 200 and resp.content_type == "audio/wav"
        body = await resp.read()
    on_disk = (api.app[SETTINGS].recording_dir / mixed["uri"]).read_bytes()
    assert body == on_disk
    with wave.open(io.BytesIO(body)) as wav:
        assert wav.getframerate() == 8000 and wav.getnframes() == 1600
    # Another tenant's key: as if the call did not exist.
    for url in (f"/api/v1/calls/{call.id}/recordings", path):
        status, err, _ = await api.call("GET", url, other_key)
        assert status == 404 and set(err) == {"error", "message", "details"}
    status, err, _ = await api.call("GET", f"/api/v1/calls/{call.id}/recordings/rec_missing/audio", key)
    assert status == 404 and err["error"] == "not_found"
    # A row whose file is gone answers 404 too, in the JSON error shape.
    (api.app[SETTINGS].recording_dir / mixed["uri"]).unlink()
    status, err, _ = await api.call("GET", path, key)
    assert status == 404 and "gone" in err["message"]


async def _runtime_key(api, tenant_id: str) -> tuple[int, str]:
    status, key, _ = await api.call("POST", "/api/v1/auth/api-keys", api.admin_key,
                                    json={"tenant_id": tenant_id, "scope": "runtime"})
    return status, key["key"]


def test_routes_are_declared_for_the_docs_and_the_fuzz():
    listing, audio = ROUTES
    assert (listing.auth, listing.paged, audio.auth) == ("tenant", True, "tenant")
    assert audio.effective_rate_class == "recording" and audio.media_type == "audio/wav" and 404 in audio.errors


async def test_cli_locates_and_copies_a_recording(control, settings, tmp_path, monkeypatch):
    import asyncio
    import json

    import yaml
    from typer.testing import CliRunner

    from voicectl.cli import app

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": settings.database.url},
                                      "secrets": {"backend": "cryptfile"}}))
    world = await provision(control, recording=True)
    call = await _recorded_call(control, engine(control, recording_dir=settings.recording_dir), world)
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, app, ["--config", str(config), "calls", "recording", call.id, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "mixed" and data["path"] == str(settings.recording_dir / data["uri"])
    out = tmp_path / "copy.wav"
    result = await asyncio.to_thread(runner.invoke, app, ["--config", str(config), "calls", "recording", call.id, "--kind", "agent",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (settings.recording_dir / f"{world.tenant_id}/{call.id}/agent.wav").read_bytes()
    result = await asyncio.to_thread(runner.invoke, app, ["--config", str(config), "calls", "recording", "call_nope"])
    assert result.exit_code != 0 and "Traceback" not in result.output
