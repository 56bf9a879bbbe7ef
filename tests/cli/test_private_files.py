"""Files the product creates are its user's alone (0600), folders it creates 0700; a folder that was
already there keeps its mode. Under the usual umask 022, which would leave them world-readable."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voicectl.cli import app


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes_under(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (not root itself): relative path -> mode."""
    return {str(path.relative_to(root)): mode(path) for path in sorted(root.rglob("*"))}


def assert_private(root: Path, expected: set[str]) -> None:
    found = modes_under(root)
    assert expected <= set(found), sorted(found)
    wrong = {name: oct(m) for name, m in found.items()
             if m != (0o700 if (root / name).is_dir() else 0o600)}
    assert not wrong, wrong


def voicectl(*args: str, input: str | None = None) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"], input=input)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_init_and_the_keyring_make_private_files_in_private_folders(tmp_path: Path, umask_022, monkeypatch):
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "cryptfile")
    existing = tmp_path / "srv"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    config = existing / "state" / "config.yaml"  # init makes state/, the database's folder data/ too
    voicectl("init", "--config", str(config), "--database", "sqlite:///data/voicectl.db")
    voicectl("--config", str(config), "tenant", "create", "acme")
    voicectl("--config", str(config), "credential", "set", "--tenant", "acme", "deepgram", input="dg-secret\n")

    assert_private(existing, {"state", "state/config.yaml", "state/master.key", "state/secrets.cfg",
                              "state/secrets.cfg.lock", "state/data", "state/data/voicectl.db"})
    assert mode(existing) == 0o755  # there before: never chmod'ed


def test_a_folder_that_exists_keeps_its_mode_and_a_forced_config_keeps_its_own(tmp_path: Path, umask_022,
                                                                                monkeypatch):
    monkeypatch.setenv("VOICECTL_SECRETS__BACKEND", "cryptfile")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o750)
    config = shared / "config.yaml"
    config.write_text("# the operator's\n")
    os.chmod(config, 0o640)
    voicectl("init", "--config", str(config), "--force")
    assert mode(shared) == 0o750 and mode(config) == 0o640  # the operator's choice, kept
    assert mode(shared / "voicectl.db") == 0o600 and mode(shared / "master.key") == 0o600


async def test_the_sqlite_wal_and_shm_files_are_private(tmp_path: Path, umask_022):
    from runtime.store.sqlite import SQLiteDatabase

    db = SQLiteDatabase(f"sqlite:///{tmp_path}/db/voicectl.db")
    await db.connect()
    try:
        await db.execute("CREATE TABLE t (x INTEGER)")
        await db.execute("INSERT INTO t VALUES (1)")
        names = {"db", "db/voicectl.db", "db/voicectl.db-wal", "db/voicectl.db-shm"}
        assert_private(tmp_path, names)  # while open: the WAL and the shared-memory index exist
    finally:
        await db.close()


async def test_the_keyring_lock_file_is_private_in_a_folder_of_its_own(tmp_path: Path, umask_022):
    from runtime.config import build_settings
    from runtime.secrets import SecretStore, write_master_key

    settings = build_settings({"secrets": {"backend": "cryptfile", "keyring_file": "keys/secrets.cfg",
                                           "master_key_file": "private/master.key"}}, tmp_path)
    write_master_key(settings.master_key_path)
    store = SecretStore.from_settings(settings)
    await store.set("ref_1", "s3cret")
    assert await store.get("ref_1") == "s3cret"
    assert_private(tmp_path, {"keys", "keys/secrets.cfg", "keys/secrets.cfg.lock", "private", "private/master.key"})
