"""`serve` in cluster mode (events.nats.url set): what cannot be shared is refused at once with exit 5.

NATS JetStream is the machine's server at 127.0.0.1:4222: a test needing it fails when it is missing."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from runtime.cluster.startup import nats_unreachable
from runtime.config import ConfigError, build_settings
from tests.cli.test_cli import Cli
from tests.conftest import POSTGRES_BASE_URL

NATS_URL = "nats://127.0.0.1:4222"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime.api.server as server

    monkeypatch.setattr(server, "run", lambda *a, **k: pytest.fail("the runtime must not start"))


def test_the_defaults_keep_one_process_with_in_process_events(tmp_path) -> None:
    settings = build_settings({}, tmp_path)
    assert not settings.cluster_mode and settings.events.nats.stream == "VOICECTL"
    assert settings.events.nats.subject_prefix == "voicectl" and settings.events.nats.max_age_s == 3600
    assert settings.server.lease_s == 10 and settings.limits.max_calls_cluster is None
    assert settings.limits.rate_limits.storage == "memory://"
    assert settings.instance_id(8080) == f"{socket.gethostname()}:8080"
    named = build_settings({"server": {"instance_id": "box-1"}}, tmp_path)
    assert named.instance_id(8080) == "box-1"


@pytest.mark.parametrize(("data", "expected"), [
    ({"events": {"nats": {"url": "http://127.0.0.1:4222"}}}, "events.nats.url"),
    ({"limits": {"rate_limits": {"storage": "redis://x"}}}, "async+redis://HOST:PORT/DB"),
    ({"server": {"instance_id": "a b"}}, "server.instance_id"),
    ({"server": {"lease_s": 0.5}}, "server.lease_s"),
])
def test_bad_cluster_settings_name_the_key(tmp_path, data: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("+", r"\+")):
        build_settings(data, tmp_path)


def test_sqlite_with_a_nats_url_exits_5(cli: Cli, monkeypatch: pytest.MonkeyPatch, no_start: None) -> None:
    monkeypatch.setenv("VOICECTL_EVENTS__NATS__URL", NATS_URL)
    result = cli("serve", "--port", str(_free_port()), code=5)
    assert "database.url is SQLite" in result.stderr and "PostgreSQL" in result.stderr


def test_cluster_mode_with_memory_rate_limits_exits_5(cli: Cli, monkeypatch: pytest.MonkeyPatch,
                                                      no_start: None) -> None:
    monkeypatch.setenv("VOICECTL_EVENTS__NATS__URL", NATS_URL)
    monkeypatch.setenv("VOICECTL_DATABASE__URL", POSTGRES_BASE_URL)
    result = cli("serve", "--port", str(_free_port()), code=5)
    assert "limits.rate_limits.storage is memory://" in result.stderr


def test_cluster_mode_with_secrets_on_this_box_exits_5(cli: Cli, monkeypatch: pytest.MonkeyPatch,
                                                       no_start: None) -> None:
    monkeypatch.setenv("VOICECTL_EVENTS__NATS__URL", NATS_URL)
    monkeypatch.setenv("VOICECTL_DATABASE__URL", POSTGRES_BASE_URL)
    monkeypatch.setenv("VOICECTL_LIMITS__RATE_LIMITS__STORAGE", "async+redis://127.0.0.1:6379/0")
    result = cli("serve", "--port", str(_free_port()), code=5)
    assert "secrets.backend is cryptfile" in result.stderr and "voicectl secrets copy --to database" in result.stderr


def test_cluster_mode_without_the_master_key_exits_5(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                     no_start: None) -> None:
    # Every instance derives the token keys from it: one without it would refuse the others' tokens.
    monkeypatch.setenv("VOICECTL_EVENTS__NATS__URL", NATS_URL)
    monkeypatch.setenv("VOICECTL_DATABASE__URL", POSTGRES_BASE_URL)
    monkeypatch.setenv("VOICECTL_LIMITS__RATE_LIMITS__STORAGE", "async+redis://127.0.0.1:6379/0")
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "database")
    monkeypatch.setenv("VOICECTL_SECRETS__MASTER_KEY_FILE", str(tmp_path / "missing.key"))
    result = cli("serve", "--port", str(_free_port()), code=5)
    assert "the master key cannot be read" in result.stderr and "missing.key" in result.stderr


def test_nats_unreachable_at_start_exits_5(cli: Cli, monkeypatch: pytest.MonkeyPatch, no_start: None) -> None:
    monkeypatch.setenv("VOICECTL_EVENTS__NATS__URL", f"nats://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("VOICECTL_DATABASE__URL", POSTGRES_BASE_URL)
    monkeypatch.setenv("VOICECTL_LIMITS__RATE_LIMITS__STORAGE", "async+redis://127.0.0.1:6379/0")
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "database")
    result = cli("serve", "--port", str(_free_port()), code=5)
    assert "is unreachable" in result.stderr and "events.nats.url" in result.stderr


def test_the_machines_nats_has_jetstream() -> None:
    # The cluster tests' peer: missing NATS (or NATS without -js) fails here instead of skipping.
    assert asyncio.run(nats_unreachable(NATS_URL)) is None


async def test_serve_with_two_workers_runs_them_as_a_cluster(tmp_path, require_postgres: None) -> None:
    """`voicectl serve --workers 2` with a complete cluster config: two runtimes on one port, each an
    instance of its own (in /readyz and `voicectl instances`), stopped together by SIGTERM."""
    import signal
    import subprocess
    import sys
    import time

    import aiohttp
    import yaml

    from runtime.secrets import write_master_key
    from tests.cluster.support import delete_stream, new_cluster_names

    names, port = new_cluster_names(), _free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"port": port, "instance_id": "box", "shutdown_grace_s": 1},
        "database": {"url": names.schema_url},
        "secrets": {"backend": "database", "master_key_file": str(tmp_path / "master.key")},
        "events": {"nats": {"url": NATS_URL, "stream": names.stream, "subject_prefix": names.subject_prefix}},
        "limits": {"rate_limits": {"storage": "async+redis://127.0.0.1:6379/0", "key_prefix": names.subject_prefix}},
        "providers": {"defaults": {"stt": "deepgram", "llm": "anthropic", "tts": "cartesia"}},  # no model to load
    }))
    write_master_key(tmp_path / "master.key")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECTL_")}
    parent = subprocess.Popen([sys.executable, "-m", "voicectl", "--config", str(config), "serve", "--workers", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ids: set[str] = set()
        deadline = time.monotonic() + 120
        while len(ids) < 2 and time.monotonic() < deadline and parent.poll() is None:
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        body = await resp.json()
                        if resp.status == 200:
                            ids.add(body["instance_id"])
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
        assert ids == {"box-w1", "box-w2"}, (ids, parent.poll())
        listed = await asyncio.to_thread(Cli(config).json, "instances")
        assert {i["id"] for i in listed["items"] if i["state"] == "live"} == {"box-w1", "box-w2"}, listed
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=60)
        assert parent.returncode == 0, err[-3000:]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        from runtime.store.postgres import PostgresDatabase

        await delete_stream(names)
        await PostgresDatabase(names.schema_url).drop_schema()


def test_secrets_copy_to_database_carries_every_secret_over(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A box about to join a cluster: its keyring's secrets sealed into the database, then the switch."""
    cli.json("tenant", "create", "acme")
    cli.json("credential", "set", "--tenant", "acme", "twilio", "--field", "account_sid=AC" + "0" * 32,
             input="twilio-token\n")
    hook = cli.json("webhook", "create", "--tenant", "acme", "--url", "https://example.com/hook")
    result = cli.json("secrets", "copy", "--to", "database")
    assert result["copied"] == 2 and result["missing"] == [] and result["to"] == "database", result

    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "database")

    async def secrets_now(plane):
        tenant_id = hook["tenant_id"]
        return (plane.secrets.description, await plane.credentials.secret(tenant_id, "twilio"),
                await plane.webhooks.signing_secret(tenant_id, hook["id"]))

    description, token, signing = cli.plane(secrets_now)
    assert description == "database" and token == "twilio-token" and signing.startswith("whsec_")
    again = cli("secrets", "copy", "--to", "database", code=5)
    assert "already database" in again.stderr
    bad = cli("secrets", "copy", "--to", "vault", code=5)
    assert "--to must be database, cryptfile or keyring" in bad.stderr
