"""`voicectl serve` as a real subprocess: SIGTERM exits 0 within the grace and marks nothing wrongly;
a malformed request gets the JSON error shape there too."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from runtime.config import build_settings
from runtime.control.plane import ControlPlane
from runtime.secrets import write_master_key
from runtime.store.tables import ALL_TENANTS
from tests.calls.support import insert_call, provision

GRACE_S = 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def _seed(settings) -> tuple[str, dict]:
    plane = await ControlPlane.open(settings)
    try:
        world = await provision(plane)
        call_id = await insert_call(plane, world.tenant_id, status="ended", end_reason="hangup", hangup_by="caller")
        return call_id, await _calls(plane)
    finally:
        await plane.close()


async def _calls(plane) -> dict:
    rows, _ = await plane.store.voice_calls.list(tenant_id=ALL_TENANTS, limit=200)
    return {r["id"]: r for r in rows}


async def _read(settings) -> dict:
    plane = await ControlPlane.open(settings)
    try:
        return await _calls(plane)
    finally:
        await plane.close()


def test_sigterm_exits_cleanly_within_the_grace(tmp_path: Path):
    port = _free_port()
    data = {"server": {"port": port, "shutdown_grace_s": GRACE_S},
            "database": {"url": f"sqlite:///{tmp_path}/voicectl.db"}, "secrets": {"backend": "cryptfile"},
            "logging": {"format": "text"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    settings = build_settings(data, tmp_path)
    write_master_key(settings.master_key_path)
    call_id, before = asyncio.run(_seed(settings))

    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECTL_")}
    env["VOICECTL_CONFIG"] = str(tmp_path / "config.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "voicectl", "serve"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "voicectl serve did not become ready"
            time.sleep(0.05)
        malformed = _raw_exchange(port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=GRACE_S + 10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read()
    assert code == 0, output
    assert elapsed < GRACE_S, (elapsed, output)
    assert "Traceback" not in output
    # An over-long URL: the JSON error shape and one warning line (the serve path's own runner).
    assert malformed.startswith(b"HTTP/1.0 400") and b"Content-Type: application/json" in malformed, malformed
    assert output.count("malformed HTTP request refused") == 1 and " ERROR " not in output, output
    after = asyncio.run(_read(settings))
    assert after == before and after[call_id]["status"] == "ended"  # nothing marked failed or shut down
