"""Recordings are personal data: the WAVs are 0600 and the folders the recorder makes 0700, under the
usual umask 022; a recording dir that was already there keeps its mode, and so does a copy's folder."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from runtime.recording.recorder import CallRecorder
from runtime.recording.storage import LocalStorage
from tests.calls.support import engine, provision
from tests.calls.test_recording import _recorded_call, frame
from voicectl.cli import app


@pytest.fixture(autouse=True)
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _record(storage: LocalStorage) -> list[Path]:
    rec = CallRecorder(storage, "ten_a", "call_1")
    for _ in range(10):
        rec.inbound(frame(1000), 8000)
        rec.outbound(frame(-1000), 8000)
    return [f.path for f in rec.finish()]


def test_the_recorder_writes_private_files_in_private_folders(tmp_path: Path):
    paths = _record(LocalStorage(tmp_path / "var" / "recordings"))  # neither folder exists yet
    assert {p.name for p in paths} == {"mixed.wav", "caller.wav", "agent.wav"}
    assert {mode(p) for p in paths} == {0o600}
    for folder in ("var", "var/recordings", "var/recordings/ten_a", "var/recordings/ten_a/call_1"):
        assert mode(tmp_path / folder) == 0o700, folder


def test_a_recording_dir_that_exists_keeps_its_mode(tmp_path: Path):
    root = tmp_path / "recordings"
    root.mkdir()
    os.chmod(root, 0o755)  # e.g. made by the operator or systemd's StateDirectory
    paths = _record(LocalStorage(root))
    assert mode(root) == 0o755
    assert mode(root / "ten_a") == mode(root / "ten_a" / "call_1") == 0o700
    assert {mode(p) for p in paths} == {0o600}


async def test_a_recorded_call_and_its_cli_copy_are_private(control, settings, tmp_path: Path):
    world = await provision(control, recording=True)
    call = await _recorded_call(control, engine(control, recording_dir=settings.recording_dir), world)
    call_dir = settings.recording_dir / world.tenant_id / call.id
    assert {mode(p) for p in call_dir.iterdir()} == {0o600} and len(list(call_dir.iterdir())) == 3
    assert mode(call_dir) == mode(call_dir.parent) == mode(settings.recording_dir) == 0o700

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": settings.database.url},
                                      "secrets": {"backend": "cryptfile"}}))
    out = tmp_path / "copy.wav"
    result = await asyncio.to_thread(CliRunner().invoke, app, [
        "--config", str(config), "calls", "recording", call.id, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written_to"] == str(out)
    assert out.read_bytes() == (call_dir / "mixed.wav").read_bytes() and mode(out) == 0o600
