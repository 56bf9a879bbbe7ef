"""secrets.backend: database: values sealed with a key derived from the master key, shared by every
runtime on the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runtime.config import Settings, build_settings
from runtime.control.plane import ControlPlane
from runtime.control.schemas import CredentialSet, TenantCreate
from runtime.control.secret_values import DatabaseVault
from runtime.secrets import MASTER_KEY_ENV, SecretsError, derive_key

PLAINTEXT = "sk-live-7f3a9c1e-very-secret-value"


def _database_backend(settings: Settings, base_dir: Path | None = None) -> Settings:
    data = settings.model_dump(exclude={"base_dir"})
    data["secrets"] = {**data["secrets"], "backend": "database"}
    return build_settings(data, base_dir or settings.base_dir)


async def test_values_are_sealed_in_the_database_and_bound_to_their_reference(settings: Settings) -> None:
    plane = await ControlPlane.open(_database_backend(settings))
    try:
        assert plane.secrets.description == "database"
        await plane.secrets.set("tenant/t1/credential/twilio", PLAINTEXT)
        assert await plane.secrets.get("tenant/t1/credential/twilio") == PLAINTEXT
        assert await plane.secrets.get("tenant/t1/missing") is None
        sealed = await plane.store.db.fetchval("SELECT sealed FROM secret_values WHERE ref = ?",
                                               ("tenant/t1/credential/twilio",))
        assert sealed.startswith("v1.") and PLAINTEXT not in sealed and PLAINTEXT[:8] not in sealed
        assert not settings.keyring_path.exists()  # nothing on this box's disk
        # A sealed value moved onto another reference does not open there.
        await plane.store.db.execute("INSERT INTO secret_values (ref, sealed, updated_at) VALUES (?, ?, ?)",
                                     ("tenant/t2/credential/twilio", sealed, "2026-01-01T00:00:00.000000Z"))
        with pytest.raises(SecretsError, match="wrong master key"):
            await plane.secrets.get("tenant/t2/credential/twilio")
        await plane.secrets.set("tenant/t1/credential/twilio", "replaced")
        assert await plane.secrets.get("tenant/t1/credential/twilio") == "replaced"
        await plane.secrets.delete("tenant/t1/credential/twilio")
        await plane.secrets.delete("tenant/t1/credential/twilio")  # deleting a missing one is fine
        assert await plane.secrets.get("tenant/t1/credential/twilio") is None
        with pytest.raises(SecretsError):
            await plane.secrets.set("x", "")
    finally:
        await plane.close()


async def test_every_runtime_with_the_master_key_reads_them_and_no_other_key_does(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runtimes on one database with their own state folders (another box): one master key."""
    first = _database_backend(settings)
    elsewhere = tmp_path / "other-box"
    elsewhere.mkdir()
    second = _database_backend(settings, elsewhere)
    shutil.copy(first.master_key_path, second.master_key_path)
    a, b = await ControlPlane.open(first), await ControlPlane.open(second)
    try:
        tenant = await a.tenants.create(TenantCreate(name="shared"))
        fields = {"account_sid": "AC" + "1" * 32}
        await a.credentials.set(tenant.id, "twilio", CredentialSet(fields=fields, secret="token-1"))
        assert await b.credentials.secret(tenant.id, "twilio") == "token-1"
    finally:
        await a.close()
        await b.close()
    monkeypatch.setenv(MASTER_KEY_ENV, "a-different-master-key-of-decent-length")
    c = await ControlPlane.open(second)
    try:
        with pytest.raises(SecretsError, match="same master key"):
            await c.credentials.secret(tenant.id, "twilio")
    finally:
        await c.close()


def test_derived_keys_differ_by_purpose_and_master_key() -> None:
    master = "m" * 43
    assert derive_key(master, "secret values") == derive_key(master, "secret values")
    assert derive_key(master, "secret values") != derive_key(master, "browser tokens")
    assert derive_key(master, "secret values") != derive_key("n" * 43, "secret values")
    assert len(derive_key(master, "secret values")) == 32


def test_a_malformed_sealed_value_is_a_secrets_error() -> None:
    vault = DatabaseVault(None, "m" * 43)  # type: ignore[arg-type]
    with pytest.raises(SecretsError, match="unknown format"):
        vault.open("ref", "plaintext-left-by-hand")
    assert vault.open("ref", vault.seal("ref", PLAINTEXT)) == PLAINTEXT
