"""SecretStore: the cryptfile backend keyed by the master key, and how 'auto' picks a backend."""

from __future__ import annotations

import asyncio
import os

import keyring
import pytest
from keyring.backends import fail
from keyrings.cryptfile.file import PlaintextKeyring

from runtime.config import build_settings
from runtime.secrets import MASTER_KEY_ENV, SecretsError, SecretStore, read_master_key, write_master_key

PLAINTEXT = "sk-live-7f3a9c1e-very-secret-value"


@pytest.fixture
def settings(tmp_path):
    """Overrides the shared fixture: no database needed here."""
    built = build_settings({"secrets": {"backend": "cryptfile"}}, tmp_path)
    write_master_key(built.master_key_path)
    return built


async def test_cryptfile_round_trip_and_file_is_encrypted(settings):
    store = SecretStore.from_settings(settings)
    assert store.description.startswith("cryptfile:")
    await store.set("tenant/t1/credential/twilio", PLAINTEXT)
    await store.set("tenant/t1/webhook/w1", "whsec_other")
    assert await store.get("tenant/t1/credential/twilio") == PLAINTEXT
    assert await store.get("tenant/t1/credential/twilio", cached=True) == PLAINTEXT
    assert await store.get("tenant/t1/missing") is None

    # A second instance (another process) reads what the first wrote.
    again = SecretStore.from_settings(settings)
    assert await again.get("tenant/t1/credential/twilio") == PLAINTEXT
    assert await again.get("tenant/t1/webhook/w1") == "whsec_other"

    raw = settings.keyring_path.read_bytes()
    assert PLAINTEXT.encode() not in raw and b"whsec_other" not in raw
    assert PLAINTEXT[:12].encode() not in raw
    assert settings.master_key_path.read_text().strip().encode() not in raw

    await store.set("tenant/t1/credential/twilio", "replaced")
    assert await again.get("tenant/t1/credential/twilio") == "replaced"
    await store.delete("tenant/t1/credential/twilio")
    assert await again.get("tenant/t1/credential/twilio") is None
    await store.delete("tenant/t1/credential/twilio")  # deleting a missing entry is fine
    with pytest.raises(SecretsError):
        await store.set("x", "")


def test_master_key_file_is_private(settings):
    assert settings.master_key_path.stat().st_mode & 0o777 == 0o600
    key = read_master_key(settings.master_key_path)
    assert len(key) >= 32
    assert write_master_key(settings.master_key_path) == key  # never overwritten


async def test_wrong_master_key_gives_secrets_error(settings, monkeypatch):
    await SecretStore.from_settings(settings).set("a", PLAINTEXT)
    monkeypatch.setenv(MASTER_KEY_ENV, "a-different-master-key-of-decent-length")
    with pytest.raises(SecretsError, match="master key"):
        await SecretStore.from_settings(settings).get("a")


