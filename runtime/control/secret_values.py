"""Secrets in the database, sealed with a key derived from the master key (``secrets.backend: database``).

For several runtimes on one PostgreSQL (cluster mode): every instance with the operator's master
key reads what any of them, or the CLI, stored. Each value is sealed with AES-256-GCM under a key
derived from the master key (HKDF-SHA256, its own label), a random 96-bit nonce per write, and the
reference as associated data, so a sealed value copied onto another reference does not open. The
database alone (a dump, a replica) reveals no secret.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runtime.config import Settings
from runtime.ids import now_iso
from runtime.secrets import SecretsError, SecretStore, derive_key, read_master_key
from runtime.store.base import Database

_FORMAT = "v1."
_NONCE_BYTES = 12


class DatabaseVault:
    def __init__(self, db: Database, master_key: str) -> None:
        self._db = db
        self._aead = AESGCM(derive_key(master_key, "secret values"))

    def seal(self, ref: str, value: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode(), ref.encode())
        return _FORMAT + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, ref: str, sealed: str) -> str:
        if not sealed.startswith(_FORMAT):
            raise SecretsError(f"the secret {ref} in the database is in an unknown format")
        raw = base64.urlsafe_b64decode(sealed[len(_FORMAT):])
        try:
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], ref.encode()).decode()
        except InvalidTag:
            raise SecretsError(f"cannot decrypt the secret {ref} in the database: wrong master key? "
                               "(every runtime of one database needs the same master key)") from None

    async def read(self, ref: str) -> str | None:
        sealed = await self._db.fetchval("SELECT sealed FROM secret_values WHERE ref = ?", (ref,))
        return None if sealed is None else self.open(ref, sealed)

    async def write(self, ref: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO secret_values (ref, sealed, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (ref) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            (ref, self.seal(ref, value), now_iso()),
        )

    async def remove(self, ref: str) -> None:
        await self._db.execute("DELETE FROM secret_values WHERE ref = ?", (ref,))


def open_secret_store(settings: Settings, db: Database) -> SecretStore:
    """The secret store ``secrets.backend`` names: the database's own (``database``) or a keyring."""
    if settings.secrets.backend == "database":
        return SecretStore(DatabaseVault(db, read_master_key(settings.master_key_path)), description="database")
    return SecretStore.from_settings(settings)