def test_group_readable_master_key_file_is_refused(settings):
    os.chmod(settings.master_key_path, 0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        read_master_key(settings.master_key_path)
    with pytest.raises(SecretsError):
        SecretStore.from_settings(settings)


def test_missing_or_short_master_key(tmp_path):
    settings = build_settings({"secrets": {"backend": "cryptfile"}}, tmp_path)
    with pytest.raises(SecretsError, match="voicectl init"):
        SecretStore.from_settings(settings)
    fd = os.open(settings.master_key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short\n")
    os.close(fd)
    with pytest.raises(SecretsError, match="too short"):
        read_master_key(settings.master_key_path)


async def test_env_master_key_takes_precedence(settings, monkeypatch):
    env_key = "env-master-key-0123456789abcdef"
    monkeypatch.setenv(MASTER_KEY_ENV, env_key + "\n")
    assert read_master_key(settings.master_key_path) == env_key
    await SecretStore.from_settings(settings).set("a", PLAINTEXT)
    # Even a refused (0644) file does not matter while the variable is set.
    os.chmod(settings.master_key_path, 0o644)
    assert await SecretStore.from_settings(settings).get("a") == PLAINTEXT
    # Without the variable, the file's key cannot open what the env key wrote.
    os.chmod(settings.master_key_path, 0o600)
    monkeypatch.delenv(MASTER_KEY_ENV)
    with pytest.raises(SecretsError):
        await SecretStore.from_settings(settings).get("a")
    # The variable alone is enough: no file needed.
    settings.master_key_path.unlink()
    monkeypatch.setenv(MASTER_KEY_ENV, env_key)
    assert await SecretStore.from_settings(settings).get("a") == PLAINTEXT


def _auto(tmp_path, backend="auto"):
    settings = build_settings({"secrets": {"backend": backend}}, tmp_path)
    write_master_key(settings.master_key_path)
    return SecretStore.from_settings(settings)


async def test_auto_on_this_headless_box_is_cryptfile(tmp_path):
    for attempt in range(2):  # the second time after a cryptfile store exists in this process
        store = _auto(tmp_path / str(attempt))
        assert store.description.startswith("cryptfile:"), store.description
        await store.set("k", PLAINTEXT)
        assert await store.get("k") == PLAINTEXT


@pytest.mark.parametrize("fallback", [fail.Keyring, PlaintextKeyring], ids=["fail", "plaintext"])
def test_auto_never_uses_fail_or_plaintext_backends(tmp_path, monkeypatch, fallback):
    monkeypatch.setattr(keyring, "get_keyring", lambda: fallback())
    store = _auto(tmp_path)
    assert store.description.startswith("cryptfile:")
    with pytest.raises(SecretsError, match="no OS keyring"):
        _auto(tmp_path / "strict", backend="keyring")


class _FakeOSKeyring:
    """Duck-typed: a KeyringBackend subclass would register itself with keyring for the whole session."""

    def __init__(self):
        self.data = {}

    def get_password(self, service, username):
        return self.data.get((service, username))

    def set_password(self, service, username, password):
        self.data[(service, username)] = password

    def delete_password(self, service, username):
        self.data.pop((service, username))


async def test_auto_prefers_a_real_os_keyring(tmp_path, monkeypatch):
    fake = _FakeOSKeyring()
    monkeypatch.setattr(keyring, "get_keyring", lambda: fake)
    store = _auto(tmp_path)
    assert store.description == "keyring:_FakeOSKeyring"
    await store.set("k", PLAINTEXT)
    assert fake.data == {("voicectl", "k"): PLAINTEXT}
    assert not (tmp_path / "secrets.cfg").exists()


async def test_a_secret_replaced_by_another_process_is_seen_at_its_new_version_or_within_the_ttl(settings):
    """The runtime caches secrets; the CLI or another instance may replace one under the same reference."""
    from runtime.secrets import SECRET_CACHE_TTL_S

    now = [1000.0]
    runtime = SecretStore.from_settings(settings)
    runtime._clock = lambda: now[0]
    other = SecretStore.from_settings(settings)
    await other.set("tenant/t1/credential/twilio", "old-token")
    assert await runtime.get("tenant/t1/credential/twilio", cached=True, version="v1") == "old-token"
    await other.set("tenant/t1/credential/twilio", "new-token")
    # Same version, within the TTL: the cached value (no keyring read on the hot path).
    assert await runtime.get("tenant/t1/credential/twilio", cached=True, version="v1") == "old-token"
    # The row that names it changed: read again at once.
    assert await runtime.get("tenant/t1/credential/twilio", cached=True, version="v2") == "new-token"
    # Without a version (appliance secrets): within the TTL.
    assert await runtime.get("appliance/livekit", cached=True) is None
    await other.set("appliance/livekit", "lk-secret")
    assert await runtime.get("appliance/livekit", cached=True) is None
    now[0] += SECRET_CACHE_TTL_S + 0.1
    assert await runtime.get("appliance/livekit", cached=True) == "lk-secret"


async def test_a_credential_rotated_by_another_control_plane_applies_at_once(control, settings):
    """Two control planes on one database and keyring (the CLI and the runtime, or two instances)."""
    from runtime.control.credentials import SECRET_REF_TTL_S
    from runtime.control.plane import ControlPlane
    from runtime.control.schemas import CredentialSet, TenantCreate

    tenant = await control.tenants.create(TenantCreate(name="rotating"))
    fields = {"account_sid": "AC" + "1" * 32}
    await control.credentials.set(tenant.id, "twilio", CredentialSet(fields=fields, secret="token-1"))
    other = await ControlPlane.open(settings)
    try:
        assert await other.credentials.secret(tenant.id, "twilio") == "token-1"
        await control.credentials.set(tenant.id, "twilio", CredentialSet(fields=fields, secret="token-2"))
        await asyncio.sleep(SECRET_REF_TTL_S + 0.05)  # the other plane's row cache (its own writes drop it at once)
        assert await other.credentials.secret(tenant.id, "twilio") == "token-2"
    finally:
        await other.close()
